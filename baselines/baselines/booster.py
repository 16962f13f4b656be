"""Booster: safety alignment that attenuates the harmful perturbation (Huang et al. 2024,
arXiv 2409.01586).

    forgetbench run --method baselines/booster --attack alpaca --set method.lam=5

Per micro-batch: g_h = grad h(w) on a batch of harmful (prompt, harmful answer) pairs; a
simulated harmful step w' = w - alpha * g_h / ||g_h||; g_h' = grad h(w'); w restored exactly;
g_f = grad f(w) on the alignment batch (``baselines/safety_sft``'s pairs: refusals and reference
answers). The optimiser steps with g = g_f + lam * (g_h - g_h'), the gradient of
f(w) + lam * [h(w) - h(w - alpha * g_h/||g_h||)] (g_h's direction held fixed): it lowers the
drop of the harmful loss a harmful step would buy. Three forward/backward passes per micro-batch.

Source: ``git-disl/Booster: trainer.py`` (``BoosterAlignmentTrainer.training_step``, plain Booster
with ``meta_term``; ||g_h|| + 1e-7) and ``script/alignment/smooth_align.sh``: lam = 5, alpha = 0.1,
harmful batches of 10 cycled from a random sampler. Official data: BeaverTails harmful answers
(RepNoise's split). Here the harmful answers are the greedy answers of the raw embedded model
(``harmful_model``, which complies with harmful requests) to the harmful training prompts,
generated at the start of the stage and saved as ``harmful_answers.jsonl`` beside the policy;
answers that open with a refusal are dropped. Official optimiser settings (lr 5e-4, 20 epochs,
batch 10, LoRA r=32 alpha=4 on q,k,v) are for 7B LoRA runs; forgetbench's SFT defaults and the
preset's shared fields apply here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from forgetbench import Field, method, run_sft, sft_dataset

from baselines._harmful import HarmfulAnswersConfig, harmful_pairs
from baselines._passes import clear_gradients, own_gradients
from baselines.safety_sft import training_pairs


class BoosterConfig(HarmfulAnswersConfig):
    lam: float = Field(
        5.0,
        ge=0,
        description="Weight of the harmful-perturbation term (official: 5); 0 = plain safety SFT.",
    )
    alpha: float = Field(
        0.1,
        gt=0,
        description="Step size of the simulated harmful step along -g_h/||g_h|| (official: 0.1).",
    )


def booster_step(params: list, harmful_pass, alignment_pass, lam: float, alpha: float):
    """Leave in ``p.grad`` g_f + lam * (g_h(w) - g_h(w - alpha g_h/(||g_h|| + 1e-7))) and return
    ``alignment_pass()``'s result; ``harmful_pass()`` / ``alignment_pass()`` run forward and
    backward at the current weights. w is restored bit for bit; gradients accumulated before the
    call are kept."""
    import torch

    with own_gradients(params):
        harmful_pass()
        g_h = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g_h]))
        theta = [p.detach().clone() for p in params]
        clear_gradients(params)
        with torch.no_grad():
            for p, g in zip(params, g_h):
                p.sub_(g * (alpha / (norm + 1e-7)).to(g.dtype))
        try:
            harmful_pass()
            g_h_shifted = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        finally:
            with torch.no_grad():
                for p, saved in zip(params, theta):
                    p.copy_(saved)
        clear_gradients(params)
        result = alignment_pass()
        with torch.no_grad():
            for p, before, after in zip(params, g_h, g_h_shifted):
                term = lam * (before - after)
                p.grad = term if p.grad is None else p.grad + term
        return result


@lru_cache(maxsize=None)
def booster_trainer_class():
    """TRL's SFTTrainer whose ``training_step`` is Booster's three passes; the harmful pairs are
    its ``eval_dataset`` (tokenized like the training data, never evaluated: eval is off)."""
    from transformers import Trainer
    from trl import SFTTrainer

    class BoosterSFTTrainer(SFTTrainer):
        def __init__(self, *args, lam: float, alpha: float, **kwargs):
            self.lam, self.alpha, self._harmful = lam, alpha, None
            super().__init__(*args, **kwargs)

        def _harmful_batch(self):
            if self._harmful is not None:
                batch = next(self._harmful, None)
                if batch is not None:
                    return batch
            self._harmful = iter(self.get_eval_dataloader())  # cycle, as the official loader
            return next(self._harmful)

        def training_step(self, model, inputs, num_items_in_batch=None):
            harmful = self._harmful_batch()
            params = [p for p in model.parameters() if p.requires_grad]
            return booster_step(
                params,
                lambda: Trainer.training_step(self, model, harmful),
                lambda: super(BoosterSFTTrainer, self).training_step(
                    model, inputs, num_items_in_batch
                ),
                self.lam,
                self.alpha,
            )

    return BoosterSFTTrainer


@method("booster", config=BoosterConfig, passes=3)
def booster(config: BoosterConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """Booster: safety SFT + lam * (harmful-loss drop of a simulated harmful step), 3 passes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    harmful = sft_dataset(harmful_pairs(config, out_dir, "booster"))
    return run_sft(
        model_path,
        training_pairs(config),
        config,
        out_dir,
        seed,
        trainer_cls=booster_trainer_class(),
        trainer_kwargs={"lam": config.lam, "alpha": config.alpha, "eval_dataset": harmful},
        args_kwargs={"per_device_eval_batch_size": config.batch_size},
    )
