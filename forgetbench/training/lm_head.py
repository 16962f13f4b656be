"""The LM head SFT computes its loss through: TRL's chunked kernel or the model's full logits.

TRL's SFTTrainer asks the model for ``model(..., labels=..., fused_lm_head=True)`` and reads the
per-token log-probabilities (the loss), entropy and top-1 hits (its logged metrics) from a
``FusedCausalLMOutput`` (``trl.trainer.utils.add_fused_lm_head``). Its kernel never materialises
the (batch, length, vocabulary) logits, which is what a 7B model with a 150k vocabulary on a GPU
needs. On a CPU it scores every position (prompt and padding too) in Python-looped vocabulary
tiles and recomputes the LM head in the backward pass: on the embedded 135M model a tiny warm-up
step took about 1.2x as long as with the full logits (README, "Where a cell's time goes").

``full_logits_head`` answers the same call from the model's own full logits, so TRL's
``compute_loss`` and a subclass's own passes (Vaccine, Booster) run unchanged on top of it.
"""

from __future__ import annotations


def full_logits_head(model) -> None:
    """Make ``model``'s fused-head call compute its outputs from the full logits. ``model``: the
    module TRL patched (the base model under PEFT). Calls TRL's kernel serves that this does not
    (pre-shifted labels under sequence parallelism, MoE router losses) still go to it."""
    import functools
    import types

    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    chunked = model.forward  # TRL's patched forward: the model's own forward unless fused

    @functools.wraps(type(model).forward)
    def forward(
        self,
        *args,
        fused_lm_head=False,
        labels=None,
        shift_labels=None,
        num_items_in_batch=None,
        **kwargs,
    ):
        if not fused_lm_head or shift_labels is not None or kwargs.get("output_router_logits"):
            return chunked(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        logits = chunked(*args, **kwargs).logits[:, :-1].float()
        labels = labels[:, 1:].to(logits.device)
        mask = labels != -100
        log_softmax = torch.log_softmax(logits, dim=-1)
        log_probs = log_softmax.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        log_probs = log_probs.masked_fill(~mask, 0.0)
        with torch.no_grad():  # SFTTrainer only logs these: no gradient, and only where labelled
            scored = log_softmax[mask]
            entropy = torch.zeros_like(log_probs)
            entropy[mask] = -(scored.exp() * scored).sum(-1)
            # argmax returns the first maximum, as TRL counts a hit (a tie with an earlier token
            # is not one); log_softmax keeps the logits' order and ties
            is_top1 = torch.zeros_like(mask)
            is_top1[mask] = scored.argmax(-1) == labels[mask]
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=entropy,
            is_top1=is_top1,
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
