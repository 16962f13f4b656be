"""CGPO's numerical core: constrained policy optimisation with a mixture of judges, as pure torch.

Xu et al., "The Perfect Blend: Redefining RLHF with Mixture of Judges", arXiv 2409.20370 (cited
below as [P]); TRL's unmerged ``CGPOTrainer`` (huggingface/trl PR #2190, cited as [PR]); the spec
is ``docs/methods.md`` §3 and ``docs/leaderboards-and-baselines.md`` §D. Rows come in
groups of ``num_generations`` (G) consecutive completions of one prompt (TRL's order); "judgement"
is the mixture of judges' per-row outcome in {1 pass, 0 violated, -1 a judge failed}; only 1
passes. Where [PR] treats -1 otherwise (CRPG multiplies by the raw judgement, so -1 flips the
reward's sign; CODPO casts it to True, a pass) it is a bug we do not copy.

Wiring (the ``cgpo`` method plugin, ``forgetbench/methods/cgpo.py``, which holds its config and
describes the loop): the rollouts are GRPO's; per task, CRPG's advantages go to TRL's loss
(:func:`crpg_multitask_advantages`), CRRAFT's choices (:func:`crraft_select`) and CODPO's pairs
(:func:`codpo_pairs`) are trained with :func:`crraft_loss` / :func:`codpo_loss`, and the step's
loss is the sum of the tasks' ([P] §4.2, :func:`multitask_loss`).
"""

from __future__ import annotations

import logging
from typing import Mapping, NamedTuple, Optional, Sequence

import torch

from forgetbench.errors import ForgetbenchError

log = logging.getLogger("forgetbench")

BASELINE_WEIGHT = 0.5  # CRRAFT's weight for the fallback ā: sigma(r(s,ā) - r(s,ā)) = sigma(0)


class CGPOError(ForgetbenchError):
    """Judgements, rewards or log-probs CGPO cannot use."""


# ---- judges and rewards --------------------------------------------------------------------------


def mixture_of_judges(judgements) -> torch.Tensor:
    """Per row, the judges combined ([P] §4.1.4; TRL ``AllTrueJudge``): -1 if any judge failed,
    else 1 if all passed, else 0. ``judgements`` is (M judges, N rows) of values in {1, 0, -1}."""
    table = torch.as_tensor(judgements, dtype=torch.long)
    if table.dim() != 2 or table.shape[0] == 0:
        raise CGPOError(
            f"mixture_of_judges needs (judges, rows) outcomes from at least one judge, "
            f"got shape {tuple(table.shape)}"
        )
    if not ((table == 1) | (table == 0) | (table == -1)).all():
        raise CGPOError(
            f"judge outcomes must be 1, 0 or -1, got {sorted(set(table.flatten().tolist()))}"
        )
    combined = torch.zeros(table.shape[1], dtype=torch.long)
    combined[(table == 1).all(dim=0)] = 1
    combined[(table == -1).any(dim=0)] = -1
    return combined


def passes(judgement: torch.Tensor) -> torch.Tensor:
    """Rows that passed every judge; a failed judge (-1) is not a pass."""
    return torch.as_tensor(judgement) == 1


def _per_row(values: torch.Tensor, rows: int, num_generations: int, what: str) -> torch.Tensor:
    """``values`` per row, or per prompt (then repeated over its group)."""
    values = torch.as_tensor(values)
    if values.dim() != 1:
        raise CGPOError(f"{what} must be a flat tensor, got shape {tuple(values.shape)}")
    if values.numel() * num_generations == rows:
        values = values.repeat_interleave(num_generations)
    if values.numel() != rows:
        raise CGPOError(
            f"{what} has {values.numel()} values for {rows} rows in groups of {num_generations}"
        )
    if values.is_floating_point() and not torch.isfinite(values).all():
        raise CGPOError(
            f"{what} has NaN or infinite values at rows "
            f"{torch.nonzero(~torch.isfinite(values)).flatten().tolist()[:5]}"
        )
    return values


def _groups(rows: int, num_generations: int) -> int:
    if num_generations < 1 or rows == 0 or rows % num_generations:
        raise CGPOError(f"{rows} rows do not split into groups of {num_generations}")
    return rows // num_generations


def calibrated_rewards(
    rewards: torch.Tensor, baseline_rewards: torch.Tensor, num_generations: int
) -> torch.Tensor:
    """R_calib(s, a) = sigma(r(s, a) - r(s, ā)) ([P] §4.1, calibrated reward; TRL #2155), in
    (0, 1) and comparable across prompts. ``baseline_rewards`` are r(s, ā) per prompt or per row."""
    rewards = _per_row(rewards, len(rewards), 1, "rewards").double()
    _groups(len(rewards), num_generations)
    baseline = _per_row(baseline_rewards, len(rewards), num_generations, "baseline rewards")
    return torch.sigmoid(rewards - baseline.double())


def _kl_gate_inputs(judgement, calibrated, kl_seq, kl_max):
    if not kl_max > 0:
        raise CGPOError(f"kl_max must be > 0, got {kl_max}")
    rows = len(calibrated)
    judgement = _per_row(judgement, rows, 1, "judgements")
    kl_seq = _per_row(kl_seq, rows, 1, "KL_seq").double()
    return judgement, torch.as_tensor(calibrated).double(), kl_seq


# ---- CRPG ----------------------------------------------------------------------------------------


class CRPGResult(NamedTuple):
    advantages: torch.Tensor  # (N,) R~ - group mean
    constrained_rewards: torch.Tensor  # (N,) R~
    zero_groups: int  # groups whose R~ are all 0 (no passing sample within KL_max): no signal
    skipped: bool  # every R~ in the batch is 0: all advantages are 0, a logged skip


def crpg_rewards(judgement, calibrated, kl_seq, kl_max: float) -> torch.Tensor:
    """R~ = 1[pass] * R_calib * max(0, 1 - KL_seq / KL_max) ([P] §4.1 CRPG; the KL factor is
    [PR] ``crpg_optimization``'s ``clamp(1 - kl_div / kl_threshold, min=0)``)."""
    judgement, calibrated, kl_seq = _kl_gate_inputs(judgement, calibrated, kl_seq, kl_max)
    gate = torch.clamp(1.0 - kl_seq / kl_max, min=0.0)
    return passes(judgement).double() * calibrated * gate


def crpg_advantages(
    judgement, calibrated, kl_seq, kl_max: float, num_generations: int
) -> CRPGResult:
    """CRPG advantages R~ - mean of R~ over the prompt's group (the issue's choice; [PR] uses the
    batch mean). A batch with no R~ > 0 gives all-zero advantages, flagged and logged."""
    constrained = crpg_rewards(judgement, calibrated, kl_seq, kl_max)
    grouped = constrained.view(_groups(len(constrained), num_generations), num_generations)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()
    zero_groups = int((grouped == 0).all(dim=1).sum())
    skipped = zero_groups == grouped.shape[0]
    if skipped:
        log.warning(
            "cgpo: no sample of the batch passed the judges within KL_max (%d groups); "
            "advantages are all 0 and the step is skipped",
            zero_groups,
        )
    return CRPGResult(advantages, constrained, zero_groups, skipped)


def crpg_multitask_advantages(
    tasks: Mapping[str, torch.Tensor],
    judgement,
    calibrated,
    kl_seq,
    kl_max: float,
    num_generations: int,
) -> CRPGResult:
    """CRPG advantages of the CRPG tasks of a batch (:func:`stratify`'s rows per task): per task
    R~ - group mean, scaled by N / N_t (N rows in the batch, N_t in the task), so that a loss
    averaging A_i * grad log pi over all N rows (TRL's, loss_type grpo) is the sum over tasks of
    each task's own mean: the tasks' gradients add ([P] §4.2) whatever their share of the batch.
    Rows of no task given (a crraft or codpo task's) get advantage 0: that loss ignores them.
    ``skipped``: no group of the given tasks has a non-zero R~. One task covering the batch is
    :func:`crpg_advantages` exactly (N_t = N)."""
    rows = len(calibrated)
    advantages = torch.zeros(rows, dtype=torch.float64)
    constrained = torch.zeros(rows, dtype=torch.float64)
    taken = torch.zeros(rows, dtype=torch.bool)
    zero_groups = 0
    for name, index in tasks.items():
        index = torch.as_tensor(index, dtype=torch.long)
        if taken[index].any():
            raise CGPOError(f"task {name!r} shares rows of the batch with another task")
        taken[index] = True
        reward = crpg_rewards(
            torch.as_tensor(judgement)[index],
            torch.as_tensor(calibrated)[index],
            torch.as_tensor(kl_seq)[index],
            kl_max,
        )
        grouped = reward.view(_groups(len(reward), num_generations), num_generations)
        advantages[index] = (grouped - grouped.mean(dim=1, keepdim=True)).flatten() * (
            rows / len(index)
        )
        constrained[index] = reward
        zero_groups += int((grouped == 0).all(dim=1).sum())
    skipped = zero_groups == int(taken.sum()) // num_generations
    return CRPGResult(advantages, constrained, zero_groups, skipped)


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(a | s) per sequence: the sum of its completion tokens' log-probs ([PR]
    ``_get_batch_logprobs``). ``token_logps`` and ``mask`` are (N, T)."""
    if token_logps.shape != mask.shape:
        raise CGPOError(f"log-probs {tuple(token_logps.shape)} and mask {tuple(mask.shape)} differ")
    return (token_logps * mask.to(token_logps.dtype)).sum(dim=-1)


def crpg_loss(
    token_logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """[PR] CRPG loss: mean_i -log pi(a_i | s) * A_i (REINFORCE with the group-mean baseline)."""
    logps = sequence_logps(token_logps, mask)
    return -(logps * advantages.to(logps.dtype).detach()).mean()


# ---- CRRAFT --------------------------------------------------------------------------------------


class CRRAFTSelection(NamedTuple):
    rows: torch.Tensor  # (P,) the chosen completion's row; -1 where ā or nothing is used
    use_baseline: torch.Tensor  # (P,) bool: train on ā (no completion was eligible, ā passes)
    weights: torch.Tensor  # (P,) R_calib of the choice, 0.5 for ā, 0 where the prompt is skipped
    valid: torch.Tensor  # (P,) bool: the prompt contributes to the loss


def crraft_select(
    judgement,
    calibrated,
    kl_seq,
    kl_max: float,
    num_generations: int,
    baseline_judgement=None,
    baseline_kl=None,
) -> CRRAFTSelection:
    """CRRAFT's choice per prompt ([P] §4.1 CRRAFT; [PR] ``crraft_optimization``): among the
    completions that pass every judge with KL_seq <= KL_max, the one with the largest R_calib;
    if there is none, ā when it passes the judges (and, given ``baseline_kl``, KL <= KL_max),
    with weight sigma(0) = 0.5; else the prompt is skipped."""
    judgement, calibrated, kl_seq = _kl_gate_inputs(judgement, calibrated, kl_seq, kl_max)
    prompts = _groups(len(calibrated), num_generations)
    eligible = (passes(judgement) & (kl_seq <= kl_max)).view(prompts, num_generations)
    scores = torch.where(
        eligible,
        calibrated.view(prompts, num_generations),
        torch.tensor(float("-inf"), dtype=torch.float64),
    )
    best = scores.argmax(dim=1)
    has = eligible.any(dim=1)
    if baseline_judgement is None:
        fallback = torch.zeros(prompts, dtype=torch.bool)
    else:
        fallback = ~has & passes(_per_row(baseline_judgement, prompts, 1, "baseline judgements"))
        if baseline_kl is not None:
            fallback &= _per_row(baseline_kl, prompts, 1, "baseline KL").double() <= kl_max
    rows = torch.where(has, best + torch.arange(prompts) * num_generations, torch.tensor(-1))
    chosen = scores.gather(1, best[:, None]).squeeze(1)
    weights = torch.where(
        has,
        chosen,
        torch.where(
            fallback,
            torch.tensor(BASELINE_WEIGHT, dtype=torch.float64),
            torch.tensor(0.0, dtype=torch.float64),
        ),
    )
    return CRRAFTSelection(rows, fallback, weights, has | fallback)


class Loss(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable; 0 (with a zero gradient) when skipped
    used: int  # prompts (or pairs) in the loss
    skipped: bool  # nothing to train on: a logged skip


def _skip(logps: torch.Tensor, what: str) -> Loss:
    log.warning("cgpo %s: no prompt of the batch has a usable sample; the step is skipped", what)
    return Loss((logps * 0.0).sum(), 0, True)


def crraft_loss(token_logps: torch.Tensor, mask: torch.Tensor, selection: CRRAFTSelection) -> Loss:
    """[P] eq. (18): -R_calib(s, a*) * log pi(a* | s), averaged over the prompts with an a*.
    ``token_logps``/``mask`` (P, T) are the policy's per-token log-probs of each prompt's choice
    (its completion, or ā where ``use_baseline``); skipped prompts' rows are ignored."""
    logps = sequence_logps(token_logps, mask)
    valid = selection.valid.to(logps.device)
    if not valid.any():
        return _skip(logps, "crraft")
    weights = selection.weights.to(logps.device, logps.dtype)
    loss = -(weights * logps)[valid].sum() / valid.sum()
    return Loss(loss, int(valid.sum()), False)


# ---- CODPO ---------------------------------------------------------------------------------------


class CODPOPairs(NamedTuple):
    chosen: torch.Tensor  # (P,) row of the best passing completion
    rejected: torch.Tensor  # (P,) row of the worst failing one, or the worst overall if all pass
    valid: torch.Tensor  # (P,) bool: the prompt has a passing completion


def codpo_pairs(judgement, rewards, num_generations: int) -> CODPOPairs:
    """CODPO's pair per prompt ([P] §4.1 CODPO; [PR] ``codpo_optimization``): chosen = argmax r
    among passing completions, rejected = argmin r among the rest (a failed judge counts as not
    passing), or argmin over all when every completion passes; prompts with no pass are skipped."""
    rewards = _per_row(rewards, len(rewards), 1, "rewards").double()
    prompts = _groups(len(rewards), num_generations)
    ok = passes(_per_row(judgement, len(rewards), 1, "judgements")).view(prompts, num_generations)
    r = rewards.view(prompts, num_generations)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    chosen = torch.where(ok, r, -inf).argmax(dim=1)
    rejected = torch.where(
        (~ok).any(dim=1), torch.where(~ok, r, inf).argmin(dim=1), r.argmin(dim=1)
    )
    offset = torch.arange(prompts) * num_generations
    return CODPOPairs(chosen + offset, rejected + offset, ok.any(dim=1))


def codpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    valid: torch.Tensor,
    beta: float = 0.1,
    nll_weight: float = 5.0,
) -> Loss:
    """[P] eq. (14): -log sigma(beta * [(log pi_c - log pi_r) - (log ref_c - log ref_r)])
    - (lambda / |y_c|) * log pi_c, averaged over the valid pairs; per-sequence log-probs (P,);
    [PR] defaults beta = 0.1, lambda = 5."""
    valid = valid.to(policy_chosen.device)
    if not valid.any():
        return _skip(policy_chosen + policy_rejected, "codpo")
    if (chosen_lengths[valid] <= 0).any():
        raise CGPOError("a chosen completion has no tokens; |y_c| must be >= 1")
    # skipped pairs get length 1: a 1/0 there would turn their zero gradient into NaN
    lengths = torch.where(valid, chosen_lengths, torch.ones_like(chosen_lengths))
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected).detach()
    losses = -(
        torch.nn.functional.logsigmoid(beta * logits)
        + nll_weight / lengths.to(policy_chosen.dtype) * policy_chosen
    )
    return Loss(losses[valid].mean(), int(valid.sum()), False)


# ---- multi-task stratification -------------------------------------------------------------------


def stratify(
    tasks: Sequence[str], num_generations: int, known: Optional[Sequence[str]] = None
) -> dict[str, torch.Tensor]:
    """Row indices of each task ([P] §4.2: harmful and harmless prompts are separate tasks, each
    with its own judges, reward and optimiser). Whole groups stay together; a group mixing tasks,
    or a task without settings (not in ``known``), is an error."""
    prompts = _groups(len(tasks), num_generations)
    found: dict[str, list[int]] = {}
    for group in range(prompts):
        rows = range(group * num_generations, (group + 1) * num_generations)
        names = {tasks[i] for i in rows}
        if len(names) != 1:
            raise CGPOError(
                f"group {group} mixes tasks {sorted(names)}; a prompt's completions "
                "belong to one task"
            )
        name = names.pop()
        if known is not None and name not in known:
            raise CGPOError(
                f"training rows of kind {name!r} have no cgpo task; add "
                f"tasks.{name} (judges, reward) or drop those prompts"
            )
        found.setdefault(name, []).extend(rows)
    return {name: torch.tensor(rows) for name, rows in found.items()}


def multitask_loss(losses: Mapping[str, Loss]) -> Loss:
    """The step's loss: the tasks' losses summed, so their gradients add ([P] §4.2:
    w <- w + alpha * sum_t g_t; no linear reward mixing)."""
    if not losses:
        raise CGPOError("multitask_loss got no task losses")
    parts = list(losses.values())
    total = sum((part.loss for part in parts[1:]), parts[0].loss)
    return Loss(total, sum(p.used for p in parts), all(p.skipped for p in parts))


# ---- judging a task's batch ----------------------------------------------------------------------


class TaskScorer:
    """One task's mixture of judges and reward on a TRL batch (built from a
    ``forgetbench.methods.cgpo.CGPOTask``)."""

    def __init__(self, task):
        from forgetbench.rewards.judged import JudgeConstraint, WeightedReward, build_reward

        self.constraints = [JudgeConstraint(spec) for spec in task.judges]
        self.reward = WeightedReward(
            [(t.name, build_reward(t.name, t.config), t.weight) for t in task.reward]
        )

    def judge(self, prompts, completions, **columns) -> torch.Tensor:
        """Per row 1 / 0 / -1 from the mixture of this task's judges."""
        return mixture_of_judges([c(prompts, completions, **columns) for c in self.constraints])

    def rewards(self, prompts, completions, **columns) -> torch.Tensor:
        """r(s, a) per row."""
        return torch.tensor(self.reward(prompts, completions, **columns), dtype=torch.float64)

    def baseline_rewards(
        self, prompts, baselines: Sequence[Optional[str]], **columns
    ) -> torch.Tensor:
        """r(s, ā) for one row per prompt, ā given per row; a missing ā is an error."""
        missing = [i for i, text in enumerate(baselines) if text is None or not str(text).strip()]
        if missing:
            raise CGPOError(
                f"{len(missing)} prompt(s) have no reference answer ā (first: "
                f"{_prompt_label(prompts[missing[0]])}); give the rows a `reference` "
                "or generate the initial policy's greedy answers first"
            )
        return self.rewards(prompts, list(baselines), **columns)

    def rejected_share(self) -> dict[str, float]:
        """Per judge, the share of the completions judged so far that did not pass."""
        shares = {}
        for constraint in self.constraints:
            total = sum(constraint.counts.values())
            shares[constraint.judge.name] = (
                (total - constraint.counts["pass"]) / total if total else 0.0
            )
        return shares


def _prompt_label(prompt) -> str:
    from forgetbench.rewards import prompt_text

    text = prompt_text(prompt)
    return repr(text[:60] + ("..." if len(text) > 60 else ""))
