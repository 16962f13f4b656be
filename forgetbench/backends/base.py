"""What every back-end shares: the generation settings, the per-sample record, how a policy
folder is read (a full model or a PEFT adapter over a base), how prompts are rendered and fitted
into the model's context, and how generated tokens become a response.

Keeping these in one place is what makes ``hf`` and ``vllm`` interchangeable: both render the same
chat-templated token ids, truncate over-long prompts the same way, cut at the same end-of-sequence
ids and decode with the same tokenizer, so greedy fp32 outputs agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Optional

from pydantic import model_validator

from forgetbench.config import Field, StrictModel
from forgetbench.errors import ForgetbenchError
from forgetbench.models import user_turn_text


class GenerationConfig(StrictModel):
    """One config for every back-end, so ``--set backend=hf|vllm`` never invalidates the preset's
    ``generation:`` section. Fields marked "vLLM only" are ignored by ``hf``."""

    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per response.")
    batch_size: int = Field(
        16,
        ge=1,
        description="hf only: prompts per generate() call (vLLM "
        "schedules its own batches; see max_num_seqs).",
    )
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding (evaluation default).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling when temperature > 0.")
    seed: int = Field(0, description="Sampling seed when temperature > 0.")
    n: int = Field(
        1,
        ge=1,
        description="Responses sampled per prompt (needs temperature > 0 "
        "when > 1); stored as one row each, numbered by `sample`.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Weights and activations dtype. float32 makes hf and vLLM agree "
        "token for token; bfloat16 halves memory but on a CPU without AVX512-BF16 it was no "
        "faster in vLLM (measured here); auto = bfloat16 where the device has it in hardware "
        "(a GPU from Ampere on, a CPU with AVX512-BF16 or AMX: the tiny suite decoded in 0.7x "
        "the float32 time with hf), else float32; float16 needs a GPU.",
    )
    max_model_len: Optional[int] = Field(
        None,
        ge=2,
        description="Context length (prompt + response tokens); None = the model's "
        "own (max_position_embeddings). Prompts that do not fit with max_new_tokens are handled "
        "by overlong_prompts.",
    )
    overlong_prompts: Literal["truncate", "error"] = Field(
        "truncate",
        description="A prompt too long for max_model_len - max_new_tokens: "
        "`truncate` cuts the middle of the user message (recorded per row: prompt_truncated, "
        "prompt_tokens_original, truncated_prompt); `error` fails the stage naming the prompts.",
    )
    kv_cache_gib: int = Field(
        1,
        ge=1,
        description="vLLM CPU build only: KV-cache size in GiB "
        "(VLLM_CPU_KVCACHE_SPACE, which wins when set in the environment).",
    )
    max_num_seqs: Optional[int] = Field(
        None, ge=1, description="vLLM only: most sequences decoded at once; None = vLLM's default."
    )
    enforce_eager: Optional[bool] = Field(
        None,
        description="vLLM only: skip torch.compile. None = eager on the CPU build (measured "
        "on 2 cores: compiling adds ~2 min to every engine start, since vllm-cpu 0.32 fails to "
        "reload its compile cache, and decodes no faster), compiled on GPU.",
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM GPU build only: fraction of GPU memory vLLM may take."
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM only: GPUs each engine shards "
        "the model over (1 on the CPU build; more than the visible "
        "GPUs is refused before any stage runs). Data-parallel "
        "replicas are not offered: vLLM's LLM() refuses "
        "data_parallel_size > 1 in one process.",
    )

    @model_validator(mode="after")
    def _sampling_for_many(self):
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                "n > 1 needs temperature > 0 (greedy decoding gives n identical copies)"
            )
        return self


def resolve_dtype(setting: str, name: str = "generation.dtype", backend: str = "hf") -> str:
    """The concrete dtype for ``setting`` on this machine's device (``auto`` resolved) and
    ``backend``; one the device cannot run is a UsageError naming ``name`` and the fix. bfloat16
    on a CPU without it in hardware is refused for hf (torch's matmuls emulate it, ~90x slower:
    ``devices.check_cpu_bf16``), not for vLLM, whose CPU kernels ran it as fast as float32."""
    import torch

    from forgetbench.devices import check_cpu_bf16, native_bf16
    from forgetbench.errors import UsageError

    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "bfloat16" if native_bf16() else "float32"
    if setting == "bfloat16" and backend != "vllm":
        check_cpu_bf16(name, setting, "float32 or auto")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    if setting == "float16" and not cuda:
        raise UsageError(f"{name}=float16 needs a CUDA GPU; set {name}=float32, bfloat16 or auto")
    if setting == "bfloat16" and cuda and not bf16:
        raise UsageError(
            f"{name}=bfloat16: this GPU ({torch.cuda.get_device_name()}) has no "
            f"bfloat16; set {name}=float16, float32 or auto"
        )
    return setting


class Generation(NamedTuple):
    """One sampled response. Back-ends fill the first three fields at least; the rest default so
    a third-party back-end written against the short form keeps working."""

    response: str
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    num_tokens: int
    sample: int = 0  # which of the n samples of its prompt
    prompt_tokens: int = 0  # tokens of the rendered prompt actually sent
    prompt_truncated: bool = False
    prompt_tokens_original: int = 0  # before truncation
    truncated_prompt: Optional[str] = None  # the user message actually sent, when truncated
    backend: str = ""
    backend_package: str = ""  # the distribution that generated it: transformers, vllm, vllm-cpu
    backend_version: str = ""
    token_ids: tuple = ()  # the response's token ids, end of sequence cut (not stored in rows)
    # The generating policy's float32 log-probability of each of ``logprob_ids`` (the generated
    # ids through the end-of-sequence token when it stopped); empty where the back-end does not
    # record them (vllm, hf in 16 bits). Stored in rows: the KL stage reads them.
    logprob_ids: tuple = ()
    logprobs: tuple = ()


# ------------------------------------------------------------------------------------------------
# Policies: a full model folder, or a PEFT adapter folder over a base model.


@dataclass(frozen=True)
class Policy:
    model: str  # full weights: the policy itself, or the adapter's base
    tokenizer: str  # folder (or hub id) whose tokenizer and chat template render the prompts
    adapter: Optional[str] = None  # PEFT LoRA adapter folder, applied on top of `model`
    lora_rank: int = 0


def resolve_policy(path: str) -> Policy:
    """Read a policy folder: full weights (``config.json``) or a PEFT adapter
    (``adapter_config.json`` naming its base in ``base_model_name_or_path``)."""
    from forgetbench.models import resolve_model

    folder = Path(path)
    adapter_config = folder / "adapter_config.json"
    if not adapter_config.is_file():
        return Policy(model=path, tokenizer=path)
    settings = json.loads(adapter_config.read_text())
    if settings.get("peft_type", "LORA") != "LORA":
        raise ForgetbenchError(
            f"{path} holds a {settings.get('peft_type')} adapter; the "
            "generation back-ends read LoRA adapters only (merge it first)"
        )
    base = settings.get("base_model_name_or_path")
    if not base:
        raise ForgetbenchError(
            f"{adapter_config} names no base_model_name_or_path; set it to the "
            "base model's folder or hub id"
        )
    if not Path(base).is_absolute() and (folder / base).is_dir():
        base = str((folder / base).resolve())
    base = resolve_model(base)
    ranks = [int(settings.get("r") or 0), *map(int, (settings.get("rank_pattern") or {}).values())]
    has_tokenizer = (folder / "tokenizer_config.json").is_file()
    return Policy(
        model=base,
        tokenizer=str(folder) if has_tokenizer else base,
        adapter=str(folder),
        lora_rank=max(ranks),
    )


def context_length(model: str) -> Optional[int]:
    """The model's own context length in tokens, or None when its config names none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_ids(tokenizer, model: str) -> set[int]:
    """End-of-sequence ids: the tokenizer's and the model's generation_config's."""
    from transformers import GenerationConfig as HFGenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        configured = HFGenerationConfig.from_pretrained(model).eos_token_id
    except OSError:
        configured = None
    if configured is not None:
        ids |= set(configured if isinstance(configured, (list, tuple)) else [configured])
    return ids


# ------------------------------------------------------------------------------------------------
# Prompts: rendered with the chat template, fitted into the context.


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    truncated: bool = False
    original_tokens: int = 0
    sent_text: Optional[str] = None  # the user message sent, when it was truncated


TRUNCATION_MARK = " [...] "


def render(tokenizer, user_message: str) -> list[int]:
    return tokenizer(user_turn_text(tokenizer, user_message), add_special_tokens=False)["input_ids"]


def prompt_budget(config: GenerationConfig, model: str) -> tuple[Optional[int], Optional[int]]:
    """(context length, most prompt tokens that leave room for max_new_tokens)."""
    context = config.max_model_len or context_length(model)
    if context is None:
        return None, None
    budget = context - config.max_new_tokens
    if budget < 1:
        raise ForgetbenchError(
            f"max_new_tokens={config.max_new_tokens} leaves no room for a "
            f"prompt in a context of {context} tokens; lower max_new_tokens or "
            "raise generation.max_model_len"
        )
    return context, budget


def prepare_prompts(
    tokenizer, prompts: list[str], budget: Optional[int], policy: str
) -> list[Prompt]:
    """Render each user message; one whose tokens exceed ``budget`` is truncated (its middle
    replaced by TRUNCATION_MARK, keeping the start and the end, where a request usually sits) or,
    with ``policy == "error"``, reported with every other over-long one in a single error."""
    prepared, too_long = [], []
    for number, message in enumerate(prompts):
        tokens = render(tokenizer, message)
        if budget is None or len(tokens) <= budget:
            prepared.append(Prompt(tokens, original_tokens=len(tokens)))
        elif policy == "error":
            too_long.append(f"#{number + 1} ({len(tokens)} tokens: {message[:40]!r}...)")
        else:
            prepared.append(_truncate(tokenizer, message, len(tokens), budget))
    if too_long:
        raise ForgetbenchError(
            f"{len(too_long)} prompt(s) do not fit the context with max_new_tokens: "
            f"{', '.join(too_long[:5])}{' ...' if len(too_long) > 5 else ''}; at most {budget} "
            "prompt tokens fit. Set generation.overlong_prompts=truncate, lower max_new_tokens or "
            "raise generation.max_model_len"
        )
    return prepared


def _truncate(tokenizer, message: str, original: int, budget: int) -> Prompt:
    user = tokenizer(message, add_special_tokens=False)["input_ids"]
    overhead = original - len(user)
    keep = (
        budget - overhead - len(tokenizer(TRUNCATION_MARK, add_special_tokens=False)["input_ids"])
    )
    while keep > 0:
        head, tail = user[: keep - keep // 2], user[len(user) - keep // 2 :] if keep // 2 else []
        text = tokenizer.decode(head) + TRUNCATION_MARK + tokenizer.decode(tail)
        tokens = render(tokenizer, text)
        if len(tokens) <= budget:
            return Prompt(tokens, truncated=True, original_tokens=original, sent_text=text)
        keep -= max(1, len(tokens) - budget)  # re-tokenising at the seams can add a token or two
    raise ForgetbenchError(
        f"the chat template alone ({overhead} tokens) does not fit in {budget} "
        "prompt tokens; lower max_new_tokens or raise generation.max_model_len"
    )


def finish(
    tokenizer, token_ids, stop_ids: set[int], unstopped: str = "length"
) -> tuple[str, str, int]:
    """(response, finish_reason, num_tokens) from generated ids: cut at the first end-of-sequence
    id ("stop"; otherwise ``unstopped``, the engine's own reason), decode without special tokens,
    strip. An empty response is kept as it is, never dropped."""
    ids = list(token_ids)
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    if cut is not None:
        ids = ids[:cut]
    reason = "stop" if cut is not None else unstopped
    return tokenizer.decode(ids, skip_special_tokens=True).strip(), reason, len(ids)
