"""Where task YAMLs come from: evals, attacks and training tasks from any folder or file.

Four sources, all validated the same way and all registered in the one registry:

* the built-in ``tasks/`` folder (``tasks.tasks_dir()``);
* extra folders laid out like it (``evals/``, ``attacks/``, ``train/`` and their data), named by
  ``$FORGETBENCH_TASKS`` (several separated by ``os.pathsep``). They ADD to the built-in tasks
  (lm-evaluation-harness's ``include_path``); a name defined twice is an error naming both files;
* a plugin package's folder: its entry-point module calls ``forgetbench.register_task_dir(path)``
  once and every task in it is registered under the package's namespace (``lab/my_eval``);
* a single YAML file named where a task name goes (``--attack ./my_attack.yaml``,
  ``--set 'evals=[harmbench,./my_eval.yaml]'``, a matrix file's lists, ``method.train_task``).
  It is registered under its own ``name:``, and forgetbench's stage processes find it through
  ``$FORGETBENCH_TASK_FILES``, which forgetbench sets for them.

A ``dataset.path`` is relative to the task folder that holds the YAML: the folder above
``evals/``, ``attacks/`` or ``train/``, or, for a YAML elsewhere, the YAML's own folder. It must
stay inside that folder. Stage keys never see where a machine keeps the files: a task outside
the built-in folder gets the resolved folder as ``path_root`` (left out of every hash, see
``config.LOCATION_ONLY_SETTINGS``) and the data file's ``sha256`` (in the hash), so the same
task and data give the same keys on every machine, and changed data gives new ones. Built-in
tasks are pinned by their ``version`` instead (bumped whenever their data changes), which keeps
their stage keys as they were.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

from forgetbench.errors import UsageError

# Task kind (a registry kind) -> its folder inside a task folder.
FOLDERS = {"eval": "evals", "attack": "attacks", "train_task": "train"}
# Where a task of each kind names data files.
DATASET_KEYS = {"eval": ("dataset",), "attack": ("dataset",), "train_task": ("warmup", "prompts")}
# Set by forgetbench for its own stage processes: the task files named on this command line.
TASK_FILES = "FORGETBENCH_TASK_FILES"
SUFFIXES = (".yaml", ".yml")

_origins: dict[tuple[str, str], Path] = {}  # (kind, full name) -> the YAML that defined it


def config_class(kind: str):
    if kind == "eval":
        from forgetbench.evals import EvalTask

        return EvalTask
    if kind == "attack":
        from forgetbench.attacks import AttackTask

        return AttackTask
    from forgetbench.tasks import TrainTask

    return TrainTask


def is_task_file(name: str) -> bool:
    """A task name that is a YAML file's path rather than a registered name."""
    return isinstance(name, str) and name.lower().endswith(SUFFIXES)


@lru_cache(maxsize=256)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


def task_root(yaml_path: Path) -> Path:
    """The folder a task's data paths are relative to (see the module docstring)."""
    parent = yaml_path.resolve().parent
    return parent.parent if parent.name in FOLDERS.values() else parent


def data_file(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (checked on the path as written,
    so a symlinked ``data/`` inside the folder is fine)."""
    normal = os.path.normpath(relative)
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep):
        raise UsageError(
            f"{where}: dataset path {relative!r} leaves its task folder {root}; "
            "put the data inside that folder and give its relative path"
        )
    return root / normal


def locate_data(kind: str, values: dict, root: Path, yaml_path: Path) -> dict:
    """``values`` with each dataset's files resolved against ``root``: for a task outside the
    built-in folder, ``path_root`` (where, hash-blind) and ``sha256`` (what, hashed)."""
    from forgetbench.tasks import tasks_dir

    builtin = root.resolve() == tasks_dir().resolve()
    values = dict(values)
    for key in DATASET_KEYS[kind]:
        spec = values.get(key)
        if not isinstance(spec, dict):
            continue  # a missing or malformed spec fails validation, naming the file
        spec = {k: v for k, v in spec.items() if k not in ("path_root", "sha256")}
        if spec.get("path") and not builtin:
            where = data_file(root, str(spec["path"]), f"task file {yaml_path}")
            if not where.is_file():
                raise UsageError(
                    f"task file {yaml_path}: {key}.path {spec['path']!r} does not "
                    f"exist in its task folder {root}; fix the path"
                )
            spec.update(path_root=str(root.resolve()), sha256=file_sha256(where))
        elif spec.get("path"):
            data_file(root, str(spec["path"]), f"task file {yaml_path}")
        values[key] = spec
    return values


def register_file(kind: str, yaml_path: Path, root: Optional[Path] = None, check: bool = True):
    """Register one task YAML as a ``kind`` plugin; returns it. ``check``: validate it now, naming
    the file (folders read while the built-in plugins load are validated when a run resolves
    them: their rewards and judges may not be registered yet). The same file registered again is
    the same plugin; another file with the same name is an error naming both."""
    from forgetbench import registry
    from forgetbench.config import load_yaml, validate

    yaml_path = Path(yaml_path)
    values = load_yaml(yaml_path, "task file")
    if not isinstance(values.get("name"), str) or not values["name"]:
        raise UsageError(f"task file {yaml_path} must have a `name` (a string)")
    values = locate_data(kind, values, root or task_root(yaml_path), yaml_path)
    config = config_class(kind)
    if check:
        validate(config, values, f"task file {yaml_path}")
    namespace = registry.current_namespace()
    full_name = f"{namespace}/{values['name']}" if namespace else values["name"]
    seen = _origins.get((kind, full_name))
    if seen is not None:
        if seen.resolve() == yaml_path.resolve():
            return registry.get(kind, full_name)
        raise UsageError(
            f"{kind} {full_name!r} is defined twice: {seen} and {yaml_path}; rename "
            "one (its `name:`)"
        )
    plugin = registry.register(
        kind, values["name"], values, description=values.get("description", ""), config=config
    )
    _origins[(kind, full_name)] = yaml_path
    return plugin


def register_folder(folder: Path, kinds=tuple(FOLDERS), check: bool = True) -> None:
    """Register every task YAML of ``folder`` (laid out like tasks/) for ``kinds``."""
    for kind in kinds:
        for path in sorted((folder / FOLDERS[kind]).glob("*.yaml")):
            register_file(kind, path, folder, check)


def register_task_dir(path) -> None:
    """Register a plugin package's task folder: call it once from the package's entry-point module,
    e.g. ``register_task_dir(Path(__file__).parent / "tasks")``.

    The folder is laid out like forgetbench's ``tasks/``: ``evals/*.yaml`` (``EvalTask``),
    ``attacks/*.yaml`` (``AttackTask``), ``train/*.yaml`` (``TrainTask``) and their data, each
    ``dataset.path`` relative to the folder. Every task is registered under the package's
    namespace: ``evals/my_eval.yaml`` with ``name: my_eval`` in package ``lab`` is the eval
    ``lab/my_eval`` (``--set 'evals=[lab/my_eval]'``)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(
            f"task folder {folder} does not exist; pass register_task_dir the "
            "folder holding evals/, attacks/, train/"
        )
    register_folder(folder)


def register_file_by_name(kind: str, name: str):
    """The plugin for a YAML path used as a task name, registered now and remembered in
    ``$FORGETBENCH_TASK_FILES`` for forgetbench's stage processes."""
    path = Path(name).expanduser()
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise UsageError(f"{kind} task file {name} {what}; check the path")
    plugin = register_file(kind, path)
    entry = f"{kind}={path.resolve()}"
    known = [e for e in os.environ.get(TASK_FILES, "").split(os.pathsep) if e]
    if entry not in known:
        os.environ[TASK_FILES] = os.pathsep.join([*known, entry])
    return plugin


def canonical_name(kind: str, name):
    """A task name as stage keys and results show it: a YAML path becomes the task's name."""
    if not is_task_file(name):
        return name
    from forgetbench import registry

    return registry.get(kind, name).name


def is_builtin(kind: str, name: str) -> bool:
    from forgetbench.tasks import tasks_dir

    origin = _origins.get((kind, name))
    return origin is not None and task_root(origin) == tasks_dir().resolve()


def register_all(kind: str) -> None:
    """The built-in tasks of ``kind``, then ``$FORGETBENCH_TASKS`` folders, then the task files
    this command named (in a stage process)."""
    from forgetbench import environment
    from forgetbench.tasks import tasks_dir

    register_folder(tasks_dir(), (kind,), check=False)
    for folder in environment.task_folders():
        register_folder(folder, (kind,), check=False)
    for entry in filter(None, os.environ.get(TASK_FILES, "").split(os.pathsep)):
        file_kind, _, path = entry.partition("=")
        if file_kind == kind:
            register_file(kind, Path(path), check=False)
