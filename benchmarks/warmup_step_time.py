"""Seconds per warm-up (SFT) step under two settings, side by side on the same preset and seed.

    python benchmarks/warmup_step_time.py --a warmup.fused_lm_head=true \
        --b warmup.fused_lm_head=false [--steps 6] [--repeats 3] [--preset tiny]
    python benchmarks/warmup_step_time.py --stage attack --a attack.balanced_micro_batches=1 \
        --b attack.balanced_micro_batches=2

The warm-up stage's own code (forgetbench/stages/warmup.py) on the preset's data, or with
``--stage attack`` the SFT attack's (forgetbench/attacks.py ``run_attack``, the preset's attack,
from the base model), ``--steps`` optimiser steps a run; both settings see the same rows in the
same order (same seed). The runs alternate (A B, B A, ...) so machine drift hits both; the first
step of each run is a warm-up and is not timed. Prints the median seconds per step of each and
B's ratio to A with a bootstrap 95% interval (benchmarks/method_step_time.py's), and the ratio of
their totals over the same steps (steps whose rows differ in length differ in time, so where a
setting saves more on long rows the totals say what a stage saves) with a bootstrap 95% interval
over the paired steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from method_step_time import ratio_interval

from forgetbench import registry
from forgetbench.attacks import run_attack
from forgetbench.cell import resolve
from forgetbench.models import resolve_model, set_threads
from forgetbench.stages import warmup


def step_times(stage: str, preset: str, overrides: list[str], steps: int, out: Path) -> list[float]:
    # an attack's checkpoints are scored by other stages, and its preset's may lie past --steps
    extra = ["attack.checkpoint_every=0"] if stage == "attack" else []
    cell = resolve(
        "frpo", "alpaca", preset, [*overrides, f"{stage}.max_steps={steps}", *extra], seed=0
    )
    if stage == "warmup":
        warmup.run(cell.resolved, {}, out)
    else:
        attack = cell.resolved["attack"]
        settings = registry.get("attack", attack["name"]).build_config(attack["config"])
        run_attack(settings, resolve_model(cell.resolved["model"]), out, seed=0)
    history = json.loads((out / "log_history.json").read_text())
    return [entry["step_seconds"] for entry in history if "step_seconds" in entry][1:]


def total_ratio_interval(values: list[float], reference: list[float], resamples: int = 5000):
    """sum(values) / sum(reference) over paired steps (the same rows), with a percentile-bootstrap
    95% interval resampling the pairs (seed 0)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = np.asarray(values), np.asarray(reference)
    picks = rng.integers(0, len(a), (resamples, len(a)))
    ratios = a[picks].sum(axis=1) / b[picks].sum(axis=1)
    return float(a.sum() / b.sum()), *np.percentile(ratios, [2.5, 97.5]).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", action="append", default=[], help="setting of A (repeatable)")
    parser.add_argument("--b", action="append", default=[], help="setting of B (repeatable)")
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the first untimed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternated")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--stage", choices=("warmup", "attack"), default="warmup")
    args = parser.parse_args()
    threads = set_threads()
    variants = {"A": args.a, "B": args.b}
    times: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeats):
            for name in ("A", "B") if run % 2 == 0 else ("B", "A"):
                out = Path(tmp) / f"{run}{name}"
                times[name] += step_times(args.stage, args.preset, variants[name], args.steps, out)
                last = times[name][-(args.steps - 1) :]
                print(f"run {run + 1} {name}: " + " ".join(f"{t:.2f}" for t in last), flush=True)
    print(
        f"\nconfig: {args.stage}, preset {args.preset}, threads {threads}, "
        f"{args.steps} steps per run"
    )
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
    # times[A][i] and times[B][i] are the same run number's same step: the same rows.
    ratio, low, high = total_ratio_interval(times["B"], times["A"])
    print(
        f"total over the same {len(times['A'])} steps: A {sum(times['A']):.1f} s, "
        f"B {sum(times['B']):.1f} s, ratio {ratio:.3f} [95% CI {low:.3f}, {high:.3f}]"
    )


if __name__ == "__main__":
    main()
