"""Downstream fine-tuning regimes: each ``tasks/attacks/<name>.yaml`` is an ``attack`` plugin.

An attack starts from the method's policy P0 and fine-tunes it into P1 the way a user would:
supervised fine-tuning on completions only (``trainer: sft``) or GRPO with a helpfulness reward
(``trainer: grpo``). It saves a checkpoint every ``checkpoint_every`` optimiser steps; each is
generated, judged and measured for KL from P0 like the final policy. ``task_evals`` name the
evals that show the attack did its own job (GSM8k accuracy after GSM8k SFT, ...).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import model_validator

from forgetbench.config import Field, validate
from forgetbench.registry import register_yaml_tasks
from forgetbench.tasks import DataError, DatasetSpec, load_rows
from forgetbench.training.checkpoints import (
    check_checkpoints,
    checkpoint_callback,
    checkpoint_steps,
    sft_total_steps,
)
from forgetbench.training.common import OptimConfig
from forgetbench.training.distributed import SHARDED_WEIGHTS, is_main
from forgetbench.training.grpo_inputs import (
    GRPOSettings,
    grpo_dataset,
    reward_function,
    within_prompt_length,
)
from forgetbench.training.sft import SFTSettings

# GRPO settings an RL attack may set under `rl:` (the optimiser settings are the attack's own).
RL_FIELDS_NOT_ALLOWED = {"train_task", "n_harmful", "n_harmless", "n_prompts"} | set(
    OptimConfig.model_fields
)


class AttackTask(SFTSettings):
    name: str = Field(description="The attack's name.")
    version: int = Field(description="Bumped whenever data, format or hyper-parameters change.")
    description: str = Field("", description="One line for `forgetbench list`.")
    trainer: Literal["sft", "grpo"] = Field(
        "sft",
        description="sft = TRL SFT with loss on completions only; grpo = TRL GRPO on the "
        "prompts with the `rl.reward` reward (the response template gives each prompt's "
        "`reference`).",
    )
    dataset: DatasetSpec = Field(description="Training rows.")
    prompt_template: str = Field(
        description="Python format string over row fields: user turn. "
        "Fields that are empty drop the lines `optional_sections` name."
    )
    response_template: str = Field(
        description="Python format string over row fields: target "
        "(sft) or reference answer for the reward (grpo)."
    )
    response_cut: Optional[str] = Field(
        None,
        description="Cut the response at the first "
        "occurrence of this marker (GSM8k: '####' drops the "
        "final-answer line, leaving the rationale).",
    )
    optional_sections: dict[str, str] = Field(
        default_factory=dict,
        description="field -> template fragment included only when the "
        "field is non-empty (Alpaca's `### Input:` block).",
    )
    skip_empty: bool = Field(
        False,
        description="Drop rows whose prompt or response comes out "
        "empty (counted in the log) instead of failing on them.",
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Save and score the policy every k "
        "optimiser steps (step 0 = P0 is always scored); 0 = only "
        "the final policy. Larger than the run is an error.",
    )
    task_evals: list[str] = Field(
        default_factory=list,
        description="Evals showing the attack "
        "did its job, scored with the preset's evals at every step.",
    )
    rl: dict[str, Any] = Field(
        default_factory=dict,
        description="trainer: grpo only: "
        "GRPOSettings fields (the `grpo` method's) other than the "
        "optimiser's (e.g. "
        "num_generations, prompts_per_step, max_completion_length, beta "
        "(default 0 here), adv_norm, reward, reward_config).",
    )

    def rows_per_micro_batch(self) -> Optional[int]:
        # An RL attack's micro-batch is completions: its `rl` GRPO settings check the split.
        return None if self.trainer == "grpo" else self.batch_size

    @model_validator(mode="after")
    def _rl_settings_are_valid(self):
        if self.checkpoint_every and self.processes > 1 and self.distributed in SHARDED_WEIGHTS:
            # a checkpoint is saved by rank 0 from its own copy of the weights, which sharded
            # strategies do not keep
            raise ValueError(
                f"checkpoint_every={self.checkpoint_every} needs every rank to hold the whole "
                f"model, which distributed={self.distributed} does not; set distributed=ddp or "
                "deepspeed-zero2, or checkpoint_every=0"
            )
        if self.rl and self.trainer != "grpo":
            raise ValueError("`rl` settings apply to trainer: grpo only")
        if self.trainer == "grpo":
            grpo_settings(self)
        return self


def grpo_settings(task: AttackTask) -> GRPOSettings:
    """The attack's GRPO settings: its optimiser fields plus ``rl``. beta is 0 unless ``rl`` sets
    it: a user's downstream RL does not hold the model near the aligned policy."""
    bad = sorted(set(task.rl) & RL_FIELDS_NOT_ALLOWED)
    if bad:
        raise ValueError(
            f"rl: {bad} are not RL settings here (optimiser fields go at the "
            "attack's top level; the prompts come from `dataset`)"
        )
    optim = {name: getattr(task, name) for name in OptimConfig.model_fields}
    return validate(GRPOSettings, {"beta": 0.0, **optim, **task.rl}, "attack.rl")


def format_pairs(task: AttackTask, rows: list[dict]) -> list[tuple[str, str]]:
    pairs = []
    for row in rows:
        values = dict(row)
        for field, fragment in task.optional_sections.items():
            values[f"{field}_section"] = (
                fragment.format(**row) if str(row.get(field, "")).strip() else ""
            )
        response = task.response_template.format(**values)
        if task.response_cut:
            response = response.split(task.response_cut, 1)[0]
        pairs.append((task.prompt_template.format(**values).strip(), response.strip()))
    empty = [
        number
        for number, (prompt, response) in enumerate(pairs, start=1)
        if not prompt or (task.trainer == "sft" and not response)
    ]
    where = task.dataset.path or task.dataset.hub
    if empty and task.skip_empty:
        logging.getLogger("forgetbench").warning(
            "attack %s: dropped %d row(s) with an empty prompt or response (rows %s of %s)",
            task.name,
            len(empty),
            empty[:5],
            where,
        )
        dropped = set(empty)
        pairs = [pair for number, pair in enumerate(pairs, start=1) if number not in dropped]
    elif empty:
        raise DataError(
            f"attack {task.name!r}: {len(empty)} row(s) give an empty prompt or "
            f"response (rows {empty[:5]} of {where}); fix the data or the templates, "
            "or set skip_empty: true"
        )
    if not pairs:
        raise DataError(f"attack {task.name!r}: no training rows left in {where}")
    return pairs


@lru_cache(maxsize=32)
def _row_count(task_json: str) -> int:
    task = AttackTask.model_validate_json(task_json)
    return len(format_pairs(task, load_rows(task.dataset)))


def steps_for_rows(task: AttackTask, rows: int) -> int:
    """Optimiser steps of the attack on ``rows`` training rows (``max_steps`` wins)."""
    if task.max_steps > 0:
        return task.max_steps
    if task.trainer == "grpo":
        settings = grpo_settings(task)
        return sft_total_steps(rows, settings.prompts_per_step, 1, task.epochs, -1)
    return sft_total_steps(rows, task.batch_size, task.grad_accum, task.epochs, -1)


def total_steps(task: AttackTask) -> Optional[int]:
    """Optimiser steps the attack runs: ``max_steps``, else its epochs over the dataset. None for
    a hub dataset without checkpoints: counting it would download it when the run is planned."""
    if task.max_steps > 0:
        return task.max_steps
    if task.dataset.hub and not task.dataset.path and not task.checkpoint_every:
        return None
    return steps_for_rows(task, _row_count(task.model_dump_json()))


def planned_checkpoints(task: AttackTask) -> list[int]:
    """The intermediate steps the attack saves (an interval larger than the run is an error)."""
    steps = total_steps(task)
    return checkpoint_steps(steps, task.checkpoint_every) if steps else []


def run_attack(task: AttackTask, model_path: str, out_dir: Path, seed: int) -> Path:
    from forgetbench.models import load_tokenizer

    pairs = format_pairs(task, load_rows(task.dataset))
    steps = steps_for_rows(task, len(pairs))
    # A fixed step count makes the saved checkpoints exactly the planned ones.
    task = task.model_copy(update={"max_steps": steps})
    callbacks = (
        [checkpoint_callback(task.checkpoint_every, steps, out_dir, load_tokenizer(model_path))]
        if task.checkpoint_every
        else []
    )
    if task.trainer == "sft":
        from forgetbench.training.sft import run_sft

        model = run_sft(model_path, pairs, task, out_dir, seed, callbacks=callbacks)
    else:
        model = _run_grpo_attack(task, pairs, model_path, out_dir, seed, callbacks)
    if is_main():  # rank 0 wrote them (a multi-process stage's other ranks only trained)
        check_checkpoints(out_dir, steps, task.checkpoint_every)
    return model


def _run_grpo_attack(
    task: AttackTask, pairs, model_path: str, out_dir: Path, seed: int, callbacks: list
) -> Path:
    from functools import partial

    from forgetbench.advantages import grpo_advantages
    from forgetbench.training.grpo import run_grpo

    settings = grpo_settings(task)
    # a user's downstream prompts: helpful requests, scored as harmless ones
    rows = [
        {"prompt": prompt, "reference": reference, "kind": "harmless"}
        for prompt, reference in pairs
    ]
    if settings.max_prompt_length:
        rows = within_prompt_length(rows, model_path, settings.max_prompt_length)
    return run_grpo(
        model_path,
        grpo_dataset(rows),
        [reward_function(settings)],
        partial(grpo_advantages, scale=settings.adv_norm),
        settings,
        out_dir,
        seed,
        scale_rewards=settings.adv_norm,
        callbacks=callbacks,
    )


register_yaml_tasks("attack", "attacks", AttackTask)
