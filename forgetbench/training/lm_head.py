"""The LM head training scores tokens through: TRL's chunked kernel or the model's own head.

TRL's SFTTrainer and GRPOTrainer ask the model for ``model(..., labels=..., fused_lm_head=True)``
and read the per-token log-probabilities (the loss; GRPO's policy ratio), entropy (GRPO's entropy
bonus and metric, SFT's metric) and top-1 hits (SFT's metric) from a ``FusedCausalLMOutput``
(``trl.trainer.utils.add_fused_lm_head``). Its kernel never materialises the (batch, length,
vocabulary) logits, which is what a 7B model with a 150k vocabulary on a GPU needs. Off a Triton
device it scores every position (prompt and padding too) in Python-looped vocabulary tiles and
recomputes the LM head in the backward pass: on the embedded 135M model on CPU a warm-up step took
1.31x as long as through the model's own head, an FRPO step 1.11x (README, "Where a cell's time
goes").

``own_lm_head`` answers the same call through the model's own head, applied to the labelled
positions only (the completion: GRPO labels no prompt token), so TRL's ``compute_loss``, its
GRPO loss and a subclass's own passes (Vaccine, Booster, SAM-GRPO) run unchanged on top of it.
"""

from __future__ import annotations

# Config fields TRL's kernel applies to the logits (softcapping, scaling); a model that sets one
# keeps TRL's head rather than have its arithmetic re-implemented here.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def own_lm_head(model, temperature: float = 1.0) -> bool:
    """Make ``model``'s fused-head call compute its outputs through the model's own LM head on
    the labelled positions. ``model``: the module TRL patched (the base model under PEFT);
    ``temperature``: what the logits are divided by (GRPO's sampling temperature, as TRL's kernel
    does). The entropy carries a gradient, as the kernel's does (GRPO's entropy bonus). Calls
    this does not serve (pre-shifted labels under sequence parallelism, MoE router losses) and
    models whose logits TRL transforms (softcapping, scaling) or whose language model is nested
    (vision-language) still go to TRL's kernel. Returns whether the head was replaced."""
    import functools
    import types

    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    text_config = model.config.get_text_config()
    if text_config is not model.config or any(
        getattr(text_config, name, None) is not None for name in _LOGIT_TRANSFORMS
    ):
        return False
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
        if (
            not fused_lm_head
            or shift_labels is not None
            or kwargs.get("output_router_logits")
            or getattr(text_config, "output_router_logits", False)
        ):
            return chunked(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        lm_head = self.get_output_embeddings()
        labels = labels[:, 1:].to(lm_head.weight.device)
        mask = labels != -100
        targets = labels[mask]
        # (labelled positions, vocabulary): the prompt and padding never reach the head
        logits = lm_head(hidden.to(lm_head.weight.device)[mask]).float() / temperature
        log_softmax = torch.log_softmax(logits, dim=-1)
        scored = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        with torch.no_grad():
            # argmax returns the first maximum, as TRL counts a hit (a tie with an earlier token
            # is not one); log_softmax keeps the logits' order and ties
            hits = log_softmax.argmax(-1) == targets

        def scatter(values):
            # masked_scatter keeps an all-unlabelled micro-batch connected to the model (a
            # differentiable zero), as TRL's kernel does
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = scatter(scored)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=scatter(entropy),
            is_top1=torch.zeros_like(mask).masked_scatter(mask, hits),
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
    return True


def own_lm_heads(trainer) -> None:
    """``own_lm_head`` on the heads a TRL trainer patched: its model (the base model under PEFT)
    and, where it keeps one, its reference model, at GRPO's sampling temperature (SFT has none)."""
    from peft import PeftModel

    temperature = getattr(trainer, "temperature", 1.0)
    model = trainer.accelerator.unwrap_model(trainer.model)
    own_lm_head(model.get_base_model() if isinstance(model, PeftModel) else model, temperature)
    if getattr(trainer, "ref_model", None) is not None:
        own_lm_head(trainer.accelerator.unwrap_model(trainer.ref_model), temperature)
