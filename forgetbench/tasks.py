"""Task definitions as data: versioned YAML under ``tasks/`` and the shipped data slices.

A task YAML names its dataset (a shipped file or a hub id), how rows become prompts, and its
settings; ``version`` is bumped whenever the task changes, and is part of every stage hash.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path
from typing import Any, Optional

from forgetbench import environment
from forgetbench.config import Field, StrictModel, load_yaml, validate
from forgetbench.errors import ForgetbenchError, UsageError


class DataError(ForgetbenchError):
    pass


def tasks_dir() -> Path:
    """``$FORGETBENCH_TASKS``, else the copy inside an installed wheel, else the repo's tasks/."""
    override = environment.tasks_override()
    if override is not None:
        return override
    bundled = Path(__file__).parent / "_tasks"
    return bundled if bundled.is_dir() else Path(__file__).resolve().parents[1] / "tasks"


class DatasetSpec(StrictModel):
    path: Optional[str] = Field(None, description="A shipped file, relative to tasks/ (csv, json, "
                                "jsonl, optionally .gz).")
    hub: Optional[str] = Field(None, description="A Hugging Face dataset id, loaded with "
                               "`datasets` when `path` is not given (needs network).")
    hub_config: Optional[str] = Field(None, description="The hub dataset's configuration name.")
    split: str = Field("train", description="The hub dataset's split.")
    filter: dict[str, Any] = Field(default_factory=dict, description="Keep rows whose column "
                                   "equals the value (all must match).")
    fields: dict[str, str] = Field(default_factory=dict, description="Our field name -> source "
                                   "column; every mapped column is required in every row.")
    sample: Optional[int] = Field(None, ge=1, description="Keep a fixed random sample of this "
                                  "many rows (seed 0, the same for every run), after filtering, "
                                  "in shuffled order (a sample of every row shuffles them).")
    head: Optional[int] = Field(None, ge=1, description="Keep the first N rows (after filtering).")
    id_prefix: Optional[str] = Field(None, description="For files without an id column: each row's "
                                     "`id` is this prefix + its 0-based position in the file, "
                                     "so ids survive filter, sample and head.")


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"missing data file {path}; reinstall forgetbench or fix the task's "
                        "dataset.path")
    opener = gzip.open if path.suffix == ".gz" else open
    kind = path.with_suffix("").suffix if path.suffix == ".gz" else path.suffix
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            if kind == ".csv":
                return list(csv.DictReader(handle))
            if kind == ".jsonl":
                return [json.loads(line) for line in handle if line.strip()]
            if kind == ".json":
                data = json.load(handle)
                return data if isinstance(data, list) else data.get("data", data.get("rows"))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot parse {path}: {error}") from None
    raise DataError(f"unsupported data file type {path.name}: use csv, json or jsonl (.gz ok)")


def _read_hub(spec: DatasetSpec) -> list[dict]:
    try:
        from datasets import load_dataset

        return list(load_dataset(spec.hub, spec.hub_config, split=spec.split))
    except Exception as error:  # the hub raises many types; all mean "not reachable / not found"
        raise DataError(f"cannot load hub dataset {spec.hub!r} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]}); check the id and network, or "
                        "point dataset.path at a local file") from None


def load_rows(spec: DatasetSpec) -> list[dict]:
    """Rows of the dataset, filtered, renamed to ``spec.fields`` and schema-checked."""
    if spec.path:
        where = tasks_dir() / spec.path
        rows = _read_file(where)
    elif spec.hub:
        where, rows = spec.hub, _read_hub(spec)
    else:
        raise UsageError("a dataset needs `path` or `hub`")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{where} row {number}: expected a record, got {type(row).__name__}")
        missing = [column for column in list(spec.filter) + list(spec.fields.values())
                   if column not in row]
        if missing:
            raise DataError(f"{where} row {number} lacks required field(s) {missing}; fix the "
                            "file or the task's dataset.fields")
    if spec.id_prefix is not None:
        rows = [{**row, "id": f"{spec.id_prefix}{number}"} for number, row in enumerate(rows)]
    rows = [row for row in rows if all(row[k] == v for k, v in spec.filter.items())]
    if spec.fields:
        fields = {"id": "id", **spec.fields} if spec.id_prefix is not None else spec.fields
        rows = [{ours: row[theirs] for ours, theirs in fields.items()} for row in rows]
    if spec.sample is not None:
        # Shuffled even when it keeps every row: evals list their whole set this way so that a
        # `limit` takes a spread of the set, not the file's first category.
        rows = random.Random(0).sample(rows, min(spec.sample, len(rows)))
    if spec.head is not None:
        rows = rows[:spec.head]
    if not rows:
        raise DataError(f"{where} has no rows left after filtering {spec.filter or ''}; check the "
                        "filter")
    return rows


def task_files(kind: str) -> list[Path]:
    return sorted((tasks_dir() / kind).glob("*.yaml"))


class TrainTask(StrictModel):
    name: str = Field(description="The task's name (file stem).")
    version: int = Field(description="Bumped whenever the task's data or format changes.")
    description: str = Field("", description="One line for `forgetbench list`.")
    warmup: DatasetSpec = Field(description="Demonstrations for the refusal SFT warm-up: fields "
                                "prompt, response, kind.")
    prompts: DatasetSpec = Field(description="RL prompts: fields prompt, kind, reference.")


def load_train_task(name: str) -> TrainTask:
    path = tasks_dir() / "train" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in task_files("train"))
        raise UsageError(f"unknown training task {name!r}; known: {known}")
    return validate(TrainTask, load_yaml(path, "training task file"),
                    f"training task {name!r}")


def take_by_kind(rows: list[dict], n_harmful: int, n_harmless: int) -> list[dict]:
    """The first ``n_harmful`` harmful and ``n_harmless`` harmless rows, interleaved."""
    harmful = [r for r in rows if r["kind"] == "harmful"][:n_harmful]
    harmless = [r for r in rows if r["kind"] == "harmless"][:n_harmless]
    if len(harmful) < n_harmful or len(harmless) < n_harmless:
        raise DataError(f"asked for {n_harmful} harmful + {n_harmless} harmless rows, the task has "
                        f"{len(harmful)} + {len(harmless)}; lower n_harmful / n_harmless")
    mixed = harmful + harmless
    random.Random(0).shuffle(mixed)
    return mixed


def load_train_prompts(name: str, n_harmful: int, n_harmless: int) -> list[dict]:
    task = load_train_task(name)
    return take_by_kind(load_rows(task.prompts), n_harmful, n_harmless)


def normalize_prompt(text: str) -> str:
    """Lower case, runs of anything but letters and digits collapsed to one space: two prompts a
    model would read as the same request compare equal."""
    import re
    import unicodedata

    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def check_disjoint(train_task: str, evals: dict[str, list[str]]) -> None:
    """Raise when a row of the training task (warm-up or RL prompts) is one of an eval's prompts
    (``evals``: eval name -> the prompts it scores): a model trained on the eval's prompts, often
    with its reference as the target, would inflate that eval."""
    task = load_train_task(train_task)
    for part, spec in (("warmup", task.warmup), ("prompts", task.prompts)):
        keys = {row["id"]: normalize_prompt(row["prompt"]) for row in load_rows(spec)}
        for name, prompts in evals.items():
            scored = {normalize_prompt(prompt) for prompt in prompts}
            rows = [str(row_id) for row_id, key in keys.items() if key in scored]
            if rows:
                shown = ", ".join(rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
                raise DataError(f"training task {train_task!r} ({part}: {spec.path or spec.hub}) "
                                f"has {len(rows)} row(s) whose prompt is a prompt of eval "
                                f"{name!r}: {shown}; remove them from the task's data and bump "
                                "its version")
