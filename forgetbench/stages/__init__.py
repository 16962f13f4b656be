"""Pipeline stages. Each is a pure function of its resolved config and its inputs' outputs, so its
folder is named by a hash of exactly those (plus STAGE_FORMAT, bumped when outputs change shape).

A stage module exposes ``run(config: dict, inputs: dict[str, Path], out: Path) -> None``; the
store (``forgetbench.stages.store``) runs it in its own process and publishes its folder. The file
names below are what a finished stage folder holds; the results table reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from forgetbench.config import stable_hash

STAGE_FORMAT = 1
STAGE_KINDS = ("warmup", "train", "attack", "generate", "judge", "kl")

DONE_FILE = "stage.json"  # written last: how the stage was computed (versions, host, times)
GENERATIONS_FILE = "generations.jsonl"  # generate: one line per sample
VERDICTS_FILE = "verdicts.jsonl"  # judge: one verdict per generation
# How the verdicts were scored, where the judge says (``score.provenance``: code_exec's sandbox);
# the results table copies it into each row of this judge stage (columns JUDGE_PROVENANCE).
PROVENANCE_FILE = "judge_provenance.json"
JUDGE_PROVENANCE = ("sandbox",)
KL_FILE = "kl.jsonl"  # kl: one value per generated sequence


@dataclass(eq=False)
class Stage:
    """One node of the stage graph: what it computes (``kind``, ``config``) from which other
    stages' outputs (``inputs``). Its ``key`` hashes exactly those, so equal stages of several
    cells are one folder, computed once."""

    kind: str
    label: str  # what the progress display and results call it, e.g. "train frpo"
    config: dict
    inputs: dict[str, "Stage"] = field(default_factory=dict)

    @cached_property
    def key(self) -> str:
        return stable_hash(
            {
                "format": STAGE_FORMAT,
                "kind": self.kind,
                "config": self.config,
                "inputs": {name: stage.key for name, stage in self.inputs.items()},
            }
        )

    def folder(self, root: Path) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label.split(" ", 1)[-1]).strip("-")
        return root / "stages" / self.kind / f"{slug}-{self.key}"

    def is_done(self, root: Path) -> bool:
        return (self.folder(root) / DONE_FILE).is_file()

    @property
    def processes(self) -> int:
        """Ranks this stage trains on (its training config's ``processes``; 1 for stages that do
        not train, and for plugins whose config has no such field)."""
        return int(self.training_settings().get("processes", 1))

    @property
    def distributed(self) -> str:
        return self.training_settings().get("distributed", "ddp")

    def training_settings(self) -> dict:
        """The training config inside this stage's config: warm-up, method or attack."""
        if self.kind == "warmup":
            return self.config.get("warmup", {})
        section = {"train": "method", "attack": "attack"}.get(self.kind)
        return self.config.get(section, {}).get("config", {}) if section else {}
