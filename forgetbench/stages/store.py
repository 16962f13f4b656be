"""The stage store: claim a stage, compute it in its own process, publish it atomically.

Layout of an output folder::

    forgetbench.json                          layout marker (layout version, stage format, writer)
    stages/<kind>/<slug>-<key>/               a finished stage: its outputs, request.json (what it
                                              was asked), stage.json (written last), worker.log
    stages/<kind>/.<key>.lock                 held by whoever computes the stage
    stages/.tmp-<kind>-<key>-<pid>/           a stage being computed
    logs/failed/<kind>-<slug>-<key>.log       the worker log of the last failed attempt
    results/                                  the results tables (forgetbench.results)

A stage is written into its temporary folder and renamed into place only when it completed, so a
crash, SIGKILL or Ctrl-C leaves no half-written stage; re-running the same command resumes. The
per-stage lock keeps two runners (or two Ray tasks) on one output folder from computing a stage
twice; a temporary folder whose lock nobody holds was left by a dead runner and is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Literal, Optional

from filelock import FileLock, Timeout

from forgetbench.atomic import write_atomic
from forgetbench.errors import ForgetbenchError, UsageError
from forgetbench.provenance import forgetbench_version, git_revision, package_versions
from forgetbench.stages import DONE_FILE, STAGE_FORMAT, STAGE_KINDS, Stage
from forgetbench.stages.launch import ForkedWorker, FreshWorker
from forgetbench.stages.worker import ERROR_FILE, LOG_FILE, REQUEST_FILE

# Bumped when the output folder's layout (folder names, marker, lock places) changes shape.
LAYOUT_VERSION = 1
LAYOUT_FILE = "forgetbench.json"


class Interrupted(ForgetbenchError):
    exit_code = 130


# --------------------------------------------------------------------------------- the folder


def check_writable(root: Path) -> None:
    try:
        (root / "stages").mkdir(parents=True, exist_ok=True)
        probe = root / "stages" / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ForgetbenchError(
            f"output folder {root} is not writable ({error.strerror}); pass "
            "--output-dir to a folder you can write"
        ) from None


def check_layout(root: Path) -> None:
    """Refuse, before any work, an output folder written by an incompatible forgetbench.

    The root's ``forgetbench.json`` is authoritative; a folder from before the marker existed is
    judged by the ``format`` its stages recorded (absent = format 1, the format of that time).
    """
    marker = root / LAYOUT_FILE
    fix = "use a new --output-dir, or the forgetbench version that wrote it"
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
            layout, stage_format = int(info["layout_version"]), int(info["stage_format"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(
                f"output folder {root} has an unreadable {LAYOUT_FILE}; {fix}"
            ) from None
        if (layout, stage_format) != (LAYOUT_VERSION, STAGE_FORMAT):
            raise UsageError(
                f"output folder {root} was written by forgetbench {info.get('written_by', '?')} "
                f"(layout {layout}, stage format {stage_format}); this forgetbench "
                f"({forgetbench_version()}) reads layout {LAYOUT_VERSION}, stage format "
                f"{STAGE_FORMAT}: {fix}"
            )
        return
    for done in _stage_files(root):
        try:
            stage_format = int(json.loads(done.read_text()).get("format", 1))
        except (ValueError, TypeError, AttributeError):
            raise UsageError(f"output folder {root} holds an unreadable {done}; {fix}") from None
        if stage_format != STAGE_FORMAT:
            raise UsageError(
                f"output folder {root} holds stages of format {stage_format} (e.g. "
                f"{done.parent.name}); this forgetbench ({forgetbench_version()}) "
                f"reads stage format {STAGE_FORMAT}: {fix}"
            )


def _stage_files(root: Path):
    for kind in STAGE_KINDS:
        folder = root / "stages" / kind
        if folder.is_dir():
            yield from (f for f in folder.glob(f"[!.]*/{DONE_FILE}"))


def mark_layout(root: Path) -> None:
    """Write the layout marker once (atomically); check_layout must have passed."""
    marker = root / LAYOUT_FILE
    if marker.is_file():
        return
    write_atomic(
        marker,
        json.dumps(
            {
                "layout_version": LAYOUT_VERSION,
                "stage_format": STAGE_FORMAT,
                "written_by": forgetbench_version(),
            },
            indent=1,
        ),
    )


def lock_path(root: Path, kind: str, key: str) -> Path:
    return root / "stages" / kind / f".{key}.lock"


def _lock(root: Path, kind: str, key: str) -> FileLock:
    path = lock_path(root, kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), thread_local=False)


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete temporary stage folders left by a dead runner (SIGKILL, power loss, pre-emption).

    A temporary folder exists only while its writer holds the stage's lock, so one whose lock can
    be taken is stale, whoever and wherever its writer was.
    """
    removed = []
    for tmp in sorted((root / "stages").glob(".tmp-*")):
        parts = tmp.name[len(".tmp-") :].split("-")
        if len(parts) < 3 or parts[0] not in STAGE_KINDS:
            continue
        lock = _lock(root, parts[0], parts[1])
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # a live runner is writing it
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        finally:
            lock.release()
    return removed


def prepare(root: Path, write: bool = True) -> None:
    """What every run does first: check the folder, then (if it will write) claim it."""
    check_layout(root)
    if write:
        check_writable(root)
        mark_layout(root)
        remove_stale_temporaries(root)


# --------------------------------------------------------------------------------- one stage


@dataclass
class Outcome:
    """How a stage ended for this runner: computed here (``ran``), found complete (``reused``),
    ``failed``, or ``skipped`` by the runner because an input failed."""

    status: Literal["ran", "reused", "failed", "skipped"]
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    error: str = ""
    exit_code: int = 0
    by_other: bool = False  # reused because another runner computed it meanwhile


@dataclass(eq=False)
class StageRun:
    """One attempt at computing a stage: holds its lock, its temporary folder and its worker.

    Create it with :func:`claim`; then :meth:`start`, and :meth:`poll` (or :meth:`wait`) until it
    returns an :class:`Outcome`; :meth:`abort` stops it and leaves nothing behind.
    """

    stage: Stage
    root: Path
    lock: FileLock
    tmp: Path = field(init=False)
    worker: "FreshWorker | ForkedWorker | None" = None  # RanksWorker is a FreshWorker
    started: float = 0.0
    started_at: str = ""

    def __post_init__(self) -> None:
        self.tmp = self.root / "stages" / f".tmp-{self.stage.kind}-{self.stage.key}-{os.getpid()}"

    def start(self, env: Optional[dict] = None, forked: bool = False) -> None:
        """Start the worker: a fork of the pre-imported fork server when ``forked`` (the local
        executor), else a fresh interpreter (``forgetbench.stages.launch``); a multi-process
        stage's ranks under a fresh ``accelerate launch`` either way (``stages.ranks``)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        inputs = {name: str(dep.folder(self.root)) for name, dep in self.stage.inputs.items()}
        (self.tmp / REQUEST_FILE).write_text(
            json.dumps(
                {
                    "kind": self.stage.kind,
                    "label": self.stage.label,
                    "config": self.stage.config,
                    "inputs": inputs,
                },
                indent=1,
            )
        )
        self.started = time.monotonic()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        if self.stage.processes > 1:
            from forgetbench.stages.ranks import RanksWorker

            where = {"train": "method"}.get(self.stage.kind, self.stage.kind)
            self.worker = RanksWorker(
                self.tmp, env, self.stage.processes, self.stage.distributed, where
            )
            return
        if forked:
            try:
                self.worker = ForkedWorker(self.tmp, env)
                return
            except OSError:  # the fork server cannot start: a fresh interpreter still can
                pass
        self.worker = FreshWorker(self.tmp, env)

    def poll(self) -> Optional[Outcome]:
        if self.worker is None:  # interrupted while starting; abort() is on its way
            return None
        code = self.worker.poll()
        return None if code is None else self._finish(code)

    def wait(self) -> Outcome:
        return self._finish(self.worker.poll(block=True))

    def _finish(self, code: int) -> Outcome:
        seconds = round(time.monotonic() - self.started, 1)
        rss = self.worker.peak_rss_mib
        try:
            if code != 0:
                error = (
                    (self.tmp / ERROR_FILE).read_text().strip()
                    if (self.tmp / ERROR_FILE).is_file()
                    else f"worker exited with code {code}"
                )
                log = self._keep_failed_log()
                shutil.rmtree(self.tmp, ignore_errors=True)
                return Outcome(
                    "failed", seconds, rss, f"{error} (log: {log})", code if code > 0 else 1
                )
            meta = {
                "format": STAGE_FORMAT,
                "kind": self.stage.kind,
                "label": self.stage.label,
                "key": self.stage.key,
                "seconds": seconds,
                "peak_rss_mib": rss,
                "returncode": code,
                "inputs": {name: dep.key for name, dep in self.stage.inputs.items()},
                "host": socket.gethostname(),
                "python": sys.version.split()[0],
                "versions": package_versions(),
                "git_revision": git_revision(),
                "started": self.started_at,
                "finished": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            }
            (self.tmp / DONE_FILE).write_text(json.dumps(meta, indent=1))
            final = self.stage.folder(self.root)
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(self.tmp, final)
            return Outcome("ran", seconds, rss)
        finally:
            self.lock.release()

    def _keep_failed_log(self) -> Path:
        log = (
            self.root
            / "logs"
            / "failed"
            / f"{self.stage.kind}-{self.stage.folder(self.root).name}.log"
        )
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.tmp / LOG_FILE, log)
        except OSError:
            pass
        return log

    def abort(self) -> None:
        """Stop the worker (if any), delete the temporary folder, release the lock."""
        try:
            if self.worker is not None:
                self.worker.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            if self.lock.is_locked:
                self.lock.release()


class Claim(Enum):
    """Why :func:`claim` gave no :class:`StageRun` to start."""

    DONE = "done"  # the stage is complete: re-use it
    HELD = "held"  # another runner (or Ray task) is computing it now


def claim(stage: Stage, root: Path, block: bool = False) -> "StageRun | Claim":
    """Take ``stage`` for this process: a StageRun to start, ``Claim.DONE`` if it is already
    complete, or ``Claim.HELD`` if another runner holds it (only when ``block`` is False)."""
    if stage.is_done(root):
        return Claim.DONE
    lock = _lock(root, stage.kind, stage.key)
    try:
        lock.acquire(timeout=-1 if block else 0)
    except Timeout:
        return Claim.HELD
    if stage.is_done(root):  # finished by another runner while we waited
        lock.release()
        return Claim.DONE
    return StageRun(stage, root, lock)


def run_stage(stage: Stage, root: Path, env: Optional[dict] = None) -> Outcome:
    """Compute ``stage`` in this process's child unless it is complete (blocking); a Ray task
    runs exactly this."""
    claimed = claim(stage, root, block=True)
    if claimed is Claim.DONE:
        return Outcome("reused")
    try:
        claimed.start(env)
        return claimed.wait()
    except BaseException:
        claimed.abort()
        raise
