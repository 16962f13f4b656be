"""The policy a warmup / train / attack stage leaves: where its model folder is, and the output
contract a method or attack plugin keeps when such a stage runs it."""

from __future__ import annotations

import shutil
import traceback
from pathlib import Path

from forgetbench.errors import ForgetbenchError
from forgetbench.training.checkpoints import checkpoint_folder
from forgetbench.training.distributed import is_main


class PluginOutputError(ForgetbenchError):
    pass


def run_policy_plugin(plugin, settings, start: str, out: Path, seed: int) -> Path:
    """Call a method or attack plugin ``target(settings, start, out, seed)`` and enforce its output
    contract: it returns the folder it saved the policy in, a full model folder (config.json)
    inside ``out`` (``out/model``, what ``save_policy``, ``run_grpo`` and ``run_sft`` return; any
    other folder inside ``out`` is moved there). A plugin that raises, returns nothing, or saves
    elsewhere fails its own stage here, with its name, not a later stage that reads the policy."""
    where = f"{plugin.kind} {plugin.name!r}"
    try:
        returned = plugin.target(settings, start, out, seed)
    except ForgetbenchError as error:
        raise PluginOutputError(f"{where}: {error}").with_exit_code(error.exit_code) from error
    except Exception as error:  # a plugin's bug: keep its traceback in the stage log
        traceback.print_exc()
        raise PluginOutputError(
            f"{where} raised {type(error).__name__}: {error}; fix the plugin "
            "(traceback in the stage log)"
        ) from error
    if not is_main():  # a multi-process stage's other ranks: rank 0 saved and checks it
        return out / "model"
    contract = (
        f"return the folder it saved the policy in, {out / 'model'} (what save_policy, "
        "run_grpo and run_sft return)"
    )
    if not isinstance(returned, (str, Path)):
        raise PluginOutputError(
            f"{where} returned {returned!r} instead of its policy folder; it must {contract}"
        )
    folder, target = Path(returned).resolve(), (out / "model").resolve()
    if folder != target and target not in folder.parents and out.resolve() not in folder.parents:
        raise PluginOutputError(
            f"{where} saved its policy to {folder}, outside its output folder; it must {contract}"
        )
    if not (folder / "config.json").is_file():
        raise PluginOutputError(
            f"{where} returned {folder}, which holds no saved model "
            f"(config.json); it must {contract}"
        )
    if folder != target:
        if target.exists():
            raise PluginOutputError(
                f"{where} returned {folder} but {target} exists too; it must {contract}"
            )
        shutil.move(str(folder), str(target))
    return target


def policy_path(folder: Path, checkpoint: int | None = None) -> str:
    """The model folder inside a warmup / train / attack stage's output, or an attack's
    intermediate checkpoint (``forgetbench.training.checkpoints``)."""
    if checkpoint is not None:
        return str(checkpoint_folder(folder, checkpoint))
    return str(folder / "model")
