"""The local executor: each stage in its own process on this machine, ``jobs`` at a time.

The runner's main thread starts the worker processes (forks of a fork server that imported torch,
transformers and TRL once: ``forgetbench.stages.launch``; the kernel's parent-death signal kills
them if the runner is killed) and polls them; nothing blocks, so a stage that another runner on
the same output folder holds is simply waited for while other ready stages go ahead.

A stage of N processes (a training config's ``processes``) takes N of the ``jobs`` slots and N
slots' threads, split between its ranks (``forgetbench.stages.ranks``), so the machine's cores are
never oversubscribed; one asking more slots than ``jobs`` runs alone with the stage's whole
budget. A stage that does not fit yet holds back the stages after it, so it is not starved.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from forgetbench import environment
from forgetbench.executors import Executor
from forgetbench.stages import Stage
from forgetbench.stages.store import Claim, Outcome, StageRun, claim

RECLAIM_SECONDS = 1.0  # how often a stage held by another runner is looked at again


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, jobs: int = 1, threads: Optional[int] = None, forked: bool = True) -> None:
        self.jobs = jobs
        self.forked = forked
        # Several stages at once share the cores instead of each taking them all.
        self.env = None if threads is None else {**os.environ, environment.THREADS: str(threads)}
        self.threads = threads  # per slot; None: the stage's default ($FORGETBENCH_THREADS, cores)
        self.running: dict[Stage, StageRun] = {}
        self.next_in_line: Optional[Stage] = None  # a ready stage waiting for enough free slots
        self.waiting: dict[Stage, float] = {}  # held by another runner -> last look
        self.ended: list[tuple[Stage, Outcome]] = []

    def describe(self) -> str:
        return f"local ({self.jobs} at a time)" if self.jobs > 1 else "local"

    def slots(self, stage: Stage) -> int:
        return min(stage.processes, self.jobs)

    def _fits(self, stage: Optional[Stage]) -> bool:
        used = sum(self.slots(running) for running in self.running)
        return used + (1 if stage is None else self.slots(stage)) <= self.jobs

    def has_capacity(self, stage: Optional[Stage] = None) -> bool:
        if stage is None:
            return self._fits(None)
        if self.next_in_line is not None and stage is not self.next_in_line:
            return False
        fits = self._fits(stage)
        self.next_in_line = None if fits else stage
        return fits

    def submit(self, stage: Stage) -> None:
        self._try(stage)

    def _env(self, stage: Stage) -> Optional[dict]:
        """The stage's environment: a multi-slot stage gets the threads of all its slots."""
        slots = self.slots(stage)
        if slots == 1 or self.threads is None:
            return self.env
        return {**os.environ, environment.THREADS: str(self.threads * slots)}

    def _try(self, stage: Stage) -> None:
        claimed = claim(stage, self.root)
        if claimed is Claim.DONE:
            self.waiting.pop(stage, None)
            self.ended.append((stage, Outcome("reused", by_other=True)))
        elif claimed is Claim.HELD:
            self.waiting[stage] = time.monotonic()
        else:
            self.waiting.pop(stage, None)
            self.running[stage] = claimed
            try:
                claimed.start(env=self._env(stage), forked=self.forked)
            except KeyboardInterrupt:
                # Ctrl-C while the stage starts (the fork server's first start takes seconds):
                # it stays in flight, so the runner names it and its abort cleans it up.
                raise
            except BaseException:
                del self.running[stage]
                claimed.abort()
                raise

    def poll(self, timeout: float) -> list[tuple[Stage, Outcome]]:
        deadline = time.monotonic() + timeout
        while True:
            for stage, run in list(self.running.items()):
                outcome = run.poll()
                if outcome is not None:
                    del self.running[stage]
                    self.ended.append((stage, outcome))
            now = time.monotonic()
            for stage, looked in list(self.waiting.items()):
                if now - looked >= RECLAIM_SECONDS and (
                    self._fits(stage) or stage.is_done(self.root)
                ):
                    self._try(stage)
            if self.ended or time.monotonic() >= deadline:
                ended, self.ended = self.ended, []
                return ended
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def in_flight(self) -> dict[Stage, str]:
        return {
            **{stage: "running" for stage in self.running},
            **{stage: "held by another runner" for stage in self.waiting},
        }

    def abort(self) -> None:
        for stage, run in list(self.running.items()):
            run.abort()
        self.running.clear()
        self.waiting.clear()
