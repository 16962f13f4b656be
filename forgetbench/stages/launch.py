"""How a stage's worker process is started: a fresh interpreter, or a fork of a pre-imported one.

Every stage runs in a process of its own, so its memory (and, on GPUs, vLLM's and CUDA's) goes
back when it ends and a crash takes only that stage. A fresh interpreter pays for importing torch,
transformers, TRL, peft and datasets each time: 5-7 s per stage on 2 cores, some 30 times in the
tiny main job. ``ForkedWorker`` instead asks a fork server (``forgetbench.stages.forkserver``,
started once per runner) that imported them once; each stage is a fork of it, started in tens of
milliseconds, still its own process with its own memory returned at exit.

The server imports third-party modules only (``forgetbench.stages.preload``): nothing that reads
forgetbench's settings or registers plugins, and each stage gets the environment the runner gives
it at start, as a fresh interpreter would. The server dies with the runner (even by SIGKILL) and
its stages die with it (``PR_SET_PDEATHSIG`` at both levels); a stage whose process dies, even
with the server, fails alone and is recomputed on re-run. (``multiprocessing``'s forkserver was
not used: it hands every child the fd that keeps the server alive, so a stage would outlive a
killed runner, and it re-imports the runner's main module in every child.)
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from forgetbench.stages.worker import LOG_FILE


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


WORKER_MODULE = "forgetbench.stages.worker"


class FreshWorker:
    """``python -m forgetbench.stages.worker <folder>``: a new interpreter (Ray tasks use it), or
    ``command`` (a multi-process stage's launcher, ``forgetbench.stages.ranks``)."""

    def __init__(self, folder: Path, env: Optional[dict], command: Optional[list] = None) -> None:
        self.peak_rss_mib = 0.0
        with open(folder / LOG_FILE, "ab") as log:
            # The worker's own output (TRL, tqdm, tracebacks) goes to the stage's log, not to
            # the runner's display; the log travels with the stage (or to logs/failed/).
            self.process = subprocess.Popen(
                command or [sys.executable, "-m", WORKER_MODULE, str(folder)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )

    def poll(self, block: bool = False) -> Optional[int]:
        """The exit code once the worker ended (negative: killed by that signal), else None."""
        pid, status, usage = os.wait4(self.process.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return None
        self.peak_rss_mib = round(usage.ru_maxrss / 1024, 1)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return self.process.returncode

    def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ForkServer:
    """The runner's side of ``forgetbench.stages.forkserver``: one server per runner process,
    started on first use. Requests and replies are JSON lines over the server's stdin/stdout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "forgetbench.stages.forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        os.set_blocking(self.process.stdout.fileno(), False)
        self.buffer = b""
        self.ended: dict[int, dict] = {}  # pid -> {"code": ..., "rss_kib": ...}
        self.running: set[int] = set()

    def alive(self) -> bool:
        return self.process.poll() is None

    def _read(self, timeout: Optional[float]) -> list[dict]:
        """Replies that arrived within ``timeout`` seconds (None: wait for at least one)."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return []
        chunk = os.read(self.process.stdout.fileno(), 65536)
        if not chunk:  # the server died: every stage it was running has ended with it
            self.process.wait()
            for pid in self.running:
                self.ended.setdefault(pid, {"code": 255, "rss_kib": 0})
            self.running.clear()
            return []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        replies = [json.loads(line) for line in lines if line]
        for reply in replies:
            if "ended" in reply:
                self.running.discard(reply["ended"])
                self.ended[reply["ended"]] = reply
        return replies

    def start(self, folder: Path, env: dict, cwd: str) -> int:
        request = {"folder": str(folder), "env": env, "cwd": cwd}
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        while True:
            for reply in self._read(None):
                if "started" in reply:
                    self.running.add(reply["started"])
                    return reply["started"]
            if not self.alive():
                raise OSError("the stage fork server died while starting a stage")

    def poll(self, pid: int, block: bool) -> Optional[dict]:
        while pid not in self.ended:
            self._read(None if block else 0)
            if not block:
                break
        return self.ended.pop(pid, None)

    def close(self) -> None:
        if self.alive():
            self.process.stdin.close()  # the server exits at end of input
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_server: Optional[ForkServer] = None


def fork_server() -> ForkServer:
    """This runner's fork server, (re)started when missing or dead."""
    global _server
    if _server is None or not _server.alive():
        _server = ForkServer()
        atexit.register(_server.close)
    return _server


class ForkedWorker:
    """The worker as a fork of the runner's pre-imported fork server (the local executor's)."""

    def __init__(self, folder: Path, env: Optional[dict]) -> None:
        self.server = fork_server()
        self.pid = self.server.start(folder, dict(os.environ if env is None else env), os.getcwd())
        self.code: Optional[int] = None
        self.peak_rss_mib = 0.0

    def poll(self, block: bool = False) -> Optional[int]:
        if self.code is None:
            ended = self.server.poll(self.pid, block)
            if ended is not None:
                self.code = ended["code"]
                self.peak_rss_mib = round(ended["rss_kib"] / 1024, 1)
        return self.code

    def stop(self) -> None:
        if self.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.poll(block=True)
