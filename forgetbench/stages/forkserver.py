"""The stage fork server: ``python -m forgetbench.stages.forkserver``, started by the runner.

It imports torch, transformers, TRL... once (``forgetbench.stages.preload``), then reads requests
(JSON lines on stdin: ``{"folder", "env", "cwd"}``), forks one stage worker per request and
answers ``{"started": pid}``; when a worker ends it answers ``{"ended": pid, "code", "rss_kib"}``
(the exit code as ``subprocess`` gives it, negative for a signal, and the peak memory from
``wait4``). It exits at the end of its input, and dies with the runner (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sys

from forgetbench.stages.launch import die_with_parent


def _child(request: dict, closing: list[int]) -> None:
    """In the fork: become what ``python -m forgetbench.stages.worker <folder>`` would be."""
    code = 1
    try:
        die_with_parent()  # the server; it dies with the runner
        if os.getppid() == 1:
            os._exit(1)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C reaches a stage
        for fd in closing:
            os.close(fd)
        from forgetbench.stages.worker import LOG_FILE, main

        log = os.open(
            os.path.join(request["folder"], LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        code = main(request["folder"])
    except BaseException:  # noqa: BLE001 - whatever happens, this process ends here
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    import forgetbench.stages.preload  # noqa: F401

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector below
    replies = sys.stdout.buffer

    def reply(message: dict) -> None:
        replies.write(json.dumps(message).encode() + b"\n")
        replies.flush()

    def reap() -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            reply(
                {
                    "ended": pid,
                    "code": os.waitstatus_to_exitcode(status),
                    "rss_kib": usage.ru_maxrss,
                }
            )

    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                os.read(wake_r, 4096)
                reap()
                continue
            chunk = os.read(0, 65536)
            if not chunk:  # the runner closed its end (or died): stop taking stages
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in filter(None, lines):
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    _child(json.loads(line), [wake_r, wake_w])
                reply({"started": pid})
        reap()


if __name__ == "__main__":
    serve()
