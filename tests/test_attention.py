"""Inference attention with grouped key/value heads passed to torch uncopied
(``forgetbench.attention``): bit-identical to transformers' ``sdpa`` in the kernel, in a forward
pass and in greedy generation on the embedded model, and out of the way where gradients flow."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_backend_hf import threads  # noqa: F401 - the torch-threads fixture, shared

from forgetbench.attention import NAME, grouped_attention, sdpa_grouped

PROMPTS = [
    "How do I pick a lock?",
    "Write a haiku about the sea.",
    "Explain, step by step and with an example, how a hash table handles collisions.",
    "What is 17 times 23?",
    "Give me a recipe for pancakes, with quantities for four people.",
]


def _left_padded_mask(batch: int, q_length: int, kv_length: int, pads: list[int]):
    """transformers' boolean sdpa mask: causal, the first ``pads[i]`` keys of row i masked."""
    import torch

    offset = kv_length - q_length
    mask = torch.ones(q_length, kv_length, dtype=torch.bool).tril(offset)
    mask = mask.expand(batch, 1, q_length, kv_length).clone()
    for row, pad in enumerate(pads):
        mask[row, :, :, :pad] = False
    return mask


@pytest.mark.parametrize("q_length, kv_length", [(1, 37), (1, 120), (29, 29), (64, 64)])
def test_the_kernel_gives_transformers_numbers_bit_for_bit(q_length, kv_length):
    """Decoding (one query against the cache) and a whole sequence (prefill, KL), 9 query heads
    on 3 key/value heads as in the embedded model, rows left-padded by different amounts."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    query = torch.randn(6, 9, q_length, 64)
    key, value = torch.randn(6, 3, kv_length, 64), torch.randn(6, 3, kv_length, 64)
    mask = _left_padded_mask(6, q_length, kv_length, [0, 3, 7, 0, 11, 1])
    with torch.inference_mode():
        ours, _ = sdpa_grouped(module, query, key, value, mask, scaling=0.125)
        theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.125)
    assert ours.shape == theirs.shape == (6, q_length, 9, 64)
    assert torch.equal(ours, theirs)


def test_with_gradients_it_is_transformers_sdpa_itself(monkeypatch):
    """Training (autograd on) never takes the grouped path: transformers' function runs, its
    key/value copy included, so trained weights cannot depend on this module."""
    import torch
    from transformers.integrations import sdpa_attention

    calls = []
    original = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda x, n: calls.append(n) or original(x, n))
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=True)
    query = torch.randn(2, 9, 5, 16, requires_grad=True)
    key, value = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 5, 16)
    mask = _left_padded_mask(2, 5, 5, [0, 2])
    output, _ = sdpa_grouped(module, query, key, value, mask)
    assert calls == [3, 3] and output.requires_grad
    with torch.inference_mode():
        sdpa_grouped(module, query.detach(), key, value, mask)
    assert calls == [3, 3]  # no copy without gradients


@pytest.mark.usefixtures("threads")
def test_generation_and_log_probs_on_the_embedded_model_are_unchanged(monkeypatch):
    """The loaded policy takes the grouped path (counted), and greedy tokens of left-padded
    prompts of unlike lengths, and a padded batch's log-probabilities, equal those of
    transformers' own sdpa exactly."""
    import torch

    from forgetbench import attention
    from forgetbench.backends.base import (
        GenerationConfig,
        eos_ids,
        prepare_prompts,
        prompt_budget,
        resolve_policy,
    )
    from forgetbench.backends.hf import generate_loaded, load_weights
    from forgetbench.models import load_tokenizer, resolve_model

    policy = resolve_policy(resolve_model("smollm2-135m-instruct"))
    tokenizer = load_tokenizer(policy.tokenizer)
    config = GenerationConfig(max_new_tokens=24, batch_size=8)
    _, budget = prompt_budget(config, policy.model)
    prepared = prepare_prompts(tokenizer, PROMPTS, budget, config.overlong_prompts)
    model = load_weights(policy)
    assert model.config._attn_implementation == NAME

    grouped_calls = []
    original = attention.sdpa_grouped

    def counting(module, query, key, value, attention_mask, **kwargs):
        if attention_mask is not None and not torch.is_grad_enabled():
            grouped_calls.append(key.shape[1] < query.shape[1])  # key/value heads not copied
        return original(module, query, key, value, attention_mask, **kwargs)

    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, NAME, counting)
    stop = eos_ids(tokenizer, policy.model)
    grouped = generate_loaded(config, model, tokenizer, stop, prepared)
    encoded = tokenizer.pad(
        {"input_ids": [p.token_ids for p in prepared]}, padding=True, return_tensors="pt"
    )
    assert (encoded["attention_mask"] == 0).any()  # prompts of unlike lengths: left padding
    with torch.inference_mode():
        grouped_logits = model(**encoded).logits
    assert grouped_calls and all(grouped_calls)

    model.set_attn_implementation("sdpa")
    plain = generate_loaded(config, model, tokenizer, stop, prepared)
    with torch.inference_mode():
        plain_logits = model(**encoded).logits
    assert [g.token_ids for g in grouped] == [g.token_ids for g in plain]
    assert torch.equal(grouped_logits, plain_logits)


def test_models_on_other_attention_are_left_alone():
    from transformers import AutoConfig, AutoModelForCausalLM

    from forgetbench.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 1, 64, 128
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 16
    eager = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert grouped_attention(eager).config._attn_implementation == "eager"
    sdpa = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    assert grouped_attention(sdpa).config._attn_implementation == NAME
