"""The stage graph: what a stage is, and where its output lives."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from forgetbench.config import stable_hash
from forgetbench.errors import ForgetbenchError
from forgetbench.stages import STAGE_FORMAT

DONE_FILE = "stage.json"


class PluginOutputError(ForgetbenchError):
    pass


def run_policy_plugin(plugin, settings, start: str, out: Path, seed: int) -> Path:
    """Call a method or attack plugin ``target(settings, start, out, seed)`` and enforce its output
    contract: it returns the folder it saved the policy in, a full model folder (config.json)
    inside ``out`` (``out/model``, what ``save_policy``, ``run_grpo`` and ``run_sft`` return; any
    other folder inside ``out`` is moved there). A plugin that raises, returns nothing, or saves
    elsewhere fails its own stage here, with its name, not a later stage that reads the policy."""
    import shutil
    import traceback

    where = f"{plugin.kind} {plugin.name!r}"
    try:
        returned = plugin.target(settings, start, out, seed)
    except ForgetbenchError as error:
        raise PluginOutputError(f"{where}: {error}").with_exit_code(error.exit_code) from error
    except Exception as error:  # a plugin's bug: keep its traceback in the stage log
        traceback.print_exc()
        raise PluginOutputError(f"{where} raised {type(error).__name__}: {error}; fix the plugin "
                                "(traceback in the stage log)") from error
    contract = (f"return the folder it saved the policy in, {out / 'model'} (what save_policy, "
                "run_grpo and run_sft return)")
    if not isinstance(returned, (str, Path)):
        raise PluginOutputError(f"{where} returned {returned!r} instead of its policy folder; "
                                f"it must {contract}")
    folder, target = Path(returned).resolve(), (out / "model").resolve()
    if folder != target and target not in folder.parents and out.resolve() not in folder.parents:
        raise PluginOutputError(f"{where} saved its policy to {folder}, outside its output "
                                f"folder; it must {contract}")
    if not (folder / "config.json").is_file():
        raise PluginOutputError(f"{where} returned {folder}, which holds no saved model "
                                f"(config.json); it must {contract}")
    if folder != target:
        if target.exists():
            raise PluginOutputError(f"{where} returned {folder} but {target} exists too; it must "
                                    f"{contract}")
        shutil.move(str(folder), str(target))
    return target


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
