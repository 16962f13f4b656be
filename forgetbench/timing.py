"""Where a stage process spends its wall time: model loads, saves and the rest.

A stage's ``stage.json`` holds its wall time; this module adds the part of it that is not the
stage's arithmetic, so ``benchmarks/main_job.py`` can show the gap between a stage's time and what
its FLOPs need. Code wraps a phase in ``with timed("load"):``; the worker writes the totals to
``timings.json`` in the stage folder. Seconds only: recording costs microseconds.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

TIMINGS_FILE = "timings.json"
_seconds: dict[str, float] = {}


@contextmanager
def timed(phase: str):
    begin = time.perf_counter()
    try:
        yield
    finally:
        _seconds[phase] = _seconds.get(phase, 0.0) + time.perf_counter() - begin


def write(folder: Path, **extra: float) -> None:
    """Write this process's phase totals (plus ``extra`` figures) to ``folder/timings.json``."""
    figures = {**{k: round(v, 3) for k, v in _seconds.items()}, **extra}
    (folder / TIMINGS_FILE).write_text(json.dumps(figures, indent=1))
