"""One registry for every plugin kind.

In-tree plugins register with a decorator (``@method("frpo")``). Third-party packages expose a
module under the entry-point group ``forgetbench``; the entry point's name becomes the namespace,
so ``[project.entry-points.forgetbench] mylab = "mylab._registry"`` makes ``mylab/my_method``
resolvable without editing any core file (the inspect_ai scheme).

Plugin modules keep heavy imports (trl, vllm, ray) inside functions, so listing plugins never
imports them.
"""

from __future__ import annotations

import contextvars
import difflib
import importlib
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from pydantic import BaseModel

from forgetbench.config import StrictModel, validate
from forgetbench.errors import UsageError
from forgetbench.tasks import TrainTask

KINDS = ("method", "attack", "eval", "judge", "reward", "backend", "train_task")
ENTRY_POINT_GROUP = "forgetbench"

# In-tree modules whose decorators populate the registry. Task YAMLs are registered by the
# In-tree modules whose decorators populate the registry. Task YAMLs are registered by the
# modules of their kind (forgetbench.attacks, forgetbench.evals; training tasks by
# _load_builtins) through register_yaml_tasks below, from the folders forgetbench.task_sources
# lists.
BUILTIN_MODULES = (
    "forgetbench.methods.grpo",
    "forgetbench.methods.frpo",
    "forgetbench.methods.cgpo",
    "forgetbench.attacks",
    "forgetbench.evals",
    "forgetbench.judges.refusal",
    "forgetbench.judges.strongreject",
    "forgetbench.judges.harmbench",
    "forgetbench.judges.llamaguard",
    "forgetbench.judges.code_exec",
    "forgetbench.judges.math_answer",
    "forgetbench.judges.helpfulness",
    "forgetbench.rewards",
    "forgetbench.rewards.paper",
    "forgetbench.backends",
)


@dataclass(frozen=True)
class Plugin:
    kind: str
    name: str
    target: Any
    description: str
    config: type[BaseModel] | None = None
    # A method's forward/backward passes through the policy per micro-batch (GRPO and plain SFT:
    # 1; SAM: 2), the cost beside its seconds per step on the leaderboard. Declared, because old
    # stages cannot be re-counted; tests/test_method_training.py, tests/test_baselines.py and
    # tests/test_cgpo_training.py count the real passes of the in-repo methods and check them.
    passes: float | None = None

    def build_config(self, values: dict | None = None) -> BaseModel:
        """Validate ``values`` against the plugin's config class (unknown keys are rejected); a
        plugin without one takes no settings."""
        values = values or {}
        if self.config is None:
            if values:
                raise UsageError(f"{self.kind} {self.name!r} takes no config, got {sorted(values)}")
            return StrictModel()
        return validate(self.config, values, f"{self.kind} {self.name!r}")


_namespace: contextvars.ContextVar[str | None] = contextvars.ContextVar("namespace", default=None)
_plugins: dict[tuple[str, str], Plugin] = {}
_loaded_builtins = False
_loaded_entry_points: set[str] = set()
_broken: dict[str, str] = {}  # entry-point name -> why it failed to import


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


def current_namespace() -> str | None:
    """The plugin package whose entry-point module is being imported (its names' prefix)."""
    return _namespace.get()


def register(
    kind: str,
    name: str,
    target: Any,
    *,
    description: str = "",
    config: type[BaseModel] | None = None,
    passes: float | None = None,
) -> Plugin:
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    namespace = _namespace.get()
    full_name = f"{namespace}/{name}" if namespace else name
    existing = _plugins.get((kind, full_name))
    if existing is not None and existing.target is not target:
        raise ValueError(f"{kind} {full_name!r} is registered twice")
    if passes is not None and not (isinstance(passes, (int, float)) and passes > 0):
        raise ValueError(f"{kind} {full_name!r}: passes must be a number > 0, got {passes!r}")
    plugin = Plugin(
        kind,
        full_name,
        target,
        description or _first_line(getattr(target, "__doc__", "")),
        config,
        None if passes is None else float(passes),
    )
    _plugins[(kind, full_name)] = plugin
    return plugin


def register_yaml_tasks(kind: str, folder: str, config_cls: type[StrictModel]) -> None:
    """Register every ``<folder>/*.yaml`` of the built-in tasks and the extra task folders as a
    ``kind`` plugin whose config (``config_cls``) is the YAML (forgetbench.task_sources)."""
    from forgetbench.task_sources import FOLDERS, register_all

    if FOLDERS.get(kind) != folder:
        raise ValueError(f"{kind} tasks live in {FOLDERS.get(kind)}/, not {folder}/")
    register_all(kind)


# What a plugin of each kind must do, shown by help(forgetbench.method) etc.
CONTRACTS = {
    "method": "A method is ``train(config, model_path, out_dir, seed) -> Path``: it trains from "
    "``model_path``, saves a full model folder (LoRA merged, with its tokenizer) at "
    "``out_dir / 'model'`` and returns that path (``run_grpo``, ``run_sft`` and "
    "``save_policy`` do both). Its train stage checks the returned folder: raising, "
    "returning nothing or saving elsewhere fails that stage, naming the method.",
    "attack": "A Python attack is ``attack(config, model_path, out_dir, seed) -> Path`` with the "
    "method's output contract; write ``out_dir / 'log_history.json'`` (the loops do).",
}


PASSES = (
    "``passes``: forward/backward passes through the policy per micro-batch (GRPO and plain SFT "
    "1, a two-pass optimiser such as SAM 2); the leaderboard shows it relative to GRPO beside "
    "seconds per step, and unset shows as unknown."
)


def _decorator(kind: str):
    def decorate(
        name: str,
        *,
        config: type[BaseModel] | None = None,
        description: str = "",
        passes: float | None = None,
    ) -> Callable[[Any], Any]:
        def wrap(target: Any) -> Any:
            register(kind, name, target, description=description, config=config, passes=passes)
            return target

        return wrap

    decorate.__name__ = kind
    parts = [
        f"Register a {kind} plugin under ``name`` (its ``config`` class "
        "declares and documents its settings).",
        PASSES if kind == "method" else "",
        CONTRACTS.get(kind, ""),
    ]
    decorate.__doc__ = " ".join(part for part in parts if part)
    return decorate


method = _decorator("method")
attack = _decorator("attack")
eval_ = _decorator("eval")
judge = _decorator("judge")
reward = _decorator("reward")
backend = _decorator("backend")


def _load_builtins() -> None:
    global _loaded_builtins
    if not _loaded_builtins:
        _loaded_builtins = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        register_yaml_tasks("train_task", "train", TrainTask)


def _load_entry_point(package: str) -> None:
    """Import the entry-point module of ``package`` with its names registered as ``package/...``.

    A package that fails to import is reported once on stderr, by name, and left out: its names
    are unknown (``get`` says why) and every other plugin still works."""
    if package in _loaded_entry_points:
        return
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == package]
    _loaded_entry_points.add(package)
    for ep in matches:
        token = _namespace.set(package)
        before = set(_plugins)
        try:
            ep.load()
        except Exception as error:  # any import-time failure of third-party code
            for key in set(_plugins) - before:  # nothing half-registered
                del _plugins[key]
            dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0]
            first = (str(error).strip().splitlines() or [""])[0]
            _broken[package] = (
                f"plugin package {package!r} ({ep.value}) failed to import: "
                f"{type(error).__name__}: {first}; fix it or "
                f"`pip uninstall {dist}`"
            )
            print(f"forgetbench: warning: {_broken[package]}", file=sys.stderr)
        finally:
            _namespace.reset(token)


def _load_all_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(ep.name)


def names(kind: str) -> list[str]:
    _load_builtins()
    _load_all_entry_points()
    return sorted(name for (k, name) in _plugins if k == kind)


def plugins(kind: str) -> list[Plugin]:
    return [_plugins[(kind, name)] for name in names(kind)]


def get(kind: str, name: str) -> Plugin:
    """The plugin ``name`` of ``kind``; an unknown name raises a UsageError listing the known ones."""
    _load_builtins()
    from forgetbench import task_sources

    if kind in task_sources.FOLDERS and task_sources.is_task_file(name):
        return task_sources.register_file_by_name(kind, name)
    if "/" in name:
        _load_entry_point(name.split("/", 1)[0])
    found = _plugins.get((kind, name))
    if found is not None:
        return found
    if "/" in name and name.split("/", 1)[0] in _broken:
        raise UsageError(f"unknown {kind} {name!r}: {_broken[name.split('/', 1)[0]]}")
    known = names(kind)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UsageError(
        f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known) or 'none'}"
        f" (see `forgetbench list {kind}`)."
    )
