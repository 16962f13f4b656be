"""Attention for inference on CPU: grouped key/value heads handed to torch as they are.

transformers' ``sdpa`` attention copies every layer's keys and values once per group of query
heads (``repeat_kv``) whenever an attention mask is present, because CUDA's fused kernels take
grouped heads only without one (``transformers.integrations.sdpa_attention.use_gqa_in_sdpa``).
Batched generation always has a mask (left padding), so each decoded token copies the whole KV
cache of every layer. torch's CPU kernel takes grouped heads with a mask (``enable_gqa=True``)
and computes the same numbers bit for bit (``tests/test_attention.py``). The embedded model has
9 query heads on 3 key/value heads: in a profile of a generate stage (50 prompts x 64 tokens)
those copies were 14% of the time.

``grouped_attention(model)`` switches a loaded model to ``sdpa_grouped``, registered with
transformers' ``AttentionInterface`` (and the ``sdpa`` mask). It takes the grouped path only
where the result is known to be identical and the copy is the cost: on CPU, without autograd,
without a paged cache or position bias. Everything else (training with gradients, GPUs) runs
transformers' own ``sdpa`` unchanged. Generation and the KL stage use it (``backends.hf``), and
so do the GRPO family's no-grad passes (hf rollouts, log-probs): in fp32 they are bit-identical,
and every pass with gradients is transformers' own, so no update depends on it.

One token per row decoded in bf16 or fp16 (bf16 generation, rollouts under autocast) is computed
in fp32: torch's 16-bit CPU kernel is several times slower there (measured below).
"""

from __future__ import annotations

import functools

NAME = "sdpa_grouped"


def sdpa_grouped(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    is_causal=None,
    **kwargs,
):
    """transformers' attention-function signature; see the module docstring."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (
        getattr(module, "num_key_value_groups", 1) == 1
        or query.device.type != "cpu"
        or torch.is_grad_enabled()
        or attention_mask is None  # transformers passes grouped heads itself then
        or kwargs.get("position_bias") is not None
        or kwargs.get("cache") is not None
        or kwargs.get("output_attentions", False)
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    kind = query.dtype
    attend = functools.partial(
        torch.nn.functional.scaled_dot_product_attention,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=False,  # with a mask, transformers' sdpa never sets it: the mask says it all
        enable_gqa=True,
    )
    if kind in (torch.bfloat16, torch.float16) and query.shape[-2] == 1:
        # Decoding in 16 bits: torch's CPU kernel took 3.1-4.4 ms per layer for one token of 50
        # rows over 100-160 cached ones in bf16, against 1.1-1.2 ms in fp32 with the casts
        # (2-core AVX512-BF16 CPU): 40% of a bf16 generate stage. The kernel accumulates in fp32
        # either way. Autocast (TRL's rollouts) is off for the call, or it would cast back.
        with torch.autocast("cpu", enabled=False):
            output = attend(query.float(), key.float(), value.float())
    else:
        output = attend(query, key, value)
    return output.to(kind).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, sdpa_grouped)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def grouped_attention(model):
    """Switch ``model`` (loaded with transformers' ``sdpa``) to ``sdpa_grouped``; a model on
    another attention implementation, or one that cannot switch, is returned as it is."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return model
    if not getattr(model, "_supports_attention_backend", False):
        return model  # its attention does not go through transformers' AttentionInterface
    _register()
    model.set_attn_implementation(NAME)
    return model
