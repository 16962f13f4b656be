"""SAM-GRPO: sharpness-aware minimisation of the GRPO loss (a flat optimum as robustness).

    forgetbench run --method baselines/sam_grpo --attack alpaca --set method.rho=0.01

Per micro-batch, with the rollouts, rewards and advantages fixed (generated once): g = grad of the
GRPO loss at theta; eps = rho * g / ||g|| (global 2-norm over the trainable parameters, LoRA
adapters only under LoRA); the gradient is taken again at theta + eps (log-probs and ratio
recomputed there); theta is restored exactly (copied back, not subtracted); the optimiser steps
with the second gradient. Two forward/backward passes per micro-batch, no extra generation.

Sources: SAM's step is ``davda54/sam: sam.py`` (``first_step``: e_w = rho * g / (||g|| + 1e-12),
w += e_w; ``second_step``: restore w, ``base_optimizer.step()``; default rho = 0.05). The HF-Trainer
pattern (override ``training_step``) follows ``OPTML-Group/Unlearn-Smooth:
MUSE/baselines/baselines/sam_iterative.py`` (rho = 0.01 there). There is no official SAM-GRPO; the
rollouts-fixed recipe is docs/leaderboards-and-baselines.md §C2. With gradient
accumulation each micro-batch is perturbed by its own gradient ("m-sharpness", Foret et al. 2021);
on several processes ||g|| is each process's own.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

from forgetbench import Field, GRPOMethodConfig, method, train_with_advantage

from baselines._passes import clear_gradients, own_gradients


class SAMGRPOConfig(GRPOMethodConfig):
    rho: float = Field(
        0.05,
        gt=0,
        description="SAM neighbourhood radius: the perturbation's "
        "2-norm (davda54/sam default 0.05; Unlearn-Smooth uses 0.01).",
    )


def sharpness_aware_step(params: list, first_pass, second_pass, rho: float):
    """Leave in ``p.grad`` the gradient at theta + eps, eps = rho * g / (||g|| + 1e-12) with g the
    gradient ``first_pass()`` computes at theta; return ``second_pass()``'s result. Both passes
    run forward and backward on the same batch. theta is restored bit for bit, and gradients
    accumulated before the call (earlier micro-batches) are kept and added to."""
    import torch

    with own_gradients(params):
        first_pass()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = rho / (norm + 1e-12)
        theta = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(g * scale.to(g.dtype))
        clear_gradients(params)  # the step uses the gradient at theta + eps only
        try:
            return second_pass()
        finally:
            with torch.no_grad():
                for p, saved in zip(params, theta):
                    p.copy_(saved)


@lru_cache(maxsize=None)
def sam_trainer_class():
    """TRL's GRPOTrainer whose ``training_step`` is SAM's two passes on one fixed batch (built on
    first use so that importing this module does not import TRL)."""
    from transformers import Trainer
    from trl import GRPOTrainer

    class SAMGRPOTrainer(GRPOTrainer):
        def __init__(self, *args, rho: float, **kwargs):
            self.rho = rho
            self._fixed_batch = None
            super().__init__(*args, **kwargs)

        def _prepare_inputs(self, generation_batch):
            # Both passes see the micro-batch prepared once: same rollouts, same advantages.
            if self._fixed_batch is not None:
                return self._fixed_batch
            return super()._prepare_inputs(generation_batch)

        def training_step(self, model, inputs, num_items_in_batch=None):
            model.train()
            self._fixed_batch = self._prepare_inputs(inputs)
            params = [p for p in model.parameters() if p.requires_grad]
            try:
                # The first pass is the plain Trainer step (forward, backward); the second is
                # GRPO's, which also advances TRL's micro-batch counter once per micro-batch.
                return sharpness_aware_step(
                    params,
                    lambda: Trainer.training_step(self, model, inputs, num_items_in_batch),
                    lambda: super(SAMGRPOTrainer, self).training_step(
                        model, inputs, num_items_in_batch
                    ),
                    self.rho,
                )
            finally:
                self._fixed_batch = None

    return SAMGRPOTrainer


@method("sam_grpo", config=SAMGRPOConfig, passes=2)
def sam_grpo(config: SAMGRPOConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """SAM-GRPO: GRPO's gradient taken at theta + rho*g/||g|| (sharpness-aware, 2 passes/step)."""
    from forgetbench import grpo_advantages  # imports torch: not at `forgetbench list` time

    return train_with_advantage(
        config,
        partial(grpo_advantages, scale=config.adv_norm),
        model_path,
        out_dir,
        seed,
        scale_rewards=config.adv_norm,
        trainer_cls=sam_trainer_class(),
        trainer_kwargs={"rho": config.rho},
    )
