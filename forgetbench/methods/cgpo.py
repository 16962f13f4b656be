"""CGPO: constrained policy optimisation with a mixture of judges (Xu et al., arXiv 2409.20370).

    forgetbench run --method cgpo --attack alpaca --set method.kl_max=5

The numerical core (mixture of judges, calibrated reward, CRPG, stratification) is
``forgetbench.cgpo``; the spec is docs/methods.md §3. This module wires CRPG into GRPO's loop,
at GRPO's sampling cost:

1. ā per prompt, before training: the row's ``reference`` where it has one, else (with
   ``baseline_answers: reference_or_greedy``) the initial policy's greedy answer, generated once
   and cached in the stage folder (``baseline.jsonl``, keyed by row id, reused on a rerun). A
   prompt still without ā is a :class:`CGPOError` before any training.
2. TRL's one reward function is :class:`CRPGScorer`: per task (the row's ``kind``), the mixture of
   the task's judges (1 / 0 / -1; a judge that raises gives -1, counted, never a crash or a pass)
   and R_calib = sigma(r(s,a) - r(s,ā)), r(s,ā) cached per prompt. TRL logs R_calib as the reward.
3. :class:`CGPOTrainer` then takes the policy's and the reference's per-token log-probs of the
   sampled completions (TRL 1.16 computes the reference's only when beta > 0, and CGPO runs with
   beta = 0, so the trainer does it: the adapter-disabled model under LoRA, else a frozen copy of
   the initial policy), KL_seq = sum over the completion of (log pi - log pi_ref), and the CRPG
   advantages (``cgpo.crpg_multitask_advantages``); the advantage hook of ``run_grpo`` hands them
   to TRL's loss (ratio 1 on-policy, beta 0: mean_i A_i * token-mean grad log pi).
4. A batch where nothing passes within KL_max has all-zero advantages and its optimiser step is
   skipped (counted in ``cgpo/skipped_steps``, logged): AdamW's weight decay would otherwise move
   the weights on a zero gradient. Per step, each task's judges' share of rejected samples and
   their failed (-1) count go to the trainer log, hence to the stage's ``log_history.json``.

Passes per optimiser step: GRPO's generation and backward passes, plus two forward passes without
gradient (the policy's and the reference's log-probs); GRPO with beta > 0 makes one.
Only ``optimizer: crpg`` is wired; crraft and codpo (their losses are in ``forgetbench.cgpo``)
are refused at config time.
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
    def _crpg_only(self):
        other = [name for name in self.tasks if self.task_optimizer(name) != "crpg"]
        if other:
            raise ValueError(
                f"cgpo: only optimizer crpg is wired into training yet (task(s) "
                f"{', '.join(other)} ask for {self.task_optimizer(other[0])}); "
                "set method.optimizer=crpg"
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


class CRPGStep(NamedTuple):
    batch: ScoredBatch
    kl_seq: "object"  # (N,) sum over the completion of log pi - log pi_ref
    advantages: "object"  # (N,) what TRL's loss gets
    skipped: bool


class CRPGScorer:
    """TRL's reward function for CGPO (R_calib per row, the mixture's outcome kept) and, through
    :meth:`advantages`, the ``advantage_fn`` that hands the trainer's CRPG advantages to TRL."""

    __name__ = "cgpo_calibrated"

    def __init__(self, config: CGPOConfig, baselines: dict[int, str]):
        from forgetbench.cgpo import TaskScorer

        self.config = config
        self.scorers = {name: TaskScorer(task) for name, task in config.tasks.items()}
        self.baselines = baselines
        self._baseline_rewards: dict[tuple[str, int], float] = {}
        self.batch: Optional[ScoredBatch] = None
        self.step: Optional[CRPGStep] = None
        self.metrics: dict[str, float] = {}
        self.steps: list[CRPGStep] = []  # every step's record (the tests read it)

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
            conversational = isinstance(prompts[0], list)
            answers = [
                [{"role": "assistant", "content": t}] if conversational and t is not None else t
                for t in texts
            ]
            values = scorer.baseline_rewards(
                [prompts[j] for j in todo],
                answers,
                **{k: [v[j] for j in todo] for k, v in columns.items()},
            )
            for j, value in zip(todo, values.tolist()):
                self._baseline_rewards[(task, indices[j])] = value
        return torch.tensor(
            [self._baseline_rewards[(task, i)] for i in indices], dtype=torch.float64
        )

    def crpg(self, kl_seq) -> CRPGStep:
        """The CRPG step of the batch just scored, with the trainer's KL_seq per row."""
        from forgetbench.cgpo import CGPOError, crpg_multitask_advantages

        batch = self.batch
        if batch is None or len(kl_seq) != len(batch.calibrated):
            raise CGPOError("cgpo: the trainer's KL_seq does not belong to the scored batch")
        result = crpg_multitask_advantages(
            batch.tasks,
            batch.judgement,
            batch.calibrated,
            kl_seq,
            self.config.kl_max,
            self.config.num_generations,
        )
        self.step = CRPGStep(batch, kl_seq.double(), result.advantages, result.skipped)
        self.steps.append(self.step)
        self.metrics["cgpo/kl_seq_mean"] = float(kl_seq.double().mean())
        self.metrics["cgpo/constrained_reward_mean"] = float(result.constrained_rewards.mean())
        return self.step

    def advantages(self, rewards, num_generations: int):
        """``run_grpo``'s advantage_fn: the CRPG advantages of the step (TRL's ``rewards`` are
        R_calib, checked to be the batch the step was computed on)."""
        import torch

        from forgetbench.cgpo import CGPOError

        step = self.step
        if step is None or not torch.allclose(rewards.double(), step.batch.calibrated, atol=1e-5):
            raise CGPOError("cgpo: TRL's rewards are not the batch the CRPG step was computed on")
        self.step = None
        return step.advantages


# ---- the trainer ---------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def cgpo_trainer_class():
    """TRL's GRPOTrainer that computes KL_seq to the reference and CGPO's CRPG advantages after
    scoring, and skips the optimiser step of a batch where nothing passed (built on first use)."""
    import copy

    import torch
    from accelerate.utils import is_peft_model
    from trl import GRPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    from forgetbench.cgpo import CGPOError, sequence_logps

    class CGPOTrainer(GRPOTrainer):
        def __init__(self, *args, cgpo: CRPGScorer, **kwargs):
            self.cgpo = cgpo
            self.skipped_steps = 0
            self._skip_step = False
            super().__init__(*args, **kwargs)
            if self.accelerator.num_processes > 1:
                raise CGPOError(
                    "cgpo's training runs on one process; launch it without accelerate/torchrun"
                )
            if self.ref_model is None and not is_peft_model(self.model):
                # TRL builds no reference at beta = 0; KL_seq needs the initial policy, frozen.
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

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if not self.model.training:
                return output
            policy = output.get("old_per_token_logps")
            if policy is None:  # on-policy TRL skips it; CGPO needs log pi for KL_seq
                policy = self._token_logps(self.model, output)
            if self.ref_model is not None:
                reference = self._token_logps(self.ref_model, output)
            else:  # LoRA: the adapter-disabled model is the reference (TRL's own choice)
                unwrapped = self.accelerator.unwrap_model(self.model)
                name = "ref" if "ref" in unwrapped.peft_config else None
                reference = self._token_logps(self.model, output, use_adapter(unwrapped, name))
            kl = sequence_logps(policy - reference, output["completion_mask"])
            step = self.cgpo.crpg(self.accelerator.gather(kl).float().cpu())
            self._skip_step = step.skipped
            self.skipped_steps += int(step.skipped)
            metrics = self._metrics["train"]
            for key, value in self.cgpo.metrics.items():
                metrics[key].append(value)
            metrics["cgpo/skipped_steps"].append(float(self.skipped_steps))
            return output

        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            step, trainer = optimizer.step, self

            def guarded_step(_optimizer, *step_args, **step_kwargs):
                if trainer._skip_step:  # all advantages 0: no update, not even weight decay's
                    return None
                return step(*step_args, **step_kwargs)

            # a bound method: torch's LR scheduler re-wraps optimizer.step through __func__
            optimizer.step = types.MethodType(guarded_step, optimizer)
            return optimizer

    return CGPOTrainer


@method("cgpo", config=CGPOConfig)
def cgpo(config: CGPOConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """CGPO (CRPG): calibrated reward only for samples that pass every judge, within KL_max."""
    rows = training_rows(config, model_path)
    scorer = CRPGScorer(config, baseline_answers(config, rows, model_path, out_dir))
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
    )
