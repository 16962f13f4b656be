"""How results are shown and exported: rich tables on screen (the whole table, the before/after
pairs of a run or a matrix, the values at each attack step), Markdown and CSV text, files."""

from __future__ import annotations

import io
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from forgetbench.atomic import atomic_path, write_atomic
from forgetbench.errors import UsageError
from forgetbench.results.schema import sort_rows
from forgetbench.results.views import before_after

FORMATS = ("table", "csv", "parquet", "markdown")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".md": "markdown", ".markdown": "markdown"}


def _as_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def print_table(frame, title: str, console) -> None:
    """A rich table of ``frame``, whole: off a terminal it is as wide as it needs to be."""
    cells = [
        [_as_text(v).replace("\\|", "|") for v in row] for row in frame.itertuples(index=False)
    ]
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), no_wrap=True)
    for row in cells:
        table.add_row(*row)
    widths = [
        max([len(str(c))] + [len(row[i]) for row in cells]) for i, c in enumerate(frame.columns)
    ]
    needed = sum(widths) + 3 * len(widths) + 1
    (console if console.is_terminal else Console(width=max(needed, 80))).print(table)


def to_markdown(frame) -> str:
    lines = [
        "| " + " | ".join(map(str, frame.columns)) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_as_text(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def export(frame, fmt: str, out: Path | None) -> str | None:
    """Write ``frame`` to ``out`` (atomically) or return it as text for stdout."""
    if fmt == "parquet":
        if out is None:
            raise UsageError("--format parquet needs --out FILE (Parquet is binary)")
        with atomic_path(out) as tmp:
            frame.to_parquet(tmp, index=False)
        return None
    if fmt == "csv":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        text = buffer.getvalue()
    else:
        text = to_markdown(frame)
    if out is None:
        return text
    write_atomic(out, text)
    return None


def _fmt(value: float, low: float, high: float) -> str:
    if value != value:  # NaN: no such row
        return "-"
    return f"{value:.2f} [{low:.2f},{high:.2f}]"


def _change(pair: dict) -> str:
    return "-" if pair["change"] != pair["change"] else f"{pair['change']:+.2f}"


def before_after_table(rows: list[dict]) -> Table:
    """One cell's metrics before (P0) and after (P1) the attack, with their intervals."""
    import pandas as pd

    first = rows[0]
    table = Table(
        title=f"{first['method']} attacked by {first['attack']} (seed {first['seed']}): "
        "95% CI, Wilson for rates"
    )
    for column in ("eval", "judge", "metric", "better", "before (P0)", "after (P1)", "change", "n"):
        table.add_column(
            column,
            justify="left" if column in ("eval", "judge", "metric") else "right",
            no_wrap=True,
        )
    for pair in before_after(pd.DataFrame(rows)).to_dict("records"):
        table.add_row(
            pair["eval"],
            pair["judge"],
            pair["metric"],
            pair["direction"],
            _fmt(pair["before"], pair["before_low"], pair["before_high"]),
            _fmt(pair["after"], pair["after_low"], pair["after_high"]),
            _change(pair),
            f"{pair['n_before']}/{pair['n_after'] if pair['n_after'] else '-'}",
        )
    return table


def steps_table(rows: list[dict]) -> Table:
    """One line per (eval, metric), one column per scored attack step (step 0 = P0)."""
    steps = sorted({row["step"] for row in rows})
    table = Table(title="during the attack: value at each optimiser step")
    for column in ("eval", "metric", *(f"step {step}" for step in steps)):
        table.add_column(
            column, no_wrap=True, justify="left" if column in ("eval", "metric") else "right"
        )
    values = {(r["eval"], r["metric"], r["step"]): r["value"] for r in rows}
    for eval_name, metric in dict.fromkeys((r["eval"], r["metric"]) for r in rows):
        table.add_row(
            eval_name,
            metric,
            *(
                f"{values[(eval_name, metric, step)]:.3f}"
                if (eval_name, metric, step) in values
                else "-"
                for step in steps
            ),
        )
    return table


def matrix_table(rows: list[dict]) -> Table:
    """One line per (method, attack, seed, eval, judge, metric): before, after, change."""
    import pandas as pd

    table = Table(title="before (P0) and after (P1) the attack, 95% CI (Wilson for rates)")
    for column in (
        "method",
        "attack",
        "seed",
        "eval",
        "judge",
        "metric",
        "better",
        "before",
        "after",
        "change",
    ):
        table.add_column(
            column,
            no_wrap=True,
            justify="right" if column in ("seed", "before", "after", "change") else "left",
        )
    for pair in before_after(sort_rows(pd.DataFrame(rows))).to_dict("records"):
        table.add_row(
            *(str(pair[k]) for k in ("method", "attack", "seed", "eval", "judge", "metric")),
            pair["direction"],
            _fmt(pair["before"], pair["before_low"], pair["before_high"]),
            _fmt(pair["after"], pair["after_low"], pair["after_high"]),
            _change(pair),
        )
    return table


def print_run_tables(rows: list[dict], cells: int, console: Console) -> None:
    """What a run prints at its end: one cell's before/after table (and its values at each
    attack step, when it scored checkpoints), or a matrix's before/after table."""
    table = before_after_table(rows) if cells == 1 else matrix_table(rows)
    # off a terminal (a log, a pipe) nothing needs to fit a screen: print the table whole
    wide = (
        console
        if console.is_terminal
        else Console(file=console.file, width=max(console.width, 240), highlight=False)
    )
    wide.print(table)
    if cells == 1 and any(row["phase"] == "during" for row in rows):
        wide.print(steps_table(rows))
