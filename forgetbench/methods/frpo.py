"""FRPO: Fine-tuning Robust Policy Optimization (Sabbaghi et al., arXiv 2602.08813).

    forgetbench run --method frpo --attack alpaca --set method.lam=2

GRPO's loop with the entropic-risk advantage of ``forgetbench.advantages.frpo_advantages``:
rewards are not std-normalised, the baseline and the jackknife are on by default, the lam factor
is kept only for lam > 1, and beta defaults to the paper's (lam, beta) table. The loss aggregation
is fixed to per-sequence token means (docs/methods.md §1.9 item 7), one optimiser step per generation
batch (item 8), groups are identified by prompt index (item 4).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal, Optional

from pydantic import model_validator

from forgetbench.config import Field
from forgetbench.methods.rl import train_with_advantage
from forgetbench.registry import method
from forgetbench.training.grpo import GRPOFamilyConfig

# The paper's safety sweep pairs each lam with its beta (docs/methods.md §1.2).
PAPER_BETA = {5.0: 2e-4, 2.0: 5e-4, 1.0: 1e-3, 0.5: 2e-3, 0.2: 5e-3, 0.1: 0.1}


class FRPOConfig(GRPOFamilyConfig):
    lam: float = Field(
        0.5,
        gt=0,
        description="Entropic-risk temperature lambda (KL-ball size): "
        "small = more robust, large -> GRPO with unnormalised advantages.",
    )
    beta: Optional[float] = Field(
        None,
        ge=0,
        description="k3 KL weight; None takes the paper's "
        "value for lam (5:2e-4, 2:5e-4, 1:1e-3, 0.5:2e-3, 0.2:5e-3, "
        "0.1:0.1).",
    )
    baseline: bool = Field(
        True,
        description="Subtract the per-sample baseline (zero-sum advantages within each group).",
    )
    jackknife: bool = Field(
        True,
        description="Leave-one-out correction of the log-partition "
        "bias; needs num_generations >= 2.",
    )
    loss_type: Literal["grpo"] = Field(
        "grpo", description="Fixed: per-sequence token mean, then mean over sequences."
    )

    @model_validator(mode="after")
    def _paper_beta_and_group_size(self):
        if self.beta is None:
            if self.lam not in PAPER_BETA:
                raise ValueError(f"no paper beta for lam={self.lam}; set beta explicitly")
            self.beta = PAPER_BETA[self.lam]
        if self.jackknife and self.num_generations < 2:
            raise ValueError("the jackknife needs num_generations >= 2")
        return self


@method("frpo", config=FRPOConfig, passes=1)
def frpo(config: FRPOConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """FRPO: entropic-risk (max-min over a KL ball) advantage inside GRPO, no extra compute."""
    from forgetbench.advantages import frpo_advantages

    advantage = partial(
        frpo_advantages, lam=config.lam, baseline=config.baseline, jackknife=config.jackknife
    )
    return train_with_advantage(config, advantage, model_path, out_dir, seed, scale_rewards="none")
