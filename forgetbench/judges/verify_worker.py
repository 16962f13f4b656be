"""math-verify with a hard time limit per answer: a child process the parent can kill.

math-verify's own timeout is a SIGALRM in the main thread: it cannot fire in another thread (a
judge stage's or a trainer's), nor inside a C call (a big-integer power such as ``9^{9^{9^9}}``
that sympy evaluates). So each (reference, answer) pair is parsed and compared in this child
process (``python -m forgetbench.judges.verify_worker``, JSON lines on stdin/stdout), with
math-verify's timeout inside it; the parent waits ``limit_s`` and otherwise kills the child, starts
another, and reports the answer as timed out. The child is started once and reused, so the cost
per answer is one round trip.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Optional

TIMED_OUT = "math-verify timed out"  # the reason of a verdict the time limit ended


def _check(request: dict) -> dict:
    """In the child: parse both sides as math-verify does and compare them."""
    import math_verify

    seconds = request["timeout_s"]
    start = time.monotonic()
    gold = math_verify.parse("\\boxed{" + request["gold"] + "}", parsing_timeout=seconds)
    if not gold:
        return {"status": "bad_reference"}
    answer = math_verify.parse("\\boxed{" + request["answer"] + "}", parsing_timeout=seconds)
    correct = math_verify.verify(
        gold, answer, float_rounding=request["float_rounding"], timeout_seconds=seconds
    )
    # math-verify answers False when its own alarm fires: that is a timeout, not a wrong answer.
    if not correct and time.monotonic() - start >= seconds:
        return {"status": "timed_out"}
    return {"status": "ok", "correct": bool(correct)}


def serve() -> None:
    import logging

    logging.disable(logging.CRITICAL)  # math-verify logs every timeout; the parent reports them
    for line in sys.stdin:
        try:
            reply = _check(json.loads(line))
        except Exception as error:  # noqa: BLE001 - any failure is this answer's, not the run's
            reply = {"status": "error", "error": f"{type(error).__name__}: {error}"[:300]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class Verifier:
    """The parent's side: ``check(gold, answer) -> (correct or None, reason)``."""

    def __init__(self, timeout_s: int, float_rounding: int):
        self.timeout_s, self.float_rounding = timeout_s, float_rounding
        # math-verify's alarm fires per parse and per comparison; the kill comes after all three.
        self.limit_s = 3 * timeout_s + 2
        self.process: Optional[subprocess.Popen] = None
        self.warm = False  # the child has answered once (its imports are done)

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "forgetbench.judges.verify_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        return self.process

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process, self.warm = None, False

    def check(self, gold: str, answer: str) -> tuple[Optional[bool], str]:
        """Whether ``answer`` equals ``gold``: True / False, or None when the reference cannot be
        parsed or the check failed; the reason says which (``TIMED_OUT`` first on a timeout)."""
        process = self._start()
        request = {
            "gold": gold,
            "answer": answer,
            "timeout_s": self.timeout_s,
            "float_rounding": self.float_rounding,
        }
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        # The first answer also waits for the child's imports (sympy, math-verify).
        ready, _, _ = select.select(
            [process.stdout], [], [], self.limit_s + (0 if self.warm else 60)
        )
        line = process.stdout.readline() if ready else ""
        if not line:
            self.close()
            return False, f"{TIMED_OUT} (no answer within {self.limit_s} s; the check was killed)"
        self.warm = True
        reply = json.loads(line)
        if reply["status"] == "timed_out":
            return False, f"{TIMED_OUT} (math-verify's own {self.timeout_s} s limit)"
        if reply["status"] == "bad_reference":
            return None, f"math-verify cannot parse the reference {gold!r}"
        if reply["status"] == "error":
            return None, f"math-verify failed: {reply['error']}"
        return reply["correct"], ""


if __name__ == "__main__":
    serve()
