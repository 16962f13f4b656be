"""How much a matrix shares, and how fast a finished matrix re-runs.

    FORGETBENCH_THREADS=2 python benchmarks/matrix_reuse.py [--output-dir DIR] [--set ...]

Plans and runs a 2-method x 2-attack `smoke` matrix (grpo, frpo) x (alpaca, alpaca at a 10x
learning rate, a matrix-file variant) with the real embedded model, then runs the identical
command again. Prints the stages planned and computed per kind (policies trained must be 2, not
4: each (method, seed) policy is shared by both attacks), what the same four cells would cost run
one by one without sharing, and the wall time of the second run (target <= 10 s: no training, no
generation). Exits non-zero if a target is missed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATRIX = """\
# 2 methods x 2 attacks on the smoke preset
preset: smoke
methods: [grpo, frpo]
attacks:
  - alpaca
  - {label: alpaca-lr1e-4, plugin: alpaca, set: {learning_rate: 1.0e-4}}
"""
TARGET_SECONDS = 10.0


def run(file: Path, out: Path, overrides: list[str]) -> tuple[float, str]:
    command = [sys.executable, "-m", "forgetbench", "matrix", str(file), "--output-dir", str(out)]
    for override in overrides:
        command += ["--set", override]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(
            f"matrix run failed ({result.returncode}):\n{result.stdout[-2000:]}"
            f"\n{result.stderr[-2000:]}"
        )
    return seconds, result.stdout


def computed_by_kind(stdout: str, matrix) -> dict[str, int]:
    names = {matrix.name(stage): stage.kind for stage in matrix.stages}
    counts: dict[str, int] = {}
    for name in re.findall(r"^\[\d+/\d+\] (.+?): done in", stdout, flags=re.M):
        counts[names[name]] = counts.get(names[name], 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the matrix goes (default: a fresh temporary folder)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="extra --set for every cell"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from forgetbench.matrix import make_spec
    from forgetbench.planner import ordered, plan_cell, plan_matrix

    out = args.output_dir or Path(tempfile.mkdtemp(prefix="fb-matrix-reuse-"))
    out.parent.mkdir(parents=True, exist_ok=True)
    file = out.parent / f"{out.name}.matrix.yaml"
    file.write_text(MATRIX)
    matrix = plan_matrix(make_spec(file=file, overrides=tuple(args.overrides)))
    planned = matrix.counts()
    unshared: dict[str, int] = {}
    for cell_plan in matrix.cells:  # the same cells, each planned on its own
        alone = plan_cell(cell_plan.cell)
        for stage in ordered(alone.targets()):
            unshared[stage.kind] = unshared.get(stage.kind, 0) + 1

    first_seconds, first = run(file, out, args.overrides)
    ran = computed_by_kind(first, matrix)
    second_seconds, second = run(file, out, args.overrides)
    ran_again = computed_by_kind(second, matrix)

    print(
        f"matrix: {len(matrix.cells)} cells (grpo, frpo) x (alpaca, alpaca-lr1e-4), preset smoke"
        f" -> {out}"
    )
    print(
        f"{'stage kind':12s} {'unshared':>9s} {'planned':>8s} {'run (1st)':>10s} {'run (2nd)':>10s}"
    )
    for kind in planned:
        print(
            f"{kind:12s} {unshared.get(kind, 0):9d} {planned[kind]:8d} {ran.get(kind, 0):10d} "
            f"{ran_again.get(kind, 0):10d}"
        )
    print(
        f"{'total':12s} {sum(unshared.values()):9d} {sum(planned.values()):8d} "
        f"{sum(ran.values()):10d} {sum(ran_again.values()):10d}"
    )
    print(f"policies trained: {ran.get('train', 0)} (4 cells, 2 methods)")
    print(
        f"first run: {first_seconds:.1f} s; second identical run: {second_seconds:.2f} s "
        f"(target <= {TARGET_SECONDS:.0f} s)"
    )
    ok = (
        planned.get("train") == 2
        and sum(ran_again.values()) == 0
        and second_seconds <= TARGET_SECONDS
    )
    if ran and ran.get("train") != 2:
        ok = False
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
