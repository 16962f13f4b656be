"""The two ways a stage's worker starts (forgetbench.stages.launch): a fresh interpreter and a fork
of the pre-imported fork server. Both must behave the same: the environment given at start, the
exit code and error line, the log, and no process left behind when stopped or orphaned."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from forgetbench.stages.launch import ForkedWorker, FreshWorker
from forgetbench.stages.worker import ERROR_FILE, LOG_FILE, REQUEST_FILE


def stage_folder(tmp_path, kind="judge"):
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / REQUEST_FILE).write_text(
        json.dumps({"kind": kind, "label": "x", "config": {}, "inputs": {}})
    )
    return folder


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it has ended, its parent just has not reaped it yet.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("worker_class", [FreshWorker, ForkedWorker])
def test_the_worker_runs_with_the_environment_given_at_start(tmp_path, worker_class):
    folder = stage_folder(tmp_path)
    # The fork server was started with this process's environment; the stage must see its own.
    env = {**os.environ, "FORGETBENCH_THREADS": "not-a-number"}
    worker = worker_class(folder, env)
    code = worker.poll(block=True)
    assert code == 2
    assert (
        "FORGETBENCH_THREADS='not-a-number' is not a positive integer"
        in (folder / ERROR_FILE).read_text()
    )


@pytest.mark.parametrize("worker_class", [FreshWorker, ForkedWorker])
def test_a_failing_stage_reports_its_error_and_logs_the_traceback(tmp_path, worker_class):
    folder = stage_folder(tmp_path, kind="no_such_kind")
    worker = worker_class(folder, None)
    assert worker.poll(block=True) == 1
    assert "ModuleNotFoundError" in (folder / ERROR_FILE).read_text()
    assert "Traceback" in (folder / LOG_FILE).read_text()
    assert worker.peak_rss_mib > 0


def hanging_stage(tmp_path):
    """A stage folder whose request is a FIFO nobody writes: its worker blocks reading it."""
    folder = tmp_path / "stage"
    folder.mkdir()
    os.mkfifo(folder / REQUEST_FILE)
    return folder


def test_a_stopped_forked_worker_is_gone(tmp_path):
    worker = ForkedWorker(hanging_stage(tmp_path), None)
    pid = worker.pid
    time.sleep(0.5)
    assert worker.poll() is None and alive(pid)
    worker.stop()
    assert worker.poll() == -signal.SIGTERM and not alive(pid)


def test_forked_workers_die_with_their_runner(tmp_path):
    """kill -9 of the runner: the fork server sees its parent gone and exits; the stage process
    then gets its parent-death signal. Nothing is left running."""
    runner = textwrap.dedent(f"""
        import pathlib, time
        from forgetbench.stages.launch import ForkedWorker
        worker = ForkedWorker(pathlib.Path({str(hanging_stage(tmp_path))!r}), None)
        print(worker.pid, flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True)
    pid = int(process.stdout.readline())
    time.sleep(0.5)
    assert alive(pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), "the forked stage outlived its runner"
