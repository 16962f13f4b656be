"""Views of the long table: the current rows of each cell, before/after pairs, filters and the
columns a summary shows."""

from __future__ import annotations

import math

from forgetbench.errors import UsageError
from forgetbench.results.schema import ROW_KEY

SUMMARY_COLUMNS = [
    "method",
    "attack",
    "seed",
    "phase",
    "step",
    "eval",
    "judge",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "direction",
]
# What names a cell: its tables are compared to pick the current one.
# What names a cell: its tables are compared to pick the current one.
CELL_KEY = ("preset", "method", "attack", "seed")
PAIR_KEY = ("method", "attack", "seed", "eval", "judge", "metric")


def current(frame):
    """The current rows, and a note on what was left out (None when nothing was).

    A cell (preset, method, attack, seed) re-run after a config or eval-version change leaves a
    second table beside the first; its current table is the last one written (the last command
    run on it). Rows of older tables of the same cell are stale and left out."""
    key = [c for c in CELL_KEY if c in frame.columns]
    if "config_hash" not in frame.columns or "table_written" not in frame.columns or not key:
        return frame, None
    written = frame.groupby([*key, "config_hash"], dropna=False)["table_written"].max()
    latest = written.groupby(level=list(range(len(key))), dropna=False).transform("max")
    keep = written[written == latest].reset_index()[[*key, "config_hash"]]
    merged = frame.merge(keep.assign(_keep=True), on=[*key, "config_hash"], how="left")
    stale = merged["_keep"].isna().to_numpy()
    if not stale.any():
        return frame, None
    left = frame[stale]
    cells = left.groupby(key, dropna=False).ngroups
    note = (
        f"left out {len(left)} stale row(s) of {cells} cell(s) re-run since with another "
        f"config (config {', '.join(sorted(left['config_hash'].astype(str).unique()))}); "
        "--all shows them"
    )
    return frame[~stale].reset_index(drop=True), note


def interval(row) -> tuple[float, float]:
    """The interval a view shows: Wilson for a rate (it does not collapse to a point at 0 or 1,
    lm-eval issue #4070), the percentile bootstrap otherwise."""
    low, high = row.get("wilson_low"), row.get("wilson_high")
    if low is not None and high is not None and not (_missing(low) or _missing(high)):
        return float(low), float(high)
    # NaN where a table lacks the CI columns (they are not REQUIRED: a row may carry a value only)
    return float(row.get("ci_low", math.nan)), float(row.get("ci_high", math.nan))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def with_interval(frame):
    """``ci_low``/``ci_high`` replaced by the interval a view shows (:func:`interval`)."""
    if "wilson_low" not in frame.columns or frame.empty:
        return frame
    bounds = [interval(row) for row in frame.to_dict("records")]
    return frame.assign(ci_low=[b[0] for b in bounds], ci_high=[b[1] for b in bounds])


def before_after(frame):
    """One row per (method, attack, seed, eval, judge, metric; and config when several): the
    value before (P0) and after (P1) the attack with the intervals a view shows, the change, n,
    and how many steps were scored during the attack."""
    import pandas as pd

    key = [c for c in PAIR_KEY if c in frame.columns]
    if "config_hash" in frame.columns and frame.groupby(key)["config_hash"].nunique().gt(1).any():
        key.append("config_hash")
    out = []
    for values, group in frame.groupby(key, sort=False, dropna=False):
        phases = {phase: g.to_dict("records")[0] for phase, g in group.groupby("phase")}
        before, after = phases.get("before"), phases.get("after")
        if before is None:
            continue
        entry = dict(zip(key, values if isinstance(values, tuple) else (values,)))
        entry["direction"] = before.get("direction")
        for name, row in (("before", before), ("after", after)):
            low, high = interval(row) if row else (math.nan, math.nan)
            entry.update(
                {
                    name: row["value"] if row else math.nan,
                    f"{name}_low": low,
                    f"{name}_high": high,
                    f"n_{name}": row["n"] if row else None,
                }
            )
        entry["change"] = entry["after"] - entry["before"]
        entry["during_steps"] = int((group["phase"] == "during").sum())
        out.append(entry)
    return pd.DataFrame(out)


def filter_results(frame, filters: list[str]):
    """``["method=frpo", "eval=harmbench,xstest"]``: rows matching every filter (a comma means
    any of); values compare as text, so ``seed=0`` works."""
    for text in filters:
        column, sep, value = text.partition("=")
        column = column.strip()
        if not sep or not column:
            raise UsageError(
                f"malformed --filter {text!r}: expected COLUMN=VALUE[,VALUE...], "
                "e.g. --filter method=frpo"
            )
        if column not in frame.columns:
            raise UsageError(
                f"--filter {text!r}: no column {column!r}; columns are {', '.join(frame.columns)}"
            )
        wanted = [v.strip() for v in value.split(",")]
        frame = frame[frame[column].astype(str).isin(wanted)]
    return frame


def summary_columns(frame) -> list[str]:
    """SUMMARY_COLUMNS, plus what tells rows apart when a row key repeats: results of a re-run
    with another eval version or config stay in the folder beside the old ones."""
    wanted = [c for c in SUMMARY_COLUMNS if c in frame.columns]
    key = [c for c in ROW_KEY if c in frame.columns]
    if not key or not frame.duplicated(key).any():
        return wanted
    extra = [
        c
        for c in ("eval_version", "config_hash")
        if c in frame.columns and frame.groupby(key, dropna=False)[c].nunique().gt(1).any()
    ]
    at = wanted.index("eval") + 1 if "eval" in wanted else len(wanted)
    return wanted[:at] + extra + wanted[at:]


def select_columns(frame, columns: str | None, default_summary: bool):
    if columns == "all" or (columns is None and not default_summary):
        return frame
    wanted = [c.strip() for c in columns.split(",")] if columns else summary_columns(frame)
    unknown = [c for c in wanted if c not in frame.columns]
    if unknown:
        raise UsageError(
            f"--columns: no column(s) {', '.join(map(repr, unknown))}; columns are "
            f"{', '.join(frame.columns)}"
        )
    return frame[wanted]
