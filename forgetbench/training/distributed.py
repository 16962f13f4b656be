"""Training stages that run on several processes (data parallel), and what changes inside them.

A training config's ``processes: N`` (> 1) makes its stage run the worker under ``accelerate
launch`` with N ranks (``forgetbench.stages.launch``), sharing the work as ``distributed`` says:
DDP (every rank a full copy), FSDP, or DeepSpeed ZeRO-2 / ZeRO-3 (gradients and optimiser state,
and under ZeRO-3 the weights too, sharded over the ranks). The accelerate config files are shipped
in ``forgetbench/launch_configs/``.

**The optimiser step is the same whatever N.** ``batch_size`` and ``grad_accum`` (and the GRPO
family's ``prompts_per_step * num_generations``) stay the *global* rows per optimiser step: N
ranks share them (:func:`split_batch`), so an optimiser step sees the same rows as on one process
(TRL and transformers deal the data to ranks in consecutive micro-batches of one seeded order, and
normalise the loss over the tokens of all ranks), and a GRPO group is pooled across ranks before
its advantage is taken (``training.grpo``). What differs is the order of floating-point sums and,
for sampled rollouts, the random draws (TRL seeds each rank differently). That is why
``processes`` and ``distributed`` are left out of stage keys and track hashes
(``config.SPEED_ONLY_SETTINGS``), like ``precision: auto``, which also computes differently on
another machine: a run on 8 GPUs and one on 1 are the same protocol and share their stages.
"""

from __future__ import annotations

import os
from typing import Literal

Distributed = Literal["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]
# Strategies whose ranks each hold only a shard of the weights: saving the policy gathers them.
SHARDED_WEIGHTS = ("fsdp", "deepspeed-zero3")
# Seconds a rank waits in a collective (all-reduce, barrier) for the others before it fails. A
# rank that dies is caught at once (the launcher stops the others); this bounds a rank that hangs.
# Rank 0 saving a 7B policy (the others waiting at the end) stays well inside it.
COLLECTIVE_TIMEOUT_SECONDS = 1800


def split_batch(rows: int, grad_accum: int, processes: int, where: str = "") -> tuple[int, int]:
    """(rows per micro-batch, micro-batches accumulated) on each of ``processes`` ranks so that an
    optimiser step still sees ``rows * grad_accum`` rows in all: the ranks share the accumulation
    steps when ``processes`` divides ``grad_accum`` (each keeps the micro-batch, hence its memory),
    else the micro-batch. A ValueError naming the fix when neither divides."""
    if processes == 1:
        return rows, grad_accum
    if grad_accum % processes == 0:
        return rows, grad_accum // processes
    if rows % processes == 0:
        return rows // processes, grad_accum
    prefix = f"{where}." if where else ""
    raise ValueError(
        f"{prefix}processes={processes} must divide {prefix}grad_accum ({grad_accum}) or the "
        f"rows per micro-batch ({rows}), so that the ranks share each optimiser step's "
        f"{rows * grad_accum} rows; change one of them"
    )


def rank() -> int:
    """This process's rank among the stage's ranks (0 outside a multi-process stage). Read from
    the launcher's environment, so it is known before torch.distributed starts."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process writes the stage's outputs (rank 0, or the only process)."""
    return rank() == 0
