"""Seconds per warm-up (SFT) step under two settings, side by side on the same preset and seed.

    python benchmarks/warmup_step_time.py --a warmup.fused_lm_head=true \
        --b warmup.fused_lm_head=false [--steps 6] [--repeats 3] [--preset tiny]

The warm-up stage's own code (forgetbench/stages/warmup.py) on the preset's data, ``--steps``
optimiser steps a run; both settings see the same rows in the same order (same seed). The runs
alternate (A B, B A, ...) so machine drift hits both; the first step of each run is a warm-up
and is not timed. Prints the median seconds per step of each and B's ratio to A with a
bootstrap 95% interval (benchmarks/method_step_time.py's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from method_step_time import ratio_interval

from forgetbench.cell import resolve
from forgetbench.models import set_threads
from forgetbench.stages import warmup


def step_times(preset: str, overrides: list[str], steps: int, out: Path) -> list[float]:
    cell = resolve("frpo", "alpaca", preset, [*overrides, f"warmup.max_steps={steps}"], seed=0)
    warmup.run(cell.resolved, {}, out)
    history = json.loads((out / "log_history.json").read_text())
    return [entry["step_seconds"] for entry in history if "step_seconds" in entry][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", action="append", default=[], help="setting of A (repeatable)")
    parser.add_argument("--b", action="append", default=[], help="setting of B (repeatable)")
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the first untimed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternated")
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    threads = set_threads()
    variants = {"A": args.a, "B": args.b}
    times: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeats):
            for name in ("A", "B") if run % 2 == 0 else ("B", "A"):
                out = Path(tmp) / f"{run}{name}"
                times[name] += step_times(args.preset, variants[name], args.steps, out)
                last = times[name][-(args.steps - 1) :]
                print(f"run {run + 1} {name}: " + " ".join(f"{t:.2f}" for t in last), flush=True)
    print(f"\nconfig: preset {args.preset}, threads {threads}, {args.steps} steps per run")
    for name in ("A", "B"):
        values = times[name]
        low, high = ratio_interval(values, times["A"])
        print(
            f"{name} {' '.join(variants[name]) or '(preset)'}: median "
            f"{statistics.median(values):.2f} s/step over {len(values)} steps "
            f"(min {min(values):.2f}, max {max(values):.2f}), ratio to A "
            f"{statistics.median(values) / statistics.median(times['A']):.3f} "
            f"[95% CI {low:.3f}, {high:.3f}]"
        )


if __name__ == "__main__":
    main()
