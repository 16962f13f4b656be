"""Hugging Face ``generate``: batched, left-padded, chat-templated; greedy unless told.

The always-available fallback. Reads full model folders and PEFT LoRA adapter folders (the
adapter is loaded over its base with peft and merged for speed).
"""

from __future__ import annotations

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
from forgetbench.provenance import package_version
from forgetbench.registry import backend


def load_policy(path: str, dtype: str = "float32"):
    """(model, tokenizer, policy) for a full model folder or a LoRA adapter folder."""
    from forgetbench.models import load_tokenizer

    policy = resolve_policy(path)
    return load_weights(policy, dtype), load_tokenizer(policy.tokenizer), policy


def load_weights(policy, dtype: str = "float32"):
    """The policy's model for inference (generation, KL): grouped key/value heads go to torch's
    CPU attention kernel uncopied (``forgetbench.attention``: the same numbers, less copying)."""
    from forgetbench.attention import grouped_attention
    from forgetbench.models import load_model

    model = load_model(policy.model, dtype=dtype)
    if policy.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, policy.adapter).merge_and_unload()
    return grouped_attention(model.eval())


def generate_hf(
    config: GenerationConfig, model_path: str, prompts: list[str], progress=None
) -> list[Generation]:
    import torch

    from forgetbench.models import load_tokenizer

    policy = resolve_policy(model_path)
    tokenizer = load_tokenizer(policy.tokenizer)
    _, budget = prompt_budget(config, policy.model)
    prepared = prepare_prompts(tokenizer, prompts, budget, config.overlong_prompts)
    model = load_weights(policy, resolve_dtype(config.dtype))
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return generate_loaded(
        config, model, tokenizer, eos_ids(tokenizer, policy.model), prepared, progress
    )


def generate_loaded(
    config: GenerationConfig,
    model,
    tokenizer,
    stop_ids: set[int],
    prepared: list[Prompt],
    progress=None,
) -> list[Generation]:
    """Generate for rendered prompts (``prepare_prompts``) with a loaded model."""
    import torch

    device = model.device
    package, version = package_version("transformers")
    # Longest first: similar lengths share a batch, and memory peaks early if at all.
    order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i].token_ids))
    results: list[list[Generation] | None] = [None] * len(prepared)
    torch.manual_seed(config.seed)
    sampling = (
        dict(
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0,
            num_return_sequences=config.n,
        )
        if config.temperature > 0
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    )
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        encoded = tokenizer.pad(
            {"input_ids": [prepared[i].token_ids for i in batch]}, padding=True, return_tensors="pt"
        ).to(device)
        with torch.inference_mode():
            output = model.generate(
                **encoded,
                max_new_tokens=config.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1] :].view(len(batch), config.n, -1)
        for i, samples in zip(batch, new_tokens):
            prompt = prepared[i]
            results[i] = []
            for k, tokens in enumerate(samples):
                ids = tokens.tolist()
                response, reason, count = finish(tokenizer, ids, stop_ids, "length")
                results[i].append(
                    Generation(
                        response,
                        reason,
                        count,
                        sample=k,
                        prompt_tokens=len(prompt.token_ids),
                        prompt_truncated=prompt.truncated,
                        prompt_tokens_original=prompt.original_tokens,
                        truncated_prompt=prompt.sent_text,
                        backend="hf",
                        backend_package=package,
                        backend_version=version,
                        token_ids=tuple(ids[:count]),
                    )
                )
        if progress:
            progress(len(batch))
    return [generation for samples in results for generation in samples]


@backend("hf", config=GenerationConfig)
def hf_backend(config: GenerationConfig):
    """transformers generate() on CPU or one GPU: the always-available fallback."""

    def generate(model_path: str, prompts: list[str], progress=None) -> list[Generation]:
        return generate_hf(config, model_path, prompts, progress)

    return generate


def generate_responses(
    model: str, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 16
) -> list[str]:
    """Greedy responses of ``model`` (an embedded model name, a model folder or a hub id) to the
    user ``prompts``, with this back-end: for plugins that need a model's answers as data (the
    raw embedded model's answers to harmful prompts, for instance)."""
    from forgetbench.models import resolve_model

    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [
        generation.response for generation in generate_hf(config, resolve_model(model), prompts)
    ]
