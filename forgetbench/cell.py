"""One cell of the matrix (a method, an attack, a seed): its config, resolved from the plugins'
defaults, the preset, ``--set`` overrides and a matrix variant's fields, and validated whole
before any work. The planner (``forgetbench.planner``) turns cells into stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from forgetbench import registry
from forgetbench.config import (
    Field,
    StrictModel,
    apply_override,
    deep_merge,
    dump,
    load_preset,
    parse_override,
    stable_hash,
    validate,
)
from forgetbench.errors import UsageError
from forgetbench.stages.warmup import WarmupConfig


class PresetFile(StrictModel):
    """The shape of a preset YAML (forgetbench/presets/*.yaml)."""

    model: str = Field(
        "smollm2-135m-instruct", description="Embedded model, local folder or hub id."
    )
    seed: int = Field(0, description="Seed of every training stage.")
    warmup: dict = Field(default_factory=dict, description="WarmupConfig fields.")
    method: dict = Field(
        default_factory=dict,
        description="Fields applied to whichever method "
        "runs, where its config declares them (others are skipped).",
    )
    methods: dict[str, dict] = Field(default_factory=dict, description="Per-method fields.")
    attack: dict = Field(
        default_factory=dict,
        description="Fields applied to whichever attack "
        "runs, where its config declares them (others are skipped).",
    )
    attacks: dict[str, dict] = Field(default_factory=dict, description="Per-attack fields.")
    evals: list[str] = Field(
        default_factory=lambda: ["harmbench", "xstest"],
        description="Eval suites scored before and after the attack.",
    )
    eval: dict[str, dict] = Field(default_factory=dict, description="Per-eval fields (e.g. limit).")
    backend: str = Field("hf", description="Generation back-end plugin.")
    generation: dict = Field(default_factory=dict, description="The back-end's config fields.")
    judges: dict[str, dict] = Field(default_factory=dict, description="Per-judge config fields.")


@dataclass
class Cell:
    """A resolved run: what each stage gets, and the hash that identifies the whole.

    ``method_label`` / ``attack_label`` name the cell in the results; they are the plugin names
    unless a matrix file names a variant (a plugin plus its own overrides).
    """

    preset: str
    resolved: dict
    method_label: str = ""
    attack_label: str = ""

    def __post_init__(self) -> None:
        self.method_label = self.method_label or self.resolved["method"]["name"]
        self.attack_label = self.attack_label or self.resolved["attack"]["name"]

    @property
    def config_hash(self) -> str:
        return stable_hash(self.resolved)


SECTIONS = (
    "model",
    "seed",
    "warmup",
    "method",
    "attack",
    "eval",
    "backend",
    "generation",
    "judges",
    "evals",
)


def resolve(
    method: str,
    attack: str,
    preset: str = "tiny",
    overrides: tuple[str, ...] = (),
    seed: Optional[int] = None,
    method_set: Optional[dict] = None,
    attack_set: Optional[dict] = None,
    method_label: str = "",
    attack_label: str = "",
) -> Cell:
    """Plugin defaults < preset < per-plugin preset section < --set overrides < a matrix
    variant's own fields (``method_set`` / ``attack_set``)."""
    from forgetbench.rewards.judged import inherit_judge_settings

    raw = load_preset(preset)
    preset_file = validate(PresetFile, raw, f"preset {preset!r}")
    method_plugin = registry.get("method", method)
    attack_plugin = registry.get("attack", attack)
    # A task named by its YAML file is known by its name from here on (stage keys, results).
    attack_label = attack_plugin.name if attack_label in ("", attack) else attack_label
    attack = attack_plugin.name
    tree = {
        "model": preset_file.model,
        "seed": preset_file.seed if seed is None else seed,
        "warmup": dict(preset_file.warmup),
        "method": deep_merge(
            declared_fields(method_plugin, preset_file.method), preset_file.methods.get(method, {})
        ),
        "attack": _attack_tree(
            attack_plugin,
            deep_merge(
                declared_fields(attack_plugin, preset_file.attack),
                preset_file.attacks.get(attack, {}),
            ),
        ),
        "evals": list(preset_file.evals),
        "eval": {name: dict(settings) for name, settings in preset_file.eval.items()},
        "backend": preset_file.backend,
        "generation": dict(preset_file.generation),
        "judges": {k: dict(v) for k, v in preset_file.judges.items()},
    }
    for text in overrides:
        path, value = parse_override(text)
        if path[0] not in SECTIONS:
            raise UsageError(
                f"--set {text!r}: unknown section {path[0]!r}; sections are {', '.join(SECTIONS)}"
            )
        if len(path) == 1:
            tree[path[0]] = value
        else:
            apply_override(tree, path, value)
    tree["method"] = deep_merge(tree["method"], method_set or {})
    tree["attack"] = deep_merge(tree["attack"], attack_set or {})
    canonical_task_names(tree)
    attack_config = attack_plugin.build_config(tree["attack"])
    # The attack's own task evals are scored beside the preset's, at every step.
    eval_names = list(dict.fromkeys([*tree["evals"], *getattr(attack_config, "task_evals", [])]))
    eval_configs = {}
    for name in eval_names:
        plugin = registry.get("eval", name)
        eval_configs[plugin.name] = dump(
            plugin.build_config(deep_merge(plugin.target, tree["eval"].get(plugin.name, {})))
        )
    judge_names = sorted(
        {m["judge"] for config in eval_configs.values() for m in config["metrics"]}
    )
    backend_plugin = registry.get("backend", tree["backend"])
    resolved = {
        "model": tree["model"],
        "seed": _seed(tree["seed"]),
        "warmup": dump(validate(WarmupConfig, tree["warmup"], "warmup")),
        # judges inside training take the run's judges.<name> settings (rewards/judged.py)
        "method": {
            "name": method,
            "config": dump(
                method_plugin.build_config(
                    inherit_judge_settings(
                        dump(method_plugin.build_config(tree["method"])), tree["judges"]
                    )
                )
            ),
        },
        "attack": {"name": attack, "config": dump(attack_config), **attack_steps(attack_config)},
        "evals": eval_configs,
        "backend": {
            "name": backend_plugin.name,
            "config": dump(backend_plugin.build_config(tree["generation"])),
        },
        "judges": {
            name: dump(registry.get("judge", name).build_config(tree["judges"].get(name)))
            for name in judge_names
        },
    }
    _check_disjoint(resolved)
    return Cell(preset, resolved, method_label, attack_label)


def canonical_task_names(tree: dict) -> None:
    """Training tasks and evals named by a YAML file's path, replaced by their names (registered
    by now, for this process and, through $FORGETBENCH_TASK_FILES, its stage processes)."""
    from forgetbench.task_sources import canonical_name

    tree["evals"] = [canonical_name("eval", name) for name in tree["evals"]]
    if isinstance(tree["attack"].get("task_evals"), list):
        tree["attack"]["task_evals"] = [
            canonical_name("eval", name) for name in tree["attack"]["task_evals"]
        ]
    for section, key in (("method", "train_task"), ("warmup", "task")):
        if isinstance(tree[section], dict) and key in tree[section]:
            tree[section][key] = canonical_name("train_task", tree[section][key])


def _check_disjoint(resolved: dict) -> None:
    """Fail before any work when a training task the cell uses holds prompts of its evals (evals
    read from a shipped file; a hub eval would need the network at planning time)."""
    tasks = {resolved["method"]["config"].get("train_task")}
    if resolved["warmup"]["enabled"]:
        tasks.add(resolved["warmup"]["task"])
    shipped = {
        name: config for name, config in resolved["evals"].items() if config["dataset"].get("path")
    }
    from forgetbench.tasks import tasks_dir

    for task in sorted(tasks - {None}):
        _check_task(str(tasks_dir()), task, json.dumps(shipped, sort_keys=True))


@lru_cache(maxsize=64)  # a matrix resolves many cells over the same task and evals
def _check_task(folder: str, train_task: str, evals_json: str) -> None:
    from forgetbench.stages.generate import eval_prompts
    from forgetbench.tasks import check_disjoint

    evals = json.loads(evals_json)
    check_disjoint(
        train_task,
        {
            name: [
                row["prompt"] for row in eval_prompts({"eval": {"name": name, "config": config}})
            ]
            for name, config in evals.items()
        },
    )


def declared_fields(plugin, shared: dict) -> dict:
    """The part of a preset's shared ``method:`` / ``attack:`` section that ``plugin``'s config
    declares. The shared section speaks for every plugin at once (GRPO's ``num_generations`` means
    nothing to an SFT method), so a field a plugin lacks is skipped there; the per-plugin sections,
    ``--set`` and matrix variants address one plugin and stay strict."""
    known = {
        field
        for other in registry.plugins(plugin.kind)
        if other.config is not None
        for field in other.config.model_fields
    }
    typos = sorted(set(shared) - known)
    if typos:  # a key no plugin of the kind declares is a typo, not a field for another plugin
        raise UsageError(
            f"preset `{plugin.kind}:` section: unknown key(s) {typos}; no "
            f"{plugin.kind} plugin declares them (see its config fields)"
        )
    fields = plugin.config.model_fields if plugin.config is not None else {}
    return {key: value for key, value in shared.items() if key in fields}


def _attack_tree(plugin, preset_attack: dict) -> dict:
    """The attack's YAML under the preset's fields. A preset's ``dataset`` replaces the YAML's
    whole (a hub dataset's columns are not the shipped file's), where other fields merge."""
    defaults = dict(plugin.target) if isinstance(plugin.target, dict) else {}
    if "dataset" in preset_attack:
        defaults.pop("dataset", None)
    return deep_merge(defaults, preset_attack)


def attack_steps(config) -> dict:
    """The attack's optimiser steps and the intermediate ones it saves (planned here, so a
    checkpoint interval larger than the run fails before any work)."""
    from forgetbench.attacks import AttackTask, planned_checkpoints, total_steps

    if not isinstance(config, AttackTask):  # a third-party attack plugin: final policy only
        return {"total_steps": None, "checkpoints": []}
    return {"total_steps": total_steps(config), "checkpoints": planned_checkpoints(config)}


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"seed must be an integer, got {value!r}")
    return value
