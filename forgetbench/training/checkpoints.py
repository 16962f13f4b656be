"""Policies saved every k optimiser steps of an attack, each scored like the final one.

Step 0 is the attack's starting policy P0 itself (the method's policy, already scored as
``before``), so it is not saved again. Steps k, 2k, ... below the last step are saved under
``checkpoints/step-<k>/``; the last step is the stage's ``model/``. A LoRA run saves each
checkpoint as its adapter over P0 (megabytes instead of a model copy); every back-end and the KL
stage read adapter folders (``backends.base.resolve_policy``).
"""

from __future__ import annotations

import math
from pathlib import Path

from forgetbench.errors import ForgetbenchError, UsageError
from forgetbench.timing import timed

CHECKPOINTS_DIR = "checkpoints"


def checkpoint_steps(total_steps: int, every: int) -> list[int]:
    """The intermediate steps to save: k, 2k, ... strictly below ``total_steps``."""
    if every <= 0:
        return []
    if every > total_steps:
        raise UsageError(
            f"attack.checkpoint_every={every} is larger than the run "
            f"({total_steps} optimiser steps); lower it or use 0 for no intermediate "
            "checkpoints"
        )
    return list(range(every, total_steps, every))


def checkpoint_folder(stage_folder: Path, step: int) -> Path:
    return stage_folder / CHECKPOINTS_DIR / f"step-{step}"


def sft_total_steps(
    rows: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int
) -> int:
    """Optimiser steps of an SFT run, as transformers counts them (a last partial batch and a
    last partial accumulation each still make a step)."""
    if max_steps > 0:
        return max_steps
    per_epoch = max(math.ceil(math.ceil(rows / batch_size) / grad_accum), 1)
    return max(math.ceil(epochs * per_epoch), 1)


def checkpoint_callback(every: int, total_steps: int, out_dir: Path, tokenizer):
    """A TrainerCallback saving the policy after every ``every``-th optimiser step."""
    from transformers import TrainerCallback

    wanted = set(checkpoint_steps(total_steps, every))

    class SaveCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            # rank 0 of a multi-process stage writes (every rank holds the whole model: the
            # attack config refuses checkpoints under sharded weights)
            if state.global_step in wanted and state.is_world_process_zero:
                folder = checkpoint_folder(out_dir, state.global_step)
                with timed("save"):
                    model.save_pretrained(folder)  # a PEFT model saves just its adapter
                    tokenizer.save_pretrained(folder)

    return SaveCheckpoints()


def check_checkpoints(out_dir: Path, total_steps: int, every: int) -> None:
    """Fail the stage, naming what is missing, if the run stopped short of its planned steps."""
    missing = [
        step
        for step in checkpoint_steps(total_steps, every)
        if not (checkpoint_folder(out_dir, step) / "config.json").is_file()
        and not (checkpoint_folder(out_dir, step) / "adapter_config.json").is_file()
    ]
    if missing:
        raise ForgetbenchError(
            f"the attack ended without checkpoints for steps {missing}; the "
            f"trainer ran fewer than the planned {total_steps} steps"
        )
