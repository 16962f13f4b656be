"""The ``FORGETBENCH_*`` environment variables, read and checked in one place.

The command line checks them all before any work (``check``), so a bad value is one line naming
the variable and the fix, never a failure inside a stage process minutes later. Stage processes
read them through the same functions.

- ``FORGETBENCH_THREADS``: torch threads per stage process (a positive integer; default: all cores).
- ``FORGETBENCH_OUTPUT``: the default output folder (default ``./runs``).
- ``FORGETBENCH_CACHE``: where converted models are cached (default ``~/.cache/forgetbench``).
- ``FORGETBENCH_TASKS``: folders laid out like ``tasks/`` (``os.pathsep``-separated) whose tasks
  are added to the built-in ones (``forgetbench.task_sources``).
- ``FORGETBENCH_CPU_BF16``: ``1`` or ``0`` says whether this CPU does bfloat16 in hardware, which
  ``precision: auto`` and generation ``dtype: auto`` follow (default: the CPU's flags,
  ``forgetbench.devices.native_bf16``). ``0`` keeps auto in float32 on every CPU, so numbers
  compare across machines (the test suite sets it).
- ``FORGETBENCH_TASK_FILES``: set by forgetbench itself for its stage processes (the task YAML
  files named on the command line); not a user setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from forgetbench.errors import UsageError

THREADS = "FORGETBENCH_THREADS"
OUTPUT = "FORGETBENCH_OUTPUT"
CACHE = "FORGETBENCH_CACHE"
TASKS = "FORGETBENCH_TASKS"
CPU_BF16 = "FORGETBENCH_CPU_BF16"


def _set(name: str) -> Optional[str]:
    """The variable's value, or None when unset; set but empty is an error (a typo'd export)."""
    value = os.environ.get(name)
    if value is not None and not value.strip():
        raise UsageError(f"{name} is set but empty; give it a value or unset it (unset {name})")
    return value


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads() -> int:
    """Torch threads for a stage: ``$FORGETBENCH_THREADS``, else every core this process may use."""
    value = _set(THREADS)
    if value is None:
        return cores()
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UsageError(
            f"{THREADS}={value!r} is not a positive integer; set it to the number of "
            f"cores a stage may use (this machine has {cores()}) or unset it"
        )
    return number


def threads_set() -> bool:
    return _set(THREADS) is not None


def output_dir() -> Path:
    return Path(_set(OUTPUT) or "runs")


def cache_dir() -> Path:
    value = _set(CACHE)
    path = Path(value) if value else Path.home() / ".cache" / "forgetbench"
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"{CACHE}={str(path)!r} is a file, not a folder; point it at a folder "
            "(created if missing) or unset it"
        )
    return path


def task_folders() -> list[Path]:
    """``$FORGETBENCH_TASKS``'s folders (``os.pathsep``-separated), each an existing folder, or a
    one-line error naming the one that is not."""
    value = _set(TASKS)
    if value is None:
        return []
    folders = []
    for part in value.split(os.pathsep):
        path = Path(part)
        if not part.strip() or not path.is_dir():
            what = "is a file, not a folder" if path.exists() and part.strip() else "does not exist"
            raise UsageError(
                f"{TASKS}: {part!r} {what}; point it at folders laid out like tasks/ "
                f"(evals/, attacks/, train/), separated by {os.pathsep!r}, or unset "
                "it"
            )
        folders.append(path)
    return folders


def cpu_bf16() -> Optional[bool]:
    """``$FORGETBENCH_CPU_BF16`` as a bool, or None when unset (the CPU's flags decide)."""
    value = _set(CPU_BF16)
    if value is None:
        return None
    if value.strip() not in ("0", "1"):
        raise UsageError(
            f"{CPU_BF16}={value!r} is not 0 or 1; set 1 (bf16 in hardware), 0 (float32) or "
            "unset it to follow the CPU's flags"
        )
    return value.strip() == "1"


def check() -> None:
    """Every variable, before any work."""
    threads()
    cpu_bf16()
    output_dir()
    cache_dir()
    task_folders()
