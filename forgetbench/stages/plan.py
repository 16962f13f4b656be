"""The stage graph: what a stage is, and where its output lives."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from forgetbench.config import stable_hash
from forgetbench.stages import STAGE_FORMAT

DONE_FILE = "stage.json"


def policy_path(folder: Path, checkpoint: int | None = None) -> str:
    """The model folder inside a warmup / train / attack stage's output, or an attack's
    intermediate checkpoint (``forgetbench.training.checkpoints``)."""
    if checkpoint is not None:
        from forgetbench.training.checkpoints import checkpoint_folder

        return str(checkpoint_folder(folder, checkpoint))
    return str(folder / "model")


@dataclass(eq=False)
class Stage:
    kind: str
    label: str  # what the progress display and results call it, e.g. "train frpo"
    config: dict
    inputs: dict[str, "Stage"] = field(default_factory=dict)

    @cached_property
    def key(self) -> str:
        return stable_hash({"format": STAGE_FORMAT, "kind": self.kind, "config": self.config,
                            "inputs": {name: stage.key for name, stage in self.inputs.items()}})

    def folder(self, root: Path) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label.split(" ", 1)[-1]).strip("-")
        return root / "stages" / self.kind / f"{slug}-{self.key}"

    def is_done(self, root: Path) -> bool:
        return (self.folder(root) / DONE_FILE).is_file()


def ordered(targets: list[Stage]) -> list[Stage]:
    """Every stage the targets need, each once, dependencies first."""
    seen: dict[str, Stage] = {}

    def visit(stage: Stage) -> None:
        if stage.key in seen:
            return
        for dependency in stage.inputs.values():
            visit(dependency)
        seen[stage.key] = stage

    for target in targets:
        visit(target)
    return list(seen.values())
