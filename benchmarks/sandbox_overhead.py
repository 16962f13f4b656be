"""What the kernel walls cost: MBPP's 500 reference solutions, python-guards vs namespaces.

    python benchmarks/sandbox_overhead.py [--repeats 3] [--limit N]

Builds each MBPP test task's program exactly as the code_exec judge does (the reference code in a
fenced block, the task's test setup and asserts) and runs it through ``run_python`` with
``isolation="python-guards"`` (the sandbox before kernel isolation) and ``"namespaces"``
(bubblewrap, the default), one program at a time, the two modes interleaved per program (their
order alternating) so that both see the same machine load. Per repeat it prints the mean wall
time per program of each mode (start to cleanup, as the judge waits for it), the overhead per
program (namespaces - guards, ms; paired on the same programs in the same run) and the ratio;
then the mean over repeats with a 95% t interval. Exits non-zero if any reference solution fails
in either mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from forgetbench import registry
from forgetbench.judges.code_exec import build_program
from forgetbench.sandbox import check_isolation, run_python
from forgetbench.tasks import load_rows

ROOT = Path(__file__).resolve().parents[1]
MODES = ("python-guards", "namespaces")


def programs(limit: int | None) -> list[str]:
    plugin = registry.get("eval", "mbpp")
    rows = load_rows(plugin.build_config(plugin.target).dataset)
    with open(ROOT / "tasks" / "data" / "mbpp" / "mbpp_test.jsonl", encoding="utf-8") as handle:
        code = {str(row["task_id"]): row["code"] for row in map(json.loads, handle)}
    built = [build_program(f"```python\n{code[str(row['id'])]}\n```", row) for row in rows]
    return built[:limit] if limit else built


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t interval over repeats."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N programs only")
    args = parser.parse_args()
    check_isolation()  # one line naming the fix when bwrap cannot run here
    sources = programs(args.limit)
    failures = 0
    per_repeat = {"guards_ms": [], "namespaces_ms": [], "overhead_ms": [], "ratio": []}
    print(f"{len(sources)} MBPP reference programs, {args.repeats} repeats, one at a time")
    for repeat in range(args.repeats):
        seconds = {mode: [] for mode in MODES}
        for index, source in enumerate(sources):
            order = MODES if (index + repeat) % 2 == 0 else MODES[::-1]
            for mode in order:
                started = time.perf_counter()
                result = run_python(source, isolation=mode)
                seconds[mode].append(time.perf_counter() - started)
                if not result.passed:
                    failures += 1
                    print(f"  FAILED ({mode}) program {index}: {result.reason}")
        guards = statistics.fmean(seconds["python-guards"]) * 1000
        namespaces = statistics.fmean(seconds["namespaces"]) * 1000
        for key, value in (
            ("guards_ms", guards),
            ("namespaces_ms", namespaces),
            ("overhead_ms", namespaces - guards),
            ("ratio", namespaces / guards),
        ):
            per_repeat[key].append(value)
        print(
            f"repeat {repeat + 1}: python-guards {guards:.1f} ms/program, namespaces "
            f"{namespaces:.1f} ms/program, overhead {namespaces - guards:+.1f} ms, ratio "
            f"{namespaces / guards:.3f}",
            flush=True,
        )
    print(f"over {args.repeats} repeats (mean, 95% t interval):")
    for key, label, unit in (
        ("guards_ms", "python-guards per program", " ms"),
        ("namespaces_ms", "namespaces per program", " ms"),
        ("overhead_ms", "overhead per program", " ms"),
        ("ratio", "ratio namespaces / python-guards", ""),
    ):
        mean, low, high = interval(per_repeat[key])
        print(f"  {label}: {mean:.3f}{unit} [{low:.3f}, {high:.3f}]")
    print(f"reference solutions failing: {failures} (of {len(sources) * 2 * args.repeats} runs)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
