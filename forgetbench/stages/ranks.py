"""A multi-process stage: its worker run once per rank under ``accelerate launch``.

A training config with ``processes: N`` > 1 (``forgetbench.training.distributed``) makes its stage
start ``python -m accelerate.commands.launch --config_file <launch_configs/...yaml>
--num_processes N --main_process_port 0 -m forgetbench.stages.worker <folder>``: accelerate's
launcher (torch's elastic agent) starts the N ranks, each the usual stage worker. It is always a
fresh launcher process, never a fork of the fork server (``forgetbench.stages.launch``): the
launcher must start N interpreters that join one process group, which a fork of one pre-imported
process cannot give; the ranks pay the imports (seconds) against a training stage's minutes.

Crash safety is the single-process stage's: the launcher is the stage's process (the runner's
parent-death signal and ``stop`` reach it), it stops every rank as soon as one exits with an error
and then exits non-zero itself, each rank dies with the launcher (``PR_SET_PDEATHSIG``, set by the
worker), and a rank stuck in a collective fails after ``COLLECTIVE_TIMEOUT_SECONDS``. The
stage's folder is still published by the runner only after the launcher exited 0.

Threads: the stage's thread budget (``$FORGETBENCH_THREADS``, else every core) is split evenly
between its ranks, so N ranks on a CPU machine do not oversubscribe its cores. On a machine
without a CUDA GPU the ranks train on CPU with the gloo back-end (``ACCELERATE_USE_CPU``; the
trainer's ``use_cpu`` picks it too); ``accelerate launch --cpu`` is not used because it starts a
single process unless MPI launches the others.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from forgetbench import environment
from forgetbench.stages.launch import WORKER_MODULE, FreshWorker

LAUNCH_CONFIGS = Path(__file__).resolve().parents[1] / "launch_configs"
CONFIG_FILES = {
    "ddp": "ddp.yaml",
    "fsdp": "fsdp.yaml",
    "deepspeed-zero2": "zero2.yaml",
    "deepspeed-zero3": "zero3.yaml",
}


def launch_config(distributed: str) -> Path:
    return LAUNCH_CONFIGS / CONFIG_FILES[distributed]


def accelerate_command(
    processes: int, distributed: str, arguments: list[str], module: str = WORKER_MODULE
) -> list[str]:
    """The launcher's command line: ``python -m module *arguments`` on each rank. Port 0:
    accelerate picks a free port, so several multi-process stages (local jobs, Ray tasks on one
    node) never collide on 29500."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(launch_config(distributed)),
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        "0",
        "-m",
        module,
        *arguments,
    ]


def ranks_environment(env: Optional[dict], processes: int, gpus: int) -> dict:
    """The launcher's environment: the stage's thread budget split between its ranks."""
    env = dict(os.environ if env is None else env)
    budget = int(env.get(environment.THREADS) or environment.cores())
    per_rank = str(max(1, budget // processes))
    env[environment.THREADS] = per_rank
    env["OMP_NUM_THREADS"] = per_rank  # else torch's launcher sets 1 and warns
    if gpus == 0:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


class RanksWorker(FreshWorker):
    """The stage's ``processes`` ranks under one ``accelerate launch`` process. The settings are
    checked against this machine first (a Ray task's node, too), so a stage asking for more
    GPUs or cores than it has fails with one line before any rank starts."""

    def __init__(
        self, folder: Path, env: Optional[dict], processes: int, distributed: str, where: str
    ) -> None:
        from forgetbench.devices import check_processes, visible_gpus

        check_processes(processes, distributed, where)
        super().__init__(
            folder,
            ranks_environment(env, processes, visible_gpus()),
            command=accelerate_command(processes, distributed, [str(folder)]),
        )
