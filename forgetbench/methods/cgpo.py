"""CGPO: constrained policy optimisation with a mixture of judges (Xu et al., arXiv 2409.20370).

    forgetbench run --method cgpo --attack alpaca --set method.kl_max=5

The numerical core (mixture of judges, calibrated reward, CRPG, stratification) is
``forgetbench.cgpo``; the spec is docs/methods.md §3. This module wires CRPG, CRRAFT and CODPO
into GRPO's loop, at GRPO's sampling cost (the optimisers train on GRPO's rollouts):

1. ā per prompt, before training: the row's ``reference`` where it has one, else (with
   ``baseline_answers: reference_or_greedy``) the initial policy's greedy answer, generated once
   and cached in the stage folder (``baseline.jsonl``, keyed by row id, reused on a rerun). A
   prompt still without ā is a :class:`CGPOError` before any training.
2. TRL's one reward function is :class:`CGPOScorer`: per task (the row's ``kind``), the mixture of
   the task's judges (1 / 0 / -1; a judge that raises gives -1, counted, never a crash or a pass)
   and R_calib = sigma(r(s,a) - r(s,ā)), r(s,ā) cached per prompt. TRL logs R_calib as the reward.
3. :class:`CGPOTrainer` then takes the policy's and the reference's log-probs of the sampled
   completions (TRL 1.16 computes the reference's only when beta > 0, and CGPO runs with beta = 0,
   so the trainer does it: the adapter-disabled model under LoRA, else a frozen copy of the
   initial policy, as TRL's DPOTrainer), KL_seq = sum over the completion of (log pi - log pi_ref),
   and :meth:`CGPOScorer.plan` plans the step per task, by the task's ``optimizer``:
   * crpg: the CRPG advantages (``cgpo.crpg_multitask_advantages``), handed to TRL's loss by the
     advantage hook of ``run_grpo`` (ratio 1 on-policy, beta 0: mean_i A_i * token-mean
     grad log pi); the other tasks' rows get advantage 0 there.
   * crraft: per prompt the best sample passing every judge with KL_seq <= KL_max, by R_calib;
     where there is none, ā if it passes the task's judges (judged once per prompt) and its
     KL_seq (two more forward passes without gradient, on those ā only) is within KL_max, with
     weight 0.5; else the prompt trains on nothing (``cgpo/<task>/skipped_prompts``). Loss: [P]
     eq. (18), ``cgpo.crraft_loss``.
   * codpo: per prompt with a passing sample, chosen = the best passing by r(s, a), rejected = the
     worst failing (the worst of all when all pass); loss [P] eq. (14), ``cgpo.codpo_loss``, with
     log pi_ref from the same reference pass.
   The crraft and codpo losses are added to TRL's in ``compute_loss``: the tasks' trained
   prompts are dealt over the step's micro-batches, each micro-batch adds its share in one forward
   pass with gradient over its chosen (and rejected) sequences, and the shares add up to the
   task's loss; the tasks' losses (so their gradients) sum ([P] §4.2).
4. A batch with nothing to train on (no crpg task with a sample passing within KL_max, no crraft
   or codpo prompt with a sample or ā to train on) has its optimiser step skipped (counted in
   ``cgpo/skipped_steps``, logged): AdamW's weight decay would otherwise move the weights on a
   zero gradient. Per step, each task's judges' share of rejected samples and their failed (-1)
   count go to the trainer log, hence to the stage's ``log_history.json``.

Passes per optimiser step (``tests/test_cgpo_training.py``): GRPO's generation and one backward
per micro-batch, plus two forward passes without gradient (the policy's and the reference's
log-probs; GRPO with beta > 0 makes one). With gradient, crpg makes GRPO's (one per micro-batch,
all rows); crraft and codpo one per micro-batch with prompts to train on, over 1 (crraft) or 2
(codpo) sequences per prompt instead of the G rollouts; a mix of crpg with another makes both.
CRRAFT's fallback to ā adds two forward passes without gradient in the steps that use it.
"""

from __future__ import annotations

import json
import logging
import types
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple, Optional

from pydantic import field_validator, model_validator

from forgetbench.config import Field, StrictModel
from forgetbench.methods.rl import train_with_advantage, training_rows
from forgetbench.registry import method
from forgetbench.rewards.judged import ConstraintSpec, RewardTerm
from forgetbench.training.grpo import GRPOFamilyConfig

log = logging.getLogger("forgetbench")

BASELINE_FILE = "baseline.jsonl"
NOT_COLUMNS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


# ---- config --------------------------------------------------------------------------------------

Optimizer = Literal["crpg", "crraft", "codpo"]


class CGPOTask(StrictModel):
    """One task's constraint judges, reward and (optionally) its own optimiser."""

    judges: list[ConstraintSpec] = Field(
        description="The mixture of judges: a completion passes "
        "only if every one of them passes it."
    )
    reward: list[RewardTerm] = Field(
        description="r(s, a): reward plugins summed with weights "
        "(a judge through the `judge` reward)."
    )
    optimizer: Optional[Optimizer] = Field(
        None, description="This task's optimiser; None uses the method's."
    )

    @field_validator("judges")
    @classmethod
    def _has_judges(cls, judges):
        if not judges:
            raise ValueError(
                "a cgpo task needs at least one constraint judge, e.g. "
                "{judge: refusal, passes_if: at_least}"
            )
        return judges

    @field_validator("reward")
    @classmethod
    def _has_reward(cls, terms):
        if not terms:
            raise ValueError("a cgpo task needs a reward, e.g. [{name: helpfulness}]")
        return terms


def _embedded_tasks() -> dict:
    """The embedded default: refusing harmful prompts and not refusing harmless ones are the
    constraints; the offline rewards score what passes."""
    return {
        "harmful": {
            "judges": [{"judge": "refusal", "passes_if": "at_least"}],
            "reward": [{"name": "safety"}],
        },
        "harmless": {
            "judges": [{"judge": "refusal", "passes_if": "below"}],
            "reward": [{"name": "helpfulness"}],
        },
    }


class CGPOConfig(GRPOFamilyConfig):
    """CGPO on the GRPO family's rollouts: per task, a mixture of judges and a reward."""

    optimizer: Optimizer = Field(
        "crpg",
        description="crpg: constrained calibrated policy "
        "gradient inside GRPO's loop; crraft: weighted SFT on the best "
        "passing sample; codpo: DPO on best-passing vs worst-failing.",
    )
    kl_max: float = Field(
        gt=0,
        description="KL_max: samples whose sequence KL to the reference "
        "exceeds it get no reward (CRPG scales by 1 - KL/KL_max). Required, as "
        "in TRL's CGPOConfig (its tests use 5.0).",
    )
    dpo_beta: float = Field(0.1, gt=0, description="CODPO's DPO temperature beta ([P] eq. 14).")
    nll_weight: float = Field(
        5.0,
        ge=0,
        description="CODPO's lambda: weight of the chosen "
        "answer's length-normalised NLL ([P] eq. 14).",
    )
    tasks: dict[str, CGPOTask] = Field(
        default_factory=_embedded_tasks,
        description="Per training "
        "row kind (harmful, harmless): its judges, reward and "
        "optimiser; their losses are summed.",
    )
    beta: float = Field(
        0.0, ge=0, description="k3 KL weight; 0 because CGPO bounds the KL through kl_max."
    )
    baseline_answers: Literal["reference_or_greedy", "reference"] = Field(
        "reference_or_greedy",
        description="ā, the answer R_calib compares with: the row's "
        "reference, else the initial policy's greedy answer (generated once, cached in the stage "
        "folder); `reference` makes a prompt without one an error before training.",
    )

    @model_validator(mode="after")
    def _cgpo_settings(self):
        if not self.tasks:
            raise ValueError("cgpo needs at least one task: tasks.<kind>: {judges, reward}")
        # (compared with the default, not checked for being set: the resolved config that the
        # train stage re-validates carries every field)
        # (the family's validator has filled an unset reward with the training task's)
        from forgetbench.tasks import load_train_task

        if self.reward not in (None, load_train_task(self.train_task).reward) or self.reward_config:
            raise ValueError(
                "cgpo takes its rewards per task (tasks.<kind>.reward), not reward / reward_config"
            )
        if self.num_generations < 2 and any(self.task_optimizer(t) == "codpo" for t in self.tasks):
            raise ValueError("codpo needs num_generations >= 2 (a chosen and a rejected sample)")
        return self

    @model_validator(mode="after")
    def _beta_with_crpg_only(self):
        # the k3 term is part of GRPO's loss, which only CRPG's rows train with; CRRAFT bounds the
        # KL by kl_max and CODPO by its DPO reference
        other = [name for name in self.tasks if self.task_optimizer(name) != "crpg"]
        if self.beta > 0 and other:
            raise ValueError(
                f"cgpo: beta > 0 (GRPO's k3 term) works with optimizer crpg only, and task(s) "
                f"{', '.join(other)} use {self.task_optimizer(other[0])}; set method.beta=0"
            )
        return self

    @field_validator("processes")
    @classmethod
    def _one_process(cls, processes: int) -> int:
        # The skipped-step guard and the cached baseline answers are per process (see
        # cgpo_trainer_class): refused with the config, not after the ranks have started.
        if processes != 1:
            raise ValueError(
                "cgpo trains on one process (its CRPG step guard and baseline answers are per "
                "process); set method.processes=1"
            )
        return processes

    def task_optimizer(self, task: str) -> Optimizer:
        return self.tasks[task].optimizer or self.optimizer


# ---- ā: the reference answer per prompt ----------------------------------------------------------


def baseline_answers(
    config: CGPOConfig, rows: list[dict], model_path: str, out_dir: Path
) -> dict[int, str]:
    """ā per prompt index: the row's reference, else the initial policy's greedy answer (cached
    in ``out_dir/baseline.jsonl``); a prompt left without one is an error."""
    from forgetbench.cgpo import CGPOError

    answers = {
        i: row["reference"]
        for i, row in enumerate(rows)
        if isinstance(row.get("reference"), str) and row["reference"].strip()
    }
    missing = [i for i in range(len(rows)) if i not in answers]
    if missing and config.baseline_answers == "reference_or_greedy":
        cache_path = out_dir / BASELINE_FILE
        cached = {}
        if cache_path.exists():
            cached = {
                entry["id"]: entry["baseline"]
                for entry in map(json.loads, cache_path.read_text().splitlines())
            }
        todo = [i for i in missing if str(rows[i]["id"]) not in cached]
        if todo:
            from forgetbench.backends.hf import generate_responses

            log.info(
                "cgpo: generating the initial policy's greedy answers for %d prompt(s) "
                "without a reference",
                len(todo),
            )
            texts = generate_responses(
                model_path,
                [rows[i]["prompt"] for i in todo],
                max_new_tokens=config.max_completion_length,
            )
            cached.update({str(rows[i]["id"]): text for i, text in zip(todo, texts)})
            out_dir.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(
                "".join(
                    json.dumps({"id": key, "baseline": text}) + "\n" for key, text in cached.items()
                )
            )
        answers.update(
            {i: cached[str(rows[i]["id"])] for i in missing if cached[str(rows[i]["id"])].strip()}
        )
        missing = [i for i in range(len(rows)) if i not in answers]
    if missing:
        row = rows[missing[0]]
        how = (
            "the initial policy's greedy answer is empty"
            if config.baseline_answers == "reference_or_greedy"
            else "set method.baseline_answers=reference_or_greedy to use the initial policy's "
            "greedy answer"
        )
        raise CGPOError(
            f"cgpo: {len(missing)} training prompt(s) have no reference answer ā "
            f"(first: {row['id']}, {row['kind']}); {how}, or give the rows a "
            "`reference`"
        )
    return answers


# ---- the scored batch ----------------------------------------------------------------------------


class ScoredBatch(NamedTuple):
    tasks: dict  # task -> row indices (torch.long)
    judgement: "object"  # (N,) mixture of judges, 1 / 0 / -1
    rewards: "object"  # (N,) r(s, a)
    baseline_rewards: "object"  # (N,) r(s, ā) of each row's prompt
    calibrated: "object"  # (N,) R_calib
    completions: list  # (N,) the completions' text
    prompts: list  # (N,) TRL's prompts (ā is judged against them)
    columns: dict  # the dataset's columns, (N,) each (kind, reference, prompt_index...)


class TaskPart(NamedTuple):
    """What one crraft or codpo task trains on in a step: per prompt it trains on (V of them), the
    sequences of its loss, as rows of the generation batch."""

    optimizer: str
    prompt_rows: "object"  # (V,) the batch row whose prompt the sequences follow
    chosen: "object"  # (V,) batch row of a* (crraft) or a+ (codpo); -1 where a* is ā
    rejected: "object"  # (V,) codpo: batch row of a-; crraft: -1
    weights: "object"  # (V,) crraft: R_calib(s, a*), 0.5 for ā; codpo: 1
    baseline_ids: list  # (V,) crraft: ā's token ids where a* is ā, else None
    baseline_logps: "object"  # (V,) log pi(ā | s) without gradient where a* is ā, else 0
    skipped: int  # the task's prompts with nothing to train on


class CGPOStep(NamedTuple):
    batch: ScoredBatch
    policy_logps: "object"  # (N,) log pi(a | s), sum over the completion, without gradient
    reference_logps: "object"  # (N,) log pi_ref(a | s)
    kl_seq: "object"  # (N,) policy_logps - reference_logps
    lengths: "object"  # (N,) completion tokens
    advantages: "object"  # (N,) CRPG's, what TRL's loss gets; 0 on crraft / codpo tasks' rows
    parts: dict  # crraft / codpo task -> TaskPart
    skipped: bool  # nothing in the batch to train on: the optimiser step is skipped
    losses: list  # the trainer's crraft + codpo loss of each micro-batch (the record)


class CGPOScorer:
    """TRL's reward function for CGPO (R_calib per row, the mixture's outcome kept); then, with
    the trainer's log-probs, each task's optimiser's plan of the step (:meth:`plan`); through
    :meth:`advantages`, the ``advantage_fn`` that hands the CRPG advantages to TRL."""

    __name__ = "cgpo_calibrated"

    def __init__(self, config: CGPOConfig, baselines: dict[int, str]):
        from forgetbench.cgpo import TaskScorer

        self.config = config
        self.scorers = {name: TaskScorer(task) for name, task in config.tasks.items()}
        self.optimizers = {name: config.task_optimizer(name) for name in config.tasks}
        self.uses_crpg = "crpg" in self.optimizers.values()
        self.baselines = baselines
        self._baseline_rewards: dict[tuple[str, int], float] = {}
        self._baseline_judgements: dict[tuple[str, int], int] = {}
        self.batch: Optional[ScoredBatch] = None
        self.step: Optional[CGPOStep] = None
        self.metrics: dict[str, float] = {}
        self.steps: list[CGPOStep] = []  # every step's record (the tests read it)

    def __call__(self, prompts, completions, **columns) -> list[float]:
        import torch

        from forgetbench.cgpo import calibrated_rewards, stratify
        from forgetbench.rewards import completion_text

        group = self.config.num_generations
        columns = {
            k: v
            for k, v in columns.items()
            if k not in NOT_COLUMNS and isinstance(v, list) and len(v) == len(completions)
        }
        tasks = stratify(columns["kind"], group, known=list(self.scorers))
        rows = len(completions)
        judgement = torch.zeros(rows, dtype=torch.long)
        rewards, baselines, calibrated = (torch.zeros(rows, dtype=torch.float64) for _ in range(3))
        self.metrics = {}
        for name, index in tasks.items():
            scorer, picked = self.scorers[name], index.tolist()
            part = {k: [v[i] for i in picked] for k, v in columns.items()}
            task_prompts = [prompts[i] for i in picked]
            before = [dict(c.counts) for c in scorer.constraints]
            judgement[index] = scorer.judge(task_prompts, [completions[i] for i in picked], **part)
            rewards[index] = scorer.rewards(task_prompts, [completions[i] for i in picked], **part)
            baselines[index] = self._baseline(
                name, scorer, task_prompts[::group], {k: v[::group] for k, v in part.items()}
            ).repeat_interleave(group)
            calibrated[index] = calibrated_rewards(rewards[index], baselines[index], group)
            for constraint, counts in zip(scorer.constraints, before):
                now = {
                    k: constraint.counts[k] - counts.get(k, 0)
                    for k in ("pass", "violated", "failed")
                }
                key = f"cgpo/{name}/{constraint.judge.name}"
                self.metrics[f"{key}/rejected"] = (now["violated"] + now["failed"]) / len(picked)
                self.metrics[f"{key}/failed"] = float(now["failed"])
        self.batch = ScoredBatch(
            tasks,
            judgement,
            rewards,
            baselines,
            calibrated,
            [completion_text(c) for c in completions],
            list(prompts),
            columns,
        )
        self.metrics["cgpo/pass_rate"] = float((judgement == 1).double().mean())
        return calibrated.tolist()

    def _baseline(self, task: str, scorer, prompts, columns) -> "object":
        """r(s, ā) per prompt, scored once per prompt and cached."""
        import torch

        indices = columns["prompt_index"]
        todo = [j for j, index in enumerate(indices) if (task, index) not in self._baseline_rewards]
        if todo:
            texts = [self.baselines.get(indices[j]) for j in todo]
            values = scorer.baseline_rewards(
                [prompts[j] for j in todo],
                [_answer(prompts[j], t) for j, t in zip(todo, texts)],
                **{k: [v[j] for j in todo] for k, v in columns.items()},
            )
            for j, value in zip(todo, values.tolist()):
                self._baseline_rewards[(task, indices[j])] = value
        return torch.tensor(
            [self._baseline_rewards[(task, i)] for i in indices], dtype=torch.float64
        )

    def _baseline_judgement(self, task: str, rows: list[int]) -> "object":
        """The task's mixture of judges on ā, for the prompts of these batch rows; a pass or a
        violation is cached per prompt, a failed judge (-1) is asked again next time."""
        import torch

        batch = self.batch

        def key(row):
            return task, batch.columns["prompt_index"][row]

        fresh = {}
        todo = [row for row in rows if key(row) not in self._baseline_judgements]
        if todo:
            prompts = [batch.prompts[row] for row in todo]
            texts = [self.baselines[key(row)[1]] for row in todo]
            outcomes = self.scorers[task].judge(
                prompts,
                [_answer(prompt, text) for prompt, text in zip(prompts, texts)],
                **{k: [v[row] for row in todo] for k, v in batch.columns.items()},
            )
            fresh = dict(zip(todo, outcomes.tolist()))
            self._baseline_judgements.update({key(r): o for r, o in fresh.items() if o != -1})
        return torch.tensor(
            [fresh[row] if row in fresh else self._baseline_judgements[key(row)] for row in rows]
        )

    def plan(self, policy_logps, reference_logps, lengths, baseline_logps) -> CGPOStep:
        """The step of the batch just scored, given the trainer's log pi and log pi_ref per row
        (sums over each completion, no gradient) and the completions' lengths: CRPG's advantages for the crpg tasks, what each
        crraft / codpo task trains on. ``baseline_logps(rows, texts)`` gives log pi, log pi_ref and
        the token ids of answers ``texts`` to the prompts of batch ``rows`` (CRRAFT's ā)."""
        import torch

        from forgetbench.cgpo import CGPOError, crpg_multitask_advantages

        batch = self.batch
        if batch is None or len(policy_logps) != len(batch.calibrated):
            raise CGPOError("cgpo: the trainer's log-probs do not belong to the scored batch")
        policy_logps, reference_logps = policy_logps.double(), reference_logps.double()
        kl_seq = policy_logps - reference_logps
        crpg = {n: rows for n, rows in batch.tasks.items() if self.optimizers[n] == "crpg"}
        advantages = torch.zeros(len(kl_seq), dtype=torch.float64)
        crpg_idle = True
        if crpg:
            result = crpg_multitask_advantages(
                crpg,
                batch.judgement,
                batch.calibrated,
                kl_seq,
                self.config.kl_max,
                self.config.num_generations,
            )
            advantages, crpg_idle = result.advantages, result.skipped
            self.metrics["cgpo/constrained_reward_mean"] = float(result.constrained_rewards.mean())
        parts = {}
        for name, rows in batch.tasks.items():
            if self.optimizers[name] == "crraft":
                parts[name] = self._crraft(name, rows, kl_seq, baseline_logps)
            elif self.optimizers[name] == "codpo":
                parts[name] = self._codpo(rows)
            if name in parts:
                self.metrics[f"cgpo/{name}/trained_prompts"] = float(len(parts[name].chosen))
                self.metrics[f"cgpo/{name}/skipped_prompts"] = float(parts[name].skipped)
            if self.optimizers[name] == "crraft":
                used = sum(ids is not None for ids in parts[name].baseline_ids)
                self.metrics[f"cgpo/{name}/baseline_used"] = float(used)
        skipped = crpg_idle and not any(len(part.chosen) for part in parts.values())
        if skipped:
            log.warning(
                "cgpo: no sample of the batch passed the judges within KL_max (nor ā, for "
                "crraft); nothing to train on, the optimiser step is skipped"
            )
        self.step = CGPOStep(
            batch,
            policy_logps,
            reference_logps,
            kl_seq,
            torch.as_tensor(lengths),
            advantages,
            parts,
            skipped,
            [],
        )
        self.steps.append(self.step)
        self.metrics["cgpo/kl_seq_mean"] = float(kl_seq.mean())
        return self.step

    def _crraft(self, task: str, rows, kl_seq, baseline_logps) -> TaskPart:
        """CRRAFT's choice per prompt ([P] eq. 18): the best passing sample within KL_max, else ā
        if it passes the task's judges and is within KL_max ([PR] ``crraft_optimization``)."""
        import torch

        from forgetbench.cgpo import crraft_select

        batch, group, kl_max = self.batch, self.config.num_generations, self.config.kl_max
        scored = (batch.judgement[rows], batch.calibrated[rows], kl_seq[rows], kl_max, group)
        selection = crraft_select(*scored)
        first = rows[::group]  # each prompt's first row: its prompt and columns
        base_judgement = torch.zeros(len(first), dtype=torch.long)
        base_kl = torch.zeros(len(first), dtype=torch.float64)
        base_logps = torch.zeros(len(first), dtype=torch.float64)
        base_ids: list = [None] * len(first)
        need = (~selection.valid).nonzero().flatten()
        if len(need):  # judged (and ā's log-probs taken) only where no sample is eligible
            base_judgement[need] = self._baseline_judgement(task, first[need].tolist())
            passing = need[base_judgement[need] == 1]
            if len(passing):
                texts = [
                    self.baselines[batch.columns["prompt_index"][row]]
                    for row in first[passing].tolist()
                ]
                policy, reference, ids = baseline_logps(first[passing].tolist(), texts)
                base_kl[passing] = policy.double() - reference.double()
                base_logps[passing] = policy.double()
                for prompt, token_ids in zip(passing.tolist(), ids):
                    base_ids[prompt] = token_ids
            selection = crraft_select(*scored, base_judgement, base_kl)
        valid = selection.valid.nonzero().flatten()
        use_baseline = selection.use_baseline[valid]
        return TaskPart(
            "crraft",
            first[valid],
            torch.where(use_baseline, -1, rows[selection.rows[valid].clamp(min=0)]),
            torch.full((len(valid),), -1),
            selection.weights[valid],
            [base_ids[p] if selection.use_baseline[p] else None for p in valid.tolist()],
            torch.where(use_baseline, base_logps[valid], 0.0),
            len(first) - len(valid),
        )

    def _codpo(self, rows) -> TaskPart:
        """CODPO's pair per prompt ([P] eq. 14): best passing vs worst failing (or worst)."""
        import torch

        from forgetbench.cgpo import codpo_pairs

        group = self.config.num_generations
        pairs = codpo_pairs(self.batch.judgement[rows], self.batch.rewards[rows], group)
        valid = pairs.valid.nonzero().flatten()
        return TaskPart(
            "codpo",
            rows[::group][valid],
            rows[pairs.chosen[valid]],
            rows[pairs.rejected[valid]],
            torch.ones(len(valid), dtype=torch.float64),
            [None] * len(valid),
            torch.zeros(len(valid), dtype=torch.float64),
            len(pairs.valid) - len(valid),
        )

    def advantages(self, rewards, num_generations: int):
        """``run_grpo``'s advantage_fn: the CRPG advantages of the step (TRL's ``rewards`` are
        R_calib, checked to be the batch the step was computed on)."""
        import torch

        from forgetbench.cgpo import CGPOError

        step = self.step
        if step is None or not torch.allclose(rewards.double(), step.batch.calibrated, atol=1e-5):
            raise CGPOError("cgpo: TRL's rewards are not the batch the CGPO step was computed on")
        self.step = None
        return step.advantages


def _answer(prompt, text):
    """``text`` as a completion of ``prompt``: an assistant turn after a conversation."""
    if isinstance(prompt, list) and text is not None:
        return [{"role": "assistant", "content": text}]
    return text


# ---- the trainer ---------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def cgpo_trainer_class():
    """TRL's GRPOTrainer that, after scoring, takes log pi and log pi_ref of the rollouts and plans
    the step (CRPG's advantages, CRRAFT's choices, CODPO's pairs), adds the crraft / codpo tasks'
    losses to TRL's, and skips the optimiser step of a batch with nothing to train on (built on
    first use)."""
    import copy

    import torch
    from accelerate.utils import is_peft_model
    from trl import GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    from forgetbench.cgpo import (
        CGPOError,
        CRRAFTSelection,
        codpo_loss,
        crraft_loss,
        multitask_loss,
        sequence_logps,
    )

    class CGPOTrainer(GRPOTrainer):
        def __init__(self, *args, cgpo: CGPOScorer, **kwargs):
            self.cgpo = cgpo
            self.skipped_steps = 0
            self._skip_step = False
            self._cgpo_step: Optional[CGPOStep] = None
            self._rollout: dict = {}
            super().__init__(*args, **kwargs)
            if self.accelerator.num_processes > 1:
                raise CGPOError(
                    "cgpo's training runs on one process; launch it without accelerate/torchrun"
                )
            if self.ref_model is None and not is_peft_model(self.model):
                # TRL builds no reference at beta = 0; KL_seq and CODPO need the initial policy,
                # frozen (TRL's DPOTrainer also keeps a copy, or disables the adapter under LoRA)
                self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

        def _token_logps(self, model, output, context=None):
            ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            # as TRL's own no-grad passes: checkpointing off (it only warns without gradients)
            with (
                torch.no_grad(),
                disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
                context or nullcontext(),
            ):
                return self._get_per_token_logps_and_entropies(
                    model,
                    ids,
                    mask,
                    output["completion_ids"].size(1),
                    batch_size=self.args.per_device_train_batch_size,
                )[0]

        def _reference_token_logps(self, output):
            if self.ref_model is not None:
                return self._token_logps(self.ref_model, output)
            # LoRA: the adapter-disabled model is the reference (TRL's GRPO and DPO trainers')
            unwrapped = self.accelerator.unwrap_model(self.model)
            name = "ref" if "ref" in unwrapped.peft_config else None
            return self._token_logps(self.model, output, use_adapter(unwrapped, name))

        def _sequences(self, prompt_rows: list[int], completions: list) -> dict:
            """Completions (token id tensors) after the prompts of the rollout's rows, padded as
            TRL pads a rollout: the same prompt row (hence positions), completions right-padded."""
            rollout, device = self._rollout, self.accelerator.device
            width = max(len(ids) for ids in completions)
            completion_ids = torch.full(
                (len(completions), width), self._tokenizer.pad_token_id, device=device
            )
            completion_mask = torch.zeros_like(
                completion_ids, dtype=rollout["completion_mask"].dtype
            )
            for i, ids in enumerate(completions):
                completion_ids[i, : len(ids)] = torch.as_tensor(ids, device=device)
                completion_mask[i, : len(ids)] = 1
            rows = torch.as_tensor(prompt_rows, device=device)
            return {
                "prompt_ids": rollout["prompt_ids"][rows],
                "prompt_mask": rollout["prompt_mask"][rows],
                "completion_ids": completion_ids,
                "completion_mask": completion_mask,
            }

        def _completion(self, row: int):
            mask = self._rollout["completion_mask"][row].bool()
            return self._rollout["completion_ids"][row][mask]

        def _baseline_logps(self, rows: list[int], texts: list[str]):
            """log pi and log pi_ref of the answers ā, and their token ids: the text and the end
            of turn, cut at max_completion_length (the rollouts' budget, hence the step's memory)."""
            tokens = self._tokenizer(texts, add_special_tokens=False)["input_ids"]
            eos = self._tokenizer.eos_token_id
            ids = [torch.tensor([*t, eos][: self.max_completion_length]) for t in tokens]
            batch = self._sequences(rows, ids)
            mask = batch["completion_mask"]
            policy = sequence_logps(self._token_logps(self.model, batch), mask)
            reference = sequence_logps(self._reference_token_logps(batch), mask)
            return policy.float().cpu(), reference.float().cpu(), ids

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if not self.model.training:
                return output
            policy = output.get("old_per_token_logps")
            if policy is None:  # on-policy TRL skips it; CGPO needs log pi for KL_seq
                policy = self._token_logps(self.model, output)
            reference = self._reference_token_logps(output)
            mask = output["completion_mask"]
            # TRL shuffles a copy of it into micro-batches; the plan's rows are this one's
            self._rollout = output
            step = self.cgpo.plan(
                self.accelerator.gather(sequence_logps(policy, mask)).float().cpu(),
                self.accelerator.gather(sequence_logps(reference, mask)).float().cpu(),
                self.accelerator.gather(mask.sum(-1)).cpu(),
                self._baseline_logps,
            )
            self._cgpo_step = step
            self._skip_step = step.skipped
            self.skipped_steps += int(step.skipped)
            metrics = self._metrics["train"]
            for key, value in self.cgpo.metrics.items():
                metrics[key].append(value)
            metrics["cgpo/skipped_steps"].append(float(self.skipped_steps))
            return output

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # TRL's loss carries CRPG's advantages (0 on the other tasks' rows); the crraft /
            # codpo tasks' losses are added: the tasks' gradients sum ([P] §4.2)
            loss = None
            if self.cgpo.uses_crpg:
                loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            own = self._own_loss(model, self._step % self.args.steps_per_generation)
            self._cgpo_step.losses.append(0.0 if own is None else own.item())
            if own is not None:
                loss = own if loss is None else loss + own
            if loss is None:  # nothing in this micro-batch: a zero the backward pass accepts
                loss = torch.zeros((), device=self.accelerator.device, requires_grad=True)
            return loss

        def _own_loss(self, model, micro: int):
            """This micro-batch's share of the crraft and codpo tasks' losses. The trained prompts
            (all tasks') are dealt round-robin over the step's micro-batches, and a task's share
            is its loss on the prompts dealt here times (their number / the task's), so the shares
            add up to the task's loss over the step: eq. (18) / eq. (14) averaged over the task's
            prompts. One forward pass with gradient over the micro-batch's sequences."""
            step, deal = self._cgpo_step, self.args.steps_per_generation
            dealt = [
                (name, v) for name, part in step.parts.items() for v in range(len(part.chosen))
            ]
            prompt_rows, completions, taken = [], [], {}
            for name, part in step.parts.items():
                mine = [v for task, v in dealt[micro::deal] if task == name]
                if not mine:
                    continue
                taken[name] = (mine, len(completions))
                for v in mine:  # a* or a+ ...
                    chosen = int(part.chosen[v])
                    completions.append(
                        self._completion(chosen) if chosen >= 0 else part.baseline_ids[v]
                    )
                    prompt_rows.append(int(part.prompt_rows[v]))
                if part.optimizer == "codpo":  # ... then a-
                    completions += [self._completion(int(part.rejected[v])) for v in mine]
                    prompt_rows += [int(part.prompt_rows[v]) for v in mine]
            if not completions:
                return None
            batch = self._sequences(prompt_rows, completions)
            token_logps = self._get_per_token_logps_and_entropies(
                model,
                torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1),
                torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1),
                batch["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
            )[0]
            mask = batch["completion_mask"]
            logps = sequence_logps(token_logps, mask)
            losses = {}
            for name, (mine, start) in taken.items():
                part, n = step.parts[name], len(mine)
                valid = torch.ones(n, dtype=torch.bool)
                chosen = slice(start, start + n)
                if part.optimizer == "crraft":
                    selection = CRRAFTSelection(
                        part.chosen[mine], part.chosen[mine] < 0, part.weights[mine], valid
                    )
                    loss = crraft_loss(token_logps[chosen], mask[chosen], selection)
                else:
                    reference = step.reference_logps.to(logps)
                    rows_c, rows_r = part.chosen[mine], part.rejected[mine]
                    loss = codpo_loss(
                        logps[chosen],
                        logps[start + n : start + 2 * n],
                        reference[rows_c.to(logps.device)],
                        reference[rows_r.to(logps.device)],
                        mask[chosen].sum(-1),
                        valid.to(logps.device),
                        beta=self.cgpo.config.dpo_beta,
                        nll_weight=self.cgpo.config.nll_weight,
                    )
                losses[name] = loss._replace(loss=loss.loss * (n / len(part.chosen)))
            return multitask_loss(losses).loss

        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            step, trainer = optimizer.step, self

            def guarded_step(_optimizer, *step_args, **step_kwargs):
                if trainer._skip_step:  # nothing to train on: no update, not even weight decay's
                    return None
                return step(*step_args, **step_kwargs)

            # a bound method: torch's LR scheduler re-wraps optimizer.step through __func__
            optimizer.step = types.MethodType(guarded_step, optimizer)
            return optimizer

    return CGPOTrainer


@method("cgpo", config=CGPOConfig, passes=1)
def cgpo(config: CGPOConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """CGPO: per task, CRPG, CRRAFT or CODPO on samples that pass every judge, within KL_max."""
    rows = training_rows(config, model_path)
    scorer = CGPOScorer(config, baseline_answers(config, rows, model_path, out_dir))
    return train_with_advantage(
        config,
        scorer.advantages,
        model_path,
        out_dir,
        seed,
        scale_rewards="none",
        rows=rows,
        reward_funcs=[scorer],
        trainer_cls=cgpo_trainer_class(),
        trainer_kwargs={"cgpo": scorer},
        # as [PR]'s CGPOConfig: the log-probs a loss is computed on are those the choice saw
        args_kwargs={"disable_dropout": True},
    )
