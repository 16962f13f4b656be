"""Strong-KL GRPO: GRPO held close to its reference policy by a large k3 KL weight.

    forgetbench run --method baselines/grpo_strong_kl --attack alpaca --set method.beta=0.3

The "just stay close to the reference" control: if FRPO's robustness were a KL effect, GRPO with a
strong KL penalty would match it. Source: the FRPO paper's GRPO baseline,
``Helloworld10011/FRPO: training/bash/safety_training.sh`` runs
``training/safety_training/GRPO_training_mistral.py`` with ``--beta 0.1`` (FRPO's own betas are
2e-4 to 5e-3 for lam 5 to 0.2). The update is GRPO's (``forgetbench.grpo_advantages`` in TRL's
clipped loss plus beta * k3 KL); only beta differs. Default beta = 0.1; the reference sweeps
{0.04, 0.1, 0.3} and reports 0.1 as strong-KL, so a beta below 0.1 is plain GRPO (use ``grpo``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from forgetbench import Field, GRPOMethodConfig, method, train_with_advantage

MIN_BETA = 0.1


class StrongKLConfig(GRPOMethodConfig):
    beta: float = Field(
        0.1,
        ge=MIN_BETA,
        description="k3 KL weight, at least 0.1 (the FRPO "
        "paper's GRPO baseline); below that use the `grpo` method.",
    )


@method("grpo_strong_kl", config=StrongKLConfig, passes=1)
def grpo_strong_kl(config: StrongKLConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """Strong-KL GRPO: GRPO at beta >= 0.1 (FRPO paper's baseline), the stay-close control."""
    from forgetbench import grpo_advantages  # imports torch: not at `forgetbench list` time

    return train_with_advantage(
        config,
        partial(grpo_advantages, scale=config.adv_norm),
        model_path,
        out_dir,
        seed,
        scale_rewards=config.adv_norm,
    )
