"""Executors run a matrix's stages: ``local`` (default) and ``ray``, behind one interface.

The runner (``forgetbench.runner.run_stages``) owns the stage graph: it submits a stage once all
its inputs are complete and while the executor has capacity, then polls for outcomes. An executor
only knows how to run one stage somewhere; every stage, wherever it runs, goes through
``forgetbench.stages.store`` (lock, temporary folder, worker process, atomic rename), so both
executors share the crash-safety and two-runner guarantees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal, Optional

from forgetbench import environment
from forgetbench.config import Field, StrictModel
from forgetbench.errors import UsageError
from forgetbench.stages import Stage
from forgetbench.stages.store import Outcome

EXECUTORS = ("local", "ray")
# Stages that load a model for training or generation; the others (judge) are light by default.
HEAVY_KINDS = ("warmup", "train", "attack", "generate", "kl")


class StageResources(StrictModel):
    """What one stage asks of a Ray cluster."""

    num_cpus: Optional[float] = Field(
        None,
        ge=0,
        description="CPUs per stage (default: 1; also "
        "the stage's torch threads unless FORGETBENCH_THREADS is "
        "set).",
    )
    num_gpus: Optional[float] = Field(
        None,
        ge=0,
        description="GPUs per stage (default: 1 for "
        "warmup/train/attack/generate when the cluster has GPUs, "
        "else 0).",
    )
    memory_gb: Optional[float] = Field(None, gt=0, description="Memory Ray reserves per stage.")


class ExecutorConfig(StrictModel):
    """How a matrix's stages are run (the matrix file's `executor:` section)."""

    name: str = Field(
        "local",
        description="local: one process per stage on this machine; ray: each stage a Ray task.",
    )
    jobs: int = Field(1, ge=1, description="local: stages run at once (default 1: sequential).")
    start: Literal["fork", "fresh"] = Field(
        "fork",
        description="local: how each stage's process starts: `fork` of a fork server "
        "that imported torch/transformers/TRL once per run, or a `fresh` interpreter per stage "
        "(what Ray tasks do). Either way a stage is its own process.",
    )
    address: Optional[str] = Field(
        None,
        description="ray: address of an existing cluster "
        "(`auto`, `ray://host:10001`, host:port); default: "
        "$RAY_ADDRESS, else start a local cluster.",
    )
    num_cpus: Optional[int] = Field(
        None, ge=1, description="ray: CPUs of the local cluster it starts (default: all cores)."
    )
    num_gpus: Optional[int] = Field(
        None,
        ge=0,
        description="ray: GPUs of the local cluster it starts (default: Ray's detection).",
    )
    resources: dict[str, StageResources] = Field(
        default_factory=dict,
        description="ray: per stage kind (warmup, train, attack, generate, "
        "judge) or `default`, the resources each stage declares.",
    )


class Executor(ABC):
    """Runs stages somewhere; the runner decides which and when."""

    name: str = "?"

    def open(self, root: Path) -> None:
        """Called once before the first submit."""
        self.root = root

    @abstractmethod
    def has_capacity(self, stage: Optional[Stage] = None) -> bool:
        """Whether ``stage`` (or any stage) may be submitted now."""

    @abstractmethod
    def submit(self, stage: Stage) -> None:
        """Start ``stage`` (all its inputs are complete)."""

    @abstractmethod
    def poll(self, timeout: float) -> list[tuple[Stage, Outcome]]:
        """Outcomes of submitted stages that ended, waiting up to ``timeout`` seconds for one."""

    @abstractmethod
    def in_flight(self) -> dict[Stage, str]:
        """Submitted stages not yet ended -> what they are doing (for the progress display)."""

    @abstractmethod
    def abort(self) -> None:
        """Stop everything in flight and leave nothing half-written (Ctrl-C, SIGTERM)."""

    def close(self) -> None:
        """Called once at the end (also after abort)."""

    def describe(self) -> str:
        return self.name


def local_threads(jobs: int) -> Optional[int]:
    """Torch threads per stage when ``jobs`` stages share this machine: more threads than cores
    in all is 4-10x slower here, so that is refused before any work. None: the stage's default."""
    cores = environment.cores()
    if jobs > cores:
        raise UsageError(
            f"--jobs {jobs} is more than this machine's {cores} cores; use --jobs {cores} or fewer"
        )
    if environment.threads_set():
        threads = environment.threads()
        if jobs * threads > cores:
            raise UsageError(
                f"--jobs {jobs} x {environment.THREADS}={threads} threads is more "
                f"than this machine's {cores} cores; lower one of them"
            )
        return None
    return cores // jobs if jobs > 1 else None


def make_executor(config: ExecutorConfig) -> Executor:
    if config.name == "local":
        from forgetbench.executors.local import LocalExecutor

        return LocalExecutor(
            jobs=config.jobs, threads=local_threads(config.jobs), forked=config.start == "fork"
        )
    if config.name == "ray":
        from forgetbench.executors.ray import RayExecutor

        return RayExecutor(config)
    raise UsageError(f"unknown executor {config.name!r}; executors are {', '.join(EXECUTORS)}")
