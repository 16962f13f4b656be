"""The matrix spec: which methods x attacks x seeds to run, from a matrix file and the command
line. The planner (``forgetbench.planner.plan_matrix``) turns it into one stage graph in which
shared stages appear once. ``forgetbench run`` is the one-cell matrix.

A matrix file (YAML; unknown keys are errors)::

    # forgetbench matrix matrix.yaml
    preset: smoke                      # smoke | tiny | paper | a preset YAML path (default tiny)
    methods: [grpo, frpo]              # plugin names, or variants (below)
    attacks:
      - alpaca
      - {label: alpaca-hot, plugin: alpaca, set: {learning_rate: 1.0e-4}}
    seeds: [0, 1, 2]                   # default: the preset's seed
    set: ["eval.harmbench.limit=8"]    # --set overrides applied to every cell
    output_dir: runs/matrix            # default: --output-dir, $FORGETBENCH_OUTPUT or ./runs
    executor: {name: ray, address: auto, resources: {train: {num_gpus: 1}}}

A variant is a plugin plus fields of its config, named by its own label in the results (the same
attack at several learning rates, a method at several lambdas). Its fields win over the preset and
over ``set``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import StrictInt

from forgetbench.config import Field, StrictModel, load_yaml, validate
from forgetbench.errors import UsageError
from forgetbench.executors import ExecutorConfig

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+/-]*$")


class Variant(StrictModel):
    """One entry of a matrix's `methods` or `attacks` list."""

    label: str = Field(description="Name of this entry in the results table.")
    plugin: str = Field("", description="The method / attack plugin (default: the label).")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields of the plugin's config "
        "for this entry (they win over the preset and --set).",
    )


class MatrixFile(StrictModel):
    """The shape of a matrix file (see the module docstring)."""

    preset: Optional[str] = Field(None, description="Preset name or YAML path (default tiny).")
    methods: list[Union[str, dict]] = Field(
        default_factory=list, description="Methods: plugin names or variants."
    )
    attacks: list[Union[str, dict]] = Field(
        default_factory=list, description="Attacks: plugin names or variants."
    )
    seeds: Optional[list[StrictInt]] = Field(None, description="Seeds (default: the preset's).")
    set: list[str] = Field(
        default_factory=list, description="SECTION.FIELD=VALUE overrides for every cell."
    )
    output_dir: Optional[str] = Field(None, description="Output folder (relative to the file).")
    executor: ExecutorConfig = Field(
        default_factory=ExecutorConfig, description="How stages run (local or ray)."
    )


@dataclass
class MatrixSpec:
    """What to run, after merging a matrix file with the command line (the command line wins)."""

    methods: list[Variant]
    attacks: list[Variant]
    seeds: Optional[list[int]] = None
    preset: str = "tiny"
    overrides: tuple[str, ...] = ()
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    output_dir: Optional[Path] = None


def _variants(entries: list, what: str) -> list[Variant]:
    variants = []
    for number, entry in enumerate(entries, start=1):
        if isinstance(entry, str):
            # a task YAML's path: the entry is named by the task's name (task_sources)
            entry = {"label": _task_label(entry, what), "plugin": entry}
        if not isinstance(entry, dict):
            raise UsageError(
                f"{what} entry {number} must be a name or a mapping with label, "
                f"plugin, set; got {entry!r}"
            )
        variant = validate(Variant, entry, f"{what} entry {number}")
        if not LABEL.match(variant.label):
            raise UsageError(
                f"{what} entry {number}: label {variant.label!r} must be letters, "
                "digits and _.+/- (no spaces or commas)"
            )
        variants.append(variant.model_copy(update={"plugin": variant.plugin or variant.label}))
    labels = [v.label for v in variants]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise UsageError(
            f"{what} {', '.join(repr(t) for t in twice)} listed twice; give each "
            "entry its own label"
        )
    return variants


def _task_label(name: str, what: str) -> str:
    from forgetbench.task_sources import canonical_name, is_task_file

    return canonical_name("attack", name) if what == "attacks" and is_task_file(name) else name


def parse_names(text: str, what: str) -> list[str]:
    """``"grpo,frpo"`` -> ["grpo", "frpo"] (for --methods / --attacks)."""
    names = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not name for name in names):
        raise UsageError(
            f"--{what}: expected a comma-separated list of names like grpo,frpo; got {text!r}"
        )
    return names


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; anything but integers is an error."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"[+-]?\d+", part):
            raise UsageError(
                f"--seeds: {part!r} is not an integer; give a comma-separated list "
                "of integers like 0,1,2"
            )
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: {text!r} lists a seed twice")
    return seeds


def load_matrix_file(path: Path) -> MatrixFile:
    matrix = validate(MatrixFile, load_yaml(path, "matrix file"), f"matrix file {path}")
    if matrix.seeds is not None and len(set(matrix.seeds)) != len(matrix.seeds):
        raise UsageError(f"matrix file {path}: seeds {matrix.seeds} list a seed twice")
    return matrix


def make_spec(
    file: Optional[Path] = None,
    methods: Optional[list[str]] = None,
    attacks: Optional[list[str]] = None,
    seeds: Optional[list[int]] = None,
    preset: Optional[str] = None,
    overrides: tuple[str, ...] = (),
    executor: Optional[dict] = None,
    output_dir: Optional[Path] = None,
) -> MatrixSpec:
    """Merge a matrix file (if any) with command-line values; command-line lists replace the
    file's, ``overrides`` are appended to its ``set``, ``executor`` fields update its executor."""
    matrix = load_matrix_file(file) if file else MatrixFile()
    method_entries = methods if methods is not None else matrix.methods
    attack_entries = attacks if attacks is not None else matrix.attacks
    if not method_entries or not attack_entries:
        missing = "methods" if not method_entries else "attacks"
        raise UsageError(f"no {missing} to run: pass --{missing} a,b or list them in a matrix file")
    executor_values = {**matrix.executor.model_dump(exclude_unset=True), **(executor or {})}
    file_output = (file.parent / matrix.output_dir) if (file and matrix.output_dir) else None
    return MatrixSpec(
        methods=_variants(method_entries, "methods"),
        attacks=_variants(attack_entries, "attacks"),
        seeds=seeds if seeds is not None else matrix.seeds,
        preset=preset or matrix.preset or "tiny",
        overrides=tuple(matrix.set) + tuple(overrides),
        executor=validate(ExecutorConfig, executor_values, "executor"),
        output_dir=output_dir or file_output,
    )
