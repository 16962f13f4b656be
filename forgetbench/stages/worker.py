"""Runs one stage in its own process: ``python -m forgetbench.stages.worker <tmp folder>``.

A fresh process per stage returns all its memory (and, on GPUs, vLLM's and CUDA's) when it ends.
Its output goes to ``worker.log`` in the stage folder; a failure also leaves a one-line summary in
``error.txt``, which the runner reports.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from forgetbench.errors import ForgetbenchError

REQUEST_FILE = "request.json"
ERROR_FILE = "error.txt"
LOG_FILE = "worker.log"


def main(folder: str) -> int:
    entered = time.time()  # the runner stamps the stage's start; the gap is process start-up
    out = Path(folder)
    request = json.loads((out / REQUEST_FILE).read_text())
    try:
        from forgetbench import timing
        from forgetbench.models import set_threads

        set_threads()
        with timing.timed("import"):
            module = importlib.import_module(f"forgetbench.stages.{request['kind']}")
        with timing.timed("run"):
            module.run(request["config"], {k: Path(v) for k, v in request["inputs"].items()}, out)
        timing.write(out, entered=round(entered, 3))
    except ForgetbenchError as error:
        (out / ERROR_FILE).write_text(str(error))
        return error.exit_code
    except Exception as error:  # an unexpected failure: keep the traceback for the bug report
        traceback.print_exc()
        (out / ERROR_FILE).write_text(f"{type(error).__name__}: {error} (traceback in the log)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
