"""Hugging Face ``generate``: batched, left-padded, chat-templated; greedy unless told.

The always-available fallback. Reads full model folders and PEFT LoRA adapter folders (the
adapter is loaded over its base with peft and merged for speed). In float32 it also records each
generated token's log-probability under the policy (``ChosenLogprobs``), which the KL stage
reads instead of running the policy over its own rollouts again.
"""

from __future__ import annotations

from contextlib import nullcontext

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
    record_logprobs: bool = True,
) -> list[Generation]:
    """Generate for rendered prompts (``prepare_prompts``) with a loaded model; in float32, with
    each generated token's log-probability unless ``record_logprobs`` is false."""
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
    # only float32 log-probs measure a KL faithfully (in bf16 its mean moved 5.6%, README)
    recorder = ChosenLogprobs(model) if record_logprobs and model.dtype == torch.float32 else None
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        encoded = tokenizer.pad(
            {"input_ids": [prepared[i].token_ids for i in batch]}, padding=True, return_tensors="pt"
        ).to(device)
        with torch.inference_mode(), recorder or nullcontext():
            output = model.generate(
                **encoded,
                max_new_tokens=config.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        generated = output[:, encoded["input_ids"].shape[1] :]
        logprobs = recorder.result(generated) if recorder else None
        new_tokens = generated.view(len(batch), config.n, -1)
        if logprobs is not None:
            logprobs = logprobs.view(len(batch), config.n, -1).tolist()
        for row, (i, samples) in enumerate(zip(batch, new_tokens)):
            prompt = prepared[i]
            results[i] = []
            for k, tokens in enumerate(samples):
                ids = tokens.tolist()
                response, reason, count = finish(tokenizer, ids, stop_ids, "length")
                # the end-of-sequence token's too: the KL counts it when the response stopped
                scored = count + (reason == "stop")
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
                        logprob_ids=tuple(ids[:scored]) if logprobs else (),
                        logprobs=tuple(logprobs[row][k][:scored]) if logprobs else (),
                    )
                )
        if progress:
            progress(len(batch))
    return [generation for samples in results for generation in samples]


class ChosenLogprobs:
    """Each generated token's log-probability under the model's own distribution (its raw
    logits, before temperature or top-p), recorded while ``generate()`` runs: a forward hook
    keeps each call's last-position logits and their log-normaliser and reads the chosen token's
    entry from the next call's input. The KL stage (``stages/kl.py``) needs the policy's
    log-probabilities of its own rollouts; recorded here, the stage runs only P0 over them (the
    tiny suite's KL on one policy 53.2 -> 28.6 s, generation +1%: benchmarks/kl_logprobs.py,
    README). Used as a context manager around ``generate()``; ``result`` gives (rows x new
    tokens), or None where the calls did not line up with the tokens generated (another decoding
    strategy): then nothing is recorded and the KL stage runs the policy itself."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        # the last call's next-token logits (rows x vocabulary) and their log-normaliser
        self.pending = None
        self.columns, self.read = [], []
        self.handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _hook(self, module, args, kwargs, output):
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        if self.pending is not None and ids is not None:
            chosen = ids[:, -1:]
            self.columns.append(self._logprobs(chosen))
            self.read.append(chosen)
        # generate() reads the logits into a copy of its own, so these stay as computed; the
        # normaliser alone: no log-softmax over the vocabulary written per token
        logits = output.logits[:, -1].float()
        self.pending = (logits, torch.logsumexp(logits, dim=-1, keepdim=True))

    def _logprobs(self, chosen):
        logits, normaliser = self.pending
        return logits.gather(-1, chosen) - normaliser

    def result(self, generated):
        """(rows x tokens) log-probs of ``generated`` (the new tokens), or None."""
        import torch

        tokens = generated.shape[1]
        if not tokens:
            return None
        columns, read = self.columns[:tokens], self.read[:tokens]
        if len(columns) == tokens - 1 and self.pending is not None:  # the last token's
            columns.append(self._logprobs(generated[:, -1:]))
            read.append(generated[:, -1:])
        if len(columns) != tokens or not torch.equal(torch.cat(read, dim=1), generated):
            return None
        return torch.cat(columns, dim=1)


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
