"""GRPO (DeepSeekMath, Shao et al. 2024) with the switches of docs/methods.md §2.

    forgetbench run --method grpo --attack alpaca --set method.adv_norm=none

Advantages: r - group mean, divided by the group std (``adv_norm: group``, the paper's GRPO
baseline), the batch std, or nothing (Dr. GRPO). Loss: TRL's clipped surrogate plus beta * k3 KL,
aggregated by ``loss_type``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from forgetbench.config import Field
from forgetbench.methods.rl import train_with_advantage
from forgetbench.registry import method
from forgetbench.training.grpo_inputs import GRPOSettings


class GRPOMethodConfig(GRPOSettings):
    beta: float = Field(
        0.1, ge=0, description="k3 KL weight; 0.1 is the FRPO paper's GRPO baseline."
    )


@method("grpo", config=GRPOMethodConfig, passes=1)
def grpo(config: GRPOMethodConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """GRPO: group-normalised advantages inside TRL's clipped loss with a k3 KL penalty."""
    from forgetbench.advantages import grpo_advantages

    advantage = partial(grpo_advantages, scale=config.adv_norm)
    return train_with_advantage(
        config, advantage, model_path, out_dir, seed, scale_rewards=config.adv_norm
    )
