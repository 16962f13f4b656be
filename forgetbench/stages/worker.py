"""Runs one stage in its own process: ``python -m forgetbench.stages.worker <tmp folder>``.

A fresh process per stage returns all its memory (and, on GPUs, vLLM's and CUDA's) when it ends.
Its output goes to ``worker.log`` in the stage folder; a failure also leaves a one-line summary in
``error.txt``, which the runner reports.

A multi-process stage runs this module once per rank under ``accelerate launch``
(``forgetbench.stages.launch``): every rank computes, rank 0 alone writes the stage's files
(``forgetbench.training.distributed.is_main``), and the first rank to fail writes ``error.txt``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from forgetbench.errors import ForgetbenchError
from forgetbench.training import distributed

REQUEST_FILE = "request.json"
ERROR_FILE = "error.txt"
LOG_FILE = "worker.log"


def main(folder: str) -> int:
    entered = time.time()  # the runner stamps the stage's start; the gap is process start-up
    out = Path(folder)
    request = json.loads((out / REQUEST_FILE).read_text())
    ranks = distributed.world_size()
    if ranks > 1:
        from forgetbench.stages.launch import die_with_parent

        die_with_parent()  # a rank never outlives its launcher, even one killed by SIGKILL
    try:
        from forgetbench import timing
        from forgetbench.models import set_threads

        set_threads()
        with timing.timed("import"):
            module = importlib.import_module(f"forgetbench.stages.{request['kind']}")
        with timing.timed("run"):
            module.run(request["config"], {k: Path(v) for k, v in request["inputs"].items()}, out)
        if distributed.is_main():
            timing.write(out, entered=round(entered, 3), **({"ranks": ranks} if ranks > 1 else {}))
    except ForgetbenchError as error:
        _report(out, str(error), ranks)
        return error.exit_code
    except Exception as error:  # an unexpected failure: keep the traceback for the bug report
        traceback.print_exc()
        _report(out, f"{type(error).__name__}: {error} (traceback in the log)", ranks)
        return 1
    return 0


def _report(out: Path, message: str, ranks: int) -> None:
    """The stage's one-line error. Of several ranks the first to fail is the cause (the launcher
    then stops the others, whose errors are consequences), so an existing file is kept."""
    if ranks == 1:
        (out / ERROR_FILE).write_text(message)
        return
    try:
        with open(out / ERROR_FILE, "x") as file:
            file.write(f"rank {distributed.rank()} of {ranks}: {message}")
    except FileExistsError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
