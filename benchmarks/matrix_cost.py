"""Predict a matrix's wall time from one measured cell, and compare with a finished matrix.

    python benchmarks/matrix_cost.py --cell main_job.json --methods grpo,frpo,cgpo \
        --attacks alpaca,alpaca-highlr --seeds 0,1,2 [--preset tiny] [--measured DIR]

``--cell`` is the ``--json`` of ``benchmarks/main_job.py`` (one cell's stages with their wall
times). The matrix is planned as ``forgetbench matrix`` plans it, so shared stages (the warm-up per
seed, a method's policy for all its attacks, P0's evaluations) count once. Each planned stage is
priced at the measured stage most like it: same kind, same eval, same role (P0, a checkpoint, the
final policy; KL of P0 from itself apart); a training stage of another method at the measured
method's (GRPO-family methods run the same passes per step: tests/test_method_training.py), an
attack at the measured attack's when it has the same number of steps. Stages run one at a time
(``--jobs 1``), so the prediction is their sum plus the runner's own time. ``--measured`` reads a
finished matrix's ``stage.json`` files and prints measured against predicted per stage kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def role(label: str) -> str:
    """'generate harmbench step 13' -> 'generate harmbench during'; train/attack/warmup -> kind."""
    words = label.split()
    kind = words[0]
    if kind in ("warmup", "train", "attack"):
        return kind
    where = "before" if "before" in words else "after" if "after" in words else "during"
    return " ".join([kind, words[1], where, *(words[-1:] if kind == "judge" else [])])


def prices(cell: dict) -> dict[str, float]:
    by_role: dict[str, list[float]] = {}
    for row in cell["rows"]:
        by_role.setdefault(role(row["stage"]), []).append(row["wall"])
    return {name: statistics.median(values) for name, values in by_role.items()}


def main() -> None:
    import sys

    from forgetbench.matrix import make_spec, parse_names, parse_seeds
    from forgetbench.planner import plan_matrix

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", type=Path, required=True)
    parser.add_argument("--methods", default="grpo,frpo,cgpo")
    parser.add_argument("--attacks", default="alpaca,alpaca-highlr")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--measured", type=Path, default=None)
    args = parser.parse_args()
    cell = json.loads(args.cell.read_text())
    price = prices(cell)
    outside = (cell.get("job_wall") or 0) - sum(row["wall"] for row in cell["rows"])
    matrix = plan_matrix(
        make_spec(
            methods=parse_names(args.methods, "method"),
            attacks=parse_names(args.attacks, "attack"),
            seeds=parse_seeds(args.seeds),
            preset=args.preset,
        )
    )
    predicted: dict[str, list[float]] = {}
    for stage in matrix.stages:
        name = role(stage.label)
        if name not in price:
            sys.exit(
                f"matrix_cost: the measured cell has no stage like {stage.label!r}; measure "
                "a cell with that eval"
            )
        predicted.setdefault(stage.kind, []).append(price[name])
    measured: dict[str, list[float]] = {}
    if args.measured:
        for meta in (args.measured / "stages").glob("*/*/stage.json"):
            stage = json.loads(meta.read_text())
            measured.setdefault(stage["kind"], []).append(stage["seconds"])
    cells = len(matrix.cells)
    print(
        f"{args.methods} x {args.attacks} x seeds {args.seeds} ({args.preset}): {cells} cells, "
        f"{len(matrix.stages)} stages"
    )
    print(
        f"{'kind':10s} {'stages':>7s} {'predicted s':>12s}"
        + (f" {'measured stages':>16s} {'measured s':>11s}" if measured else "")
    )
    for kind, values in predicted.items():
        line = f"{kind:10s} {len(values):7d} {sum(values):12.0f}"
        if measured:
            line += f" {len(measured.get(kind, [])):16d} {sum(measured.get(kind, [])):11.0f}"
        print(line)
    total = sum(sum(v) for v in predicted.values()) + outside
    print(
        f"predicted wall time: {total:.0f} s ({total / 3600:.2f} h), of which the runner outside "
        f"stages {outside:.0f} s"
    )
    if measured:
        spent = sum(sum(v) for v in measured.values())
        print(
            f"measured (sum of stage walls): {spent:.0f} s ({spent / 3600:.2f} h); "
            f"ratio measured / predicted {spent / (total - outside):.2f}"
        )


if __name__ == "__main__":
    main()
