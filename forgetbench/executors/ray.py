"""The Ray executor: each stage a Ray task declaring its CPUs / GPUs, on an existing cluster
(``address``, or ``$RAY_ADDRESS``) or on a local one it starts.

A task runs exactly what the local executor runs (``forgetbench.stages.store.run_stage``: the
stage lock, a temporary folder, a worker process, an atomic rename), so every node must see the
output folder at the same path (a shared file system) and have forgetbench installed. Ray is
imported only when this executor is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from forgetbench.errors import ForgetbenchError
from forgetbench.executors import HEAVY_KINDS, Executor, ExecutorConfig, StageResources
from forgetbench.stages import Stage
from forgetbench.stages.store import Outcome

# Environment a stage process needs to behave as it would locally (thread count, caches, data).
PASSED_ENV = (
    "FORGETBENCH_THREADS",
    "FORGETBENCH_CACHE",
    "FORGETBENCH_TASKS",
    "FORGETBENCH_TASK_FILES",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "TRANSFORMERS_OFFLINE",
    "VLLM_CPU_KVCACHE_SPACE",
)


def _run_stage_task(stage: Stage, root: str, env: dict) -> dict:
    """Body of the Ray task (runs on a Ray worker)."""
    import dataclasses

    from forgetbench.stages.store import run_stage

    full_env = {**os.environ, **env}
    try:
        outcome = run_stage(stage, Path(root), env=full_env)
    except ForgetbenchError as error:
        outcome = Outcome("failed", error=str(error), exit_code=error.exit_code)
    return dataclasses.asdict(outcome)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self.refs: dict = {}  # ObjectRef -> Stage
        self.started_cluster = False

    def open(self, root: Path) -> None:
        super().open(root)
        try:
            import ray
        except ImportError:
            raise ForgetbenchError(
                "the ray executor needs Ray: pip install 'forgetbench[ray]' (or pip install ray)"
            ) from None
        self.ray = ray
        address = self.config.address or os.environ.get("RAY_ADDRESS")
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self.config.num_cpus,
                    num_gpus=self.config.num_gpus,
                    include_dashboard=False,
                    log_to_driver=False,
                )
                self.started_cluster = True
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = address or "a local cluster"
            raise ForgetbenchError(
                f"cannot start Ray on {where}: {str(error).splitlines()[0]}"
            ) from None
        self.cluster_gpus = ray.cluster_resources().get("GPU", 0)
        self.task = ray.remote(_run_stage_task)

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        where = "local cluster" if self.started_cluster else "cluster"
        return f"ray ({where}: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)"

    def resources(self, kind: str, processes: int = 1) -> dict:
        """Resources a stage of ``kind`` declares: the config's entry for the kind, else its
        `default` entry, else 1 CPU and (for model-loading stages on a GPU cluster) 1 GPU; a
        stage of ``processes`` ranks declares that many times as much (its ranks run in one
        task, on one node, each with its own GPU and share of the CPUs)."""
        chosen = (
            self.config.resources.get(kind)
            or self.config.resources.get("default")
            or StageResources()
        )
        gpus = (
            chosen.num_gpus
            if chosen.num_gpus is not None
            else (1 if kind in HEAVY_KINDS and self.cluster_gpus > 0 else 0)
        )
        options = {
            "num_cpus": (chosen.num_cpus if chosen.num_cpus is not None else 1) * processes,
            "num_gpus": gpus * processes,
        }
        if chosen.memory_gb:
            options["memory"] = int(chosen.memory_gb * 2**30) * processes
        return options

    def has_capacity(self, stage: Optional[Stage] = None) -> bool:
        return True  # Ray queues tasks until their resources are free

    def submit(self, stage: Stage) -> None:
        options = self.resources(stage.kind, stage.processes)
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        env.setdefault("FORGETBENCH_THREADS", str(max(1, int(options["num_cpus"]))))
        ref = self.task.options(name=stage.label, max_retries=0, **options).remote(
            stage, str(self.root), env
        )
        self.refs[ref] = stage

    def poll(self, timeout: float) -> list[tuple[Stage, Outcome]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        ended = []
        for ref in ready:
            stage = self.refs.pop(ref)
            try:
                outcome = Outcome(**self.ray.get(ref))
            except Exception as error:  # the task's worker died (OOM kill, node lost, ...)
                outcome = Outcome(
                    "failed",
                    error=f"Ray task failed: {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}",
                    exit_code=1,
                )
            ended.append((stage, outcome))
        return ended

    def in_flight(self) -> dict[Stage, str]:
        return {stage: "submitted to Ray" for stage in self.refs.values()}

    def abort(self) -> None:
        for ref in list(self.refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished or its worker is gone
                pass
        self.refs.clear()

    def close(self) -> None:
        if getattr(self, "ray", None) is not None and self.ray.is_initialized():
            self.ray.shutdown()
