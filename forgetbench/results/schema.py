"""The results table's contract: its declared columns and their Arrow types, checked when a table
is written and read; tables are written atomically and refused in one line when written under
another schema version."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from forgetbench.atomic import atomic_path
from forgetbench.errors import ForgetbenchError
from forgetbench.provenance import PACKAGES, version_column

SCHEMA_VERSION = 1
# The declared columns of a results table and their Arrow types, checked when a table is written
# and read. Adding a column: one line here (and a bump of SCHEMA_VERSION if old tables cannot be
# read the new way). Undeclared columns pass through untyped, so a plugin's extra column never
# breaks a write.
REQUIRED = (
    "schema_version",
    "method",
    "attack",
    "seed",
    "phase",
    "step",
    "eval",
    "judge",
    "metric",
    "value",
)
_STRING = (
    "method",
    "attack",
    "phase",
    "eval",
    "eval_role",
    "eval_prompts_sha256",
    "judge",
    "source",
    "metric",
    "transform",
    "ci_method",
    "direction",
    "eval_config_hash",
    "judge_config_hash",
    "policy_stage",
    "generate_stage",
    "judge_stage",
    "preset",
    "config_hash",
    "config_file",
    "method_plugin",
    "attack_plugin",
    "method_config_hash",
    "attack_config_hash",
    "protocol_hash",
    "base_model",
    "backend",
    "backend_config_hash",
    "train_stage",
    "trained_at",
    *map(version_column, PACKAGES),
    "python_version",
    "git_revision",
    "generated_at",
    "date",
    "backend_used",
    "backend_version",
    "generation_dtype",
    "train_precision",
    "table_written",
    "sandbox",
)
_INT = (
    "schema_version",
    "seed",
    "step",
    "eval_version",
    "n",
    "n_missing",
    "stage_format",
    "train_steps",
)
_FLOAT = (
    "value",
    "ci_low",
    "ci_high",
    "stderr",
    "wilson_low",
    "wilson_high",
    "train_seconds",
    "train_step_seconds",
    "method_passes",
)
# What names one row of the long table; a repeat means two tables for one cell.
ROW_KEY = ("method", "attack", "seed", "phase", "step", "eval", "judge", "metric")
PHASE_ORDER = {"before": 0, "during": 1, "after": 2}


def schema_types() -> dict:
    import pyarrow as pa

    return {
        **{c: pa.string() for c in _STRING},
        **{c: pa.int64() for c in _INT},
        **{c: pa.float64() for c in _FLOAT},
    }


def check_frame(frame, where: str):
    """The frame as an Arrow table with every declared column in its declared type; a one-line
    error naming the column otherwise."""
    import pyarrow as pa

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
            raise ForgetbenchError(
                f"{where}: results column {name!r} must be {wanted}, got "
                f"{', '.join(sorted({type(v).__name__ for v in frame[name]}))}"
            ) from None
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
    import pandas as pd
    import pyarrow.parquet as pq

    written = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    frame = pd.DataFrame(
        [{**row, "schema_version": SCHEMA_VERSION, "table_written": written} for row in rows]
    )
    table = check_frame(frame, f"results table {name}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.parquet"
    for suffix in (".parquet", ".csv"):
        path = folder / f"{name}{suffix}"
        with atomic_path(path) as tmp:
            if suffix == ".parquet":
                pq.write_table(table, tmp)
            else:
                table.to_pandas().to_csv(tmp, index=False)
    return target


def read_table(source: Path | bytes, name: str | None = None):
    """One results table, a file or a bundle's bytes (then `name` names it), refused in one line
    if it was written under another schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = name or str(source)
    # Bytes go to Arrow as its own buffer, never as a Python file object: an Arrow pool thread can
    # hold the last reference to a Python file and drop it while the interpreter exits, which
    # needs the GIL and aborts the process ("terminate called without an active exception",
    # SIGABRT; seen in CI on `leaderboard check`, core dump read here; apache/arrow#34314).
    readable = pa.BufferReader(source) if isinstance(source, bytes) else source
    try:
        frame = pq.read_table(readable).to_pandas()
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ForgetbenchError(f"results table {name} is not readable Parquet ({error})") from None
    versions = (
        set(frame["schema_version"].dropna().astype(int))
        if "schema_version" in frame.columns
        else set()
    )
    if versions != {SCHEMA_VERSION}:
        found = (
            ", ".join(map(str, sorted(versions)))
            if versions
            else "none (written before the results schema)"
        )
        raise ForgetbenchError(
            f"results table {name} has schema version {found}; this forgetbench reads version "
            f"{SCHEMA_VERSION} only: re-run the command that made it (finished stages are "
            "re-used) to rewrite it, or move it out of the folder"
        )
    check_frame(frame, f"results table {name}")
    return frame


def sort_rows(frame):
    frame = frame.assign(_phase=frame["phase"].map(PHASE_ORDER).fillna(3))
    keys = ["_phase" if c == "phase" else c for c in ROW_KEY if c in frame.columns]
    return frame.sort_values(keys, kind="stable").drop(columns="_phase").reset_index(drop=True)


def load_results(root: Path):
    """Every results table under ``root/results`` as one long DataFrame, in a stable order;
    every table checked against the schema (tables of another schema version are refused, never
    mixed in)."""
    import pandas as pd

    folder = root / "results"
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise ForgetbenchError(
            f"no results tables in {folder}; run `forgetbench run` or "
            f"`forgetbench matrix` with --output-dir {root} first"
        )
    return sort_rows(pd.concat([read_table(path) for path in files], ignore_index=True))
