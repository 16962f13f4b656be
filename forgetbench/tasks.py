"""Task definitions as data: versioned YAML under ``tasks/`` and the shipped data slices.

A task YAML names its dataset (a shipped file or a hub id), how rows become prompts, and its
settings; ``version`` is bumped whenever the task changes, and is part of every stage hash.
Tasks may also come from other folders, plugin packages and single files
(:mod:`forgetbench.task_sources`).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path
from typing import Any, Optional

from pydantic import model_serializer, model_validator

from forgetbench.config import Field, StrictModel
from forgetbench.errors import ForgetbenchError, UsageError


class DataError(ForgetbenchError):
    pass


def tasks_dir() -> Path:
    """The built-in tasks: the copy inside an installed wheel, else the repo's tasks/ (extra
    folders, ``$FORGETBENCH_TASKS``, add to these: :mod:`forgetbench.task_sources`)."""
    bundled = Path(__file__).parent / "_tasks"
    return bundled if bundled.is_dir() else Path(__file__).resolve().parents[1] / "tasks"


class DatasetSpec(StrictModel):
    path: Optional[str] = Field(
        None,
        description="A data file (csv, json, jsonl, optionally .gz), "
        "relative to the task's folder (tasks/ for built-in tasks; see "
        "forgetbench.task_sources).",
    )
    hub: Optional[str] = Field(
        None,
        description="A Hugging Face dataset id, loaded with "
        "`datasets` when `path` is not given (needs network).",
    )
    hub_config: Optional[str] = Field(None, description="The hub dataset's configuration name.")
    split: str = Field("train", description="The hub dataset's split.")
    filter: dict[str, Any] = Field(
        default_factory=dict,
        description="Keep rows whose column equals the value (all must match).",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Our field name -> source "
        "column; every mapped column is required in every row.",
    )
    sample: Optional[int] = Field(
        None,
        ge=1,
        description="Keep a fixed random sample of this "
        "many rows (seed 0, the same for every run), after filtering, "
        "in shuffled order (a sample of every row shuffles them).",
    )
    head: Optional[int] = Field(None, ge=1, description="Keep the first N rows (after filtering).")
    id_prefix: Optional[str] = Field(
        None,
        description="For files without an id column: each row's "
        "`id` is this prefix + its 0-based position in the file, "
        "so ids survive filter, sample and head.",
    )
    # Set by forgetbench for a task outside the built-in folder (task_sources.locate_data), not
    # written in a YAML: where `path` resolves (left out of hashes) and what it holds (hashed).
    path_root: Optional[str] = Field(None, description="Set by forgetbench: the task's folder.")
    sha256: Optional[str] = Field(None, description="Set by forgetbench: the data file's SHA-256.")

    @model_serializer(mode="wrap")
    def _without_unset_location(self, handler):
        # Built-in tasks have neither: their dumped configs (and stage keys) stay as they were.
        values = handler(self)
        for key in ("path_root", "sha256"):
            if values.get(key) is None:
                values.pop(key, None)
        return values

    def file(self) -> Path:
        """The data file ``path`` names, checked against ``sha256`` when set."""
        from forgetbench.task_sources import data_file, file_sha256

        root = Path(self.path_root) if self.path_root else tasks_dir()
        where = data_file(root, self.path, "dataset")
        if self.sha256 and where.is_file() and file_sha256(where) != self.sha256:
            raise DataError(
                f"data file {where} changed since this run was planned (its SHA-256 "
                "differs); re-run the command to plan with the new data"
            )
        return where


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(
            f"missing data file {path}; reinstall forgetbench or fix the task's dataset.path"
        )
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
        raise DataError(
            f"cannot load hub dataset {spec.hub!r} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); check the id and network, or "
            "point dataset.path at a local file"
        ) from None


def load_rows(spec: DatasetSpec) -> list[dict]:
    """Rows of the dataset, filtered, renamed to ``spec.fields`` and schema-checked."""
    if spec.path:
        where = spec.file()
        rows = _read_file(where)
    elif spec.hub:
        where, rows = spec.hub, _read_hub(spec)
    else:
        raise UsageError("a dataset needs `path` or `hub`")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{where} row {number}: expected a record, got {type(row).__name__}")
        missing = [
            column for column in list(spec.filter) + list(spec.fields.values()) if column not in row
        ]
        if missing:
            raise DataError(
                f"{where} row {number} lacks required field(s) {missing}; fix the "
                "file or the task's dataset.fields"
            )
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
        rows = rows[: spec.head]
    if not rows:
        raise DataError(
            f"{where} has no rows left after filtering {spec.filter or ''}; check the filter"
        )
    return rows


class TrainTask(StrictModel):
    """A training task: the RL prompts a method trains on, the reward that scores them, and,
    optionally, their groups (kinds) with how many of each to take, and the demonstrations of the
    refusal warm-up."""

    name: str = Field(description="The task's name (file stem).")
    version: int = Field(description="Bumped whenever the task's data or format changes.")
    description: str = Field("", description="One line for `forgetbench list`.")
    warmup: Optional[DatasetSpec] = Field(
        None,
        description="Demonstrations for the refusal SFT "
        "warm-up (fields prompt, response, kind); a task "
        "without them cannot be the warm-up's task.",
    )
    prompts: DatasetSpec = Field(
        description="RL prompts: field prompt, plus the columns the "
        "reward reads (kind, reference, answer, ...)."
    )
    system_prompt: Optional[str] = Field(None, description="A system turn before every prompt.")
    reward: str = Field(
        "safety",
        description="The reward plugin scoring completions, unless the "
        "method names its own `reward`.",
    )
    reward_config: dict[str, Any] = Field(
        default_factory=dict,
        description="The reward's settings (the method's reward_config overrides them).",
    )
    groups: Optional[dict[str, int]] = Field(
        None,
        description="Kind -> how many prompts of that kind to take (the rows' `kind` "
        "column; a method setting n_<kind>, e.g. n_harmful, overrides the count). None: no "
        "groups, the first n_prompts rows (every row by default), in the file's order.",
    )

    @model_validator(mode="after")
    def _groups_are_counts(self):
        bad = {kind: n for kind, n in (self.groups or {}).items() if n < 0}
        if bad:
            raise ValueError(f"groups: counts must be >= 0, got {bad}")
        return self


def load_train_task(name: str) -> TrainTask:
    """Training task ``name`` (built-in, a plugin's ``lab/name``, or a YAML file's path)."""
    from forgetbench import registry

    plugin = registry.get("train_task", name)
    return plugin.build_config(plugin.target)


def take_by_kind(rows: list[dict], n_harmful: int, n_harmless: int) -> list[dict]:
    """The first ``n_harmful`` harmful and ``n_harmless`` harmless rows, interleaved."""
    harmful = [r for r in rows if r["kind"] == "harmful"][:n_harmful]
    harmless = [r for r in rows if r["kind"] == "harmless"][:n_harmless]
    if len(harmful) < n_harmful or len(harmless) < n_harmless:
        raise DataError(
            f"asked for {n_harmful} harmful + {n_harmless} harmless rows, the task has "
            f"{len(harmful)} + {len(harmless)}; lower n_harmful / n_harmless"
        )
    mixed = harmful + harmless
    random.Random(0).shuffle(mixed)
    return mixed


def load_train_prompts(name: str, n_harmful: int, n_harmless: int) -> list[dict]:
    """The safety task's kinds: ``n_harmful`` harmful and ``n_harmless`` harmless rows."""
    task = load_train_task(name)
    return take_by_kind(load_rows(task.prompts), n_harmful, n_harmless)


def prompt_counts(task: TrainTask, settings) -> dict[str, int] | int | None:
    """How many prompts of each group to take: a group ``X`` takes ``settings.n_X`` when the
    settings (a method's config) declare it, else the task's count; a task without groups takes
    ``settings.n_prompts`` rows (None: all)."""
    if task.groups is None:
        return getattr(settings, "n_prompts", None)
    return {kind: getattr(settings, f"n_{kind}", count) for kind, count in task.groups.items()}


def take_rows(task: TrainTask, rows: list[dict], counts: dict[str, int] | int | None) -> list[dict]:
    """A task's training rows: per-group counts (the safety task's harmful / harmless, mixed as
    ``take_by_kind`` mixes them), or the first ``counts`` rows of a task without groups."""
    if isinstance(counts, dict):
        if set(counts) == {"harmful", "harmless"}:  # the safety task's order, kept as it was
            return take_by_kind(rows, counts["harmful"], counts["harmless"])
        taken = []
        for kind, count in counts.items():
            chosen = [row for row in rows if row.get("kind") == kind][:count]
            if len(chosen) < count:
                raise DataError(
                    f"training task {task.name!r}: asked for {count} {kind!r} rows, "
                    f"it has {len(chosen)}; lower n_{kind} or the group's count"
                )
            taken += chosen
        random.Random(0).shuffle(taken)
        return taken
    if counts is not None and counts > len(rows):
        raise DataError(
            f"training task {task.name!r}: asked for {counts} prompts, it has "
            f"{len(rows)}; lower n_prompts"
        )
    return rows[:counts] if counts is not None else rows


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
        if spec is None:
            continue
        keys = {row["id"]: normalize_prompt(row["prompt"]) for row in load_rows(spec)}
        for name, prompts in evals.items():
            scored = {normalize_prompt(prompt) for prompt in prompts}
            rows = [str(row_id) for row_id, key in keys.items() if key in scored]
            if rows:
                shown = ", ".join(rows[:5]) + (
                    f" and {len(rows) - 5} more" if len(rows) > 5 else ""
                )
                raise DataError(
                    f"training task {train_task!r} ({part}: {spec.path or spec.hub}) "
                    f"has {len(rows)} row(s) whose prompt is a prompt of eval "
                    f"{name!r}: {shown}; remove them from the task's data and bump "
                    "its version"
                )
