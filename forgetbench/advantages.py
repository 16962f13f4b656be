"""Advantage estimators, as pure functions of the flat reward tensor.

Rows come in groups of ``num_generations`` consecutive completions of one prompt (TRL's
``RepeatSampler`` order). Each function returns one advantage per row, in the same order.

FRPO follows ``docs/methods.md`` §1.2-1.3 (the official FRPO code, checked there
numerically): with A_i = r_i - mean(r), w_i = exp(-A_i / lam), u = mean(w),

    plain + baseline      adv_i = 1 - w_i / u
    jackknife + baseline  adv_i = 1 - w_i * (G / u - sum_{k != i} 1 / u_(-k)),
                          u_(-k) = (sum_j w_j - w_k) / (G - 1)

times c_lam = lam if lam > 1 else 1. Without the baseline the leading 1 is dropped. Used as a
GRPO advantage with per-sequence token means and one optimiser step per generation batch (ratio
1), this gives exactly the gradient of the FRPO loss ``c_lam * mean_g[log-partition - mean b]``.
"""

from __future__ import annotations

import torch

from forgetbench.errors import ForgetbenchError


class AdvantageError(ForgetbenchError):
    """Rewards or hyper-parameters an advantage cannot be computed from."""


def _grouped(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise AdvantageError(f"rewards must be a flat tensor, got shape {tuple(rewards.shape)}")
    if num_generations < 1:
        raise AdvantageError(f"num_generations must be >= 1, got {num_generations}")
    if rewards.numel() == 0:
        raise AdvantageError("empty reward batch: no completions were scored")
    if rewards.numel() % num_generations:
        raise AdvantageError(
            f"{rewards.numel()} rewards do not split into groups of "
            f"{num_generations}: a group was split or is incomplete"
        )
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise AdvantageError(
            f"rewards at rows {bad[:10]} are NaN or infinite; fix the reward "
            "function (every completion must get a finite reward)"
        )
    return rewards.double().view(-1, num_generations)


def grpo_advantages(
    rewards: torch.Tensor, num_generations: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO: r - group mean, divided by the group std (``scale="group"``), the batch std
    (``"batch"``) or nothing (``"none"``, Dr. GRPO), as TRL computes it."""
    grouped = _grouped(rewards, num_generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(centred)
        centred = centred / (std + eps)
    elif scale == "batch":
        std = grouped.std() if grouped.numel() > 1 else torch.zeros(())
        centred = centred / (std + eps)
    elif scale != "none":
        raise AdvantageError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centred.flatten().to(rewards.dtype)


def frpo_prefactor(lam: float) -> float:
    """c_lam of the reference code: the lam factor is kept only for lam > 1 (beta is retuned)."""
    return lam if lam > 1 else 1.0


def frpo_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    lam: float,
    baseline: bool = True,
    jackknife: bool = True,
) -> torch.Tensor:
    """FRPO's entropic-risk advantage (docs/methods.md §1.2), including the c_lam prefactor."""
    if not lam > 0:
        raise AdvantageError(f"FRPO needs lambda > 0, got {lam}")
    if jackknife and num_generations < 2:
        raise AdvantageError(
            f"the jackknife needs num_generations >= 2, got {num_generations}; "
            "raise num_generations or set jackknife: false"
        )
    grouped = _grouped(rewards, num_generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    weights = torch.exp(-centred / lam)
    mean_weight = weights.mean(dim=1, keepdim=True)
    if jackknife:
        g = num_generations
        leave_one_out = (weights.sum(dim=1, keepdim=True) - weights) / (g - 1)
        inverse_sum = (1.0 / leave_one_out).sum(dim=1, keepdim=True)
        # sum over k != i of 1/u_(-k) = (sum over all k) - 1/u_(-i)
        coefficient = g / mean_weight - (inverse_sum - 1.0 / leave_one_out)
        weighted = weights * coefficient
    else:
        weighted = weights / mean_weight
    advantages = (1.0 - weighted) if baseline else -weighted
    return (frpo_prefactor(lam) * advantages).flatten().to(rewards.dtype)
