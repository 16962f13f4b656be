"""One cell of the matrix: resolve its config and plan its stages.

    warmup -> train(method) = P0 -> attack = P1
    P0, P1 -> generate(eval) -> judge -> results

A matrix (``forgetbench.matrix``) is a list of cells whose plans share every stage with the same
key; ``forgetbench run`` is the one-cell matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from forgetbench import registry
from forgetbench.config import (Field, StrictModel, apply_override, deep_merge, dump, load_preset,
                                parse_override, stable_hash, validate)
from forgetbench.errors import UsageError
from forgetbench.stages.plan import Stage
from forgetbench.stages.warmup import WarmupConfig


class PresetFile(StrictModel):
    """The shape of a preset YAML (forgetbench/presets/*.yaml)."""

    model: str = Field("smollm2-135m-instruct", description="Embedded model, local folder or "
                       "hub id.")
    seed: int = Field(0, description="Seed of every training stage.")
    warmup: dict = Field(default_factory=dict, description="WarmupConfig fields.")
    method: dict = Field(default_factory=dict, description="Fields applied to whichever method "
                         "runs.")
    methods: dict[str, dict] = Field(default_factory=dict, description="Per-method fields.")
    attack: dict = Field(default_factory=dict, description="Fields applied to whichever attack "
                         "runs.")
    attacks: dict[str, dict] = Field(default_factory=dict, description="Per-attack fields.")
    evals: list[str] = Field(default_factory=lambda: ["harmbench", "xstest"],
                             description="Eval suites scored before and after the attack.")
    eval: dict[str, dict] = Field(default_factory=dict, description="Per-eval fields (e.g. "
                                  "limit).")
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


SECTIONS = ("model", "seed", "warmup", "method", "attack", "eval", "backend", "generation",
            "judges", "evals")


def resolve(method: str, attack: str, preset: str = "tiny", overrides: tuple[str, ...] = (),
            seed: Optional[int] = None, method_set: Optional[dict] = None,
            attack_set: Optional[dict] = None, method_label: str = "",
            attack_label: str = "") -> Cell:
    """Plugin defaults < preset < per-plugin preset section < --set overrides < a matrix
    variant's own fields (``method_set`` / ``attack_set``)."""
    raw = load_preset(preset)
    preset_file = validate(PresetFile, raw, f"preset {preset!r}")
    method_plugin = registry.get("method", method)
    attack_plugin = registry.get("attack", attack)
    tree = {
        "model": preset_file.model,
        "seed": preset_file.seed if seed is None else seed,
        "warmup": dict(preset_file.warmup),
        "method": deep_merge(preset_file.method, preset_file.methods.get(method, {})),
        "attack": deep_merge(attack_plugin.target if isinstance(attack_plugin.target, dict) else {},
                             deep_merge(preset_file.attack, preset_file.attacks.get(attack, {}))),
        "evals": list(preset_file.evals),
        "eval": {name: dict(preset_file.eval.get(name, {})) for name in preset_file.evals},
        "backend": preset_file.backend,
        "generation": dict(preset_file.generation),
        "judges": {k: dict(v) for k, v in preset_file.judges.items()},
    }
    for text in overrides:
        path, value = parse_override(text)
        if path[0] not in SECTIONS:
            raise UsageError(f"--set {text!r}: unknown section {path[0]!r}; sections are "
                             f"{', '.join(SECTIONS)}")
        if len(path) == 1:
            tree[path[0]] = value
        else:
            apply_override(tree, path, value)
    tree["method"] = deep_merge(tree["method"], method_set or {})
    tree["attack"] = deep_merge(tree["attack"], attack_set or {})
    eval_configs = {}
    for name in tree["evals"]:
        plugin = registry.get("eval", name)
        eval_configs[name] = dump(plugin.build_config(deep_merge(plugin.target, tree["eval"].get(name, {}))))
    judge_names = sorted({m["judge"] for config in eval_configs.values() for m in config["metrics"]})
    backend_plugin = registry.get("backend", tree["backend"])
    resolved = {
        "model": tree["model"],
        "seed": _seed(tree["seed"]),
        "warmup": dump(validate(WarmupConfig, tree["warmup"], "warmup")),
        "method": {"name": method, "config": dump(method_plugin.build_config(tree["method"]))},
        "attack": {"name": attack, "config": dump(attack_plugin.build_config(tree["attack"]))},
        "evals": {name: eval_configs[name] for name in tree["evals"]},
        "backend": {"name": backend_plugin.name,
                    "config": dump(backend_plugin.build_config(tree["generation"]))},
        "judges": {name: dump(registry.get("judge", name).build_config(tree["judges"].get(name)))
                   for name in judge_names},
    }
    return Cell(preset, resolved, method_label, attack_label)


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"seed must be an integer, got {value!r}")
    return value


@dataclass
class CellPlan:
    cell: Cell
    policies: dict[str, Stage]  # phase ("before", "after") -> policy stage
    judged: list[tuple[str, str, str, Stage]]  # (phase, eval, judge, judge stage)

    def targets(self) -> list[Stage]:
        return [stage for *_, stage in self.judged]


def plan(cell: Cell) -> CellPlan:
    r = cell.resolved
    base = {"model": r["model"], "seed": r["seed"]}
    inputs = {}
    if r["warmup"]["enabled"]:
        inputs["policy"] = Stage("warmup", "warmup", {**base, "warmup": r["warmup"]})
    method = r["method"]["name"]
    trained = Stage("train", f"train {method}", {**base, "method": r["method"]}, inputs)
    attacked = Stage("attack", f"attack {method}+{r['attack']['name']}",
                     {"seed": r["seed"], "attack": r["attack"]}, {"policy": trained})
    policies = {"before": trained, "after": attacked}
    judged = []
    for phase, policy in policies.items():
        for eval_name, eval_config in r["evals"].items():
            generated = Stage("generate", f"generate {eval_name} {phase}",
                              {"eval": {"name": eval_name, "config": eval_config},
                               "backend": r["backend"]}, {"policy": policy})
            for judge_name in sorted({m["judge"] for m in eval_config["metrics"]}):
                judged.append((phase, eval_name, judge_name, Stage(
                    "judge", f"judge {eval_name} {phase} {judge_name}",
                    {"judge": {"name": judge_name, "config": r["judges"][judge_name]},
                     "eval": eval_name}, {"generations": generated})))
    return CellPlan(cell, policies, judged)
