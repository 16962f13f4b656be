"""A downstream fine-tuning regime: policy P0 -> attacked policy P1."""

from __future__ import annotations

from pathlib import Path

from forgetbench.stages.policy import policy_path, run_policy_plugin


def run(config: dict, inputs: dict[str, Path], out: Path) -> None:
    from forgetbench import registry
    from forgetbench.attacks import run_attack

    plugin = registry.get("attack", config["attack"]["name"])
    settings = plugin.build_config(config["attack"]["config"])
    # Absolute: a LoRA attack's checkpoints name this folder as their adapters' base.
    start = str(Path(policy_path(inputs["policy"])).resolve())
    if isinstance(plugin.target, dict):  # an in-tree attack task (YAML)
        run_attack(settings, start, out, config["seed"])
    else:
        run_policy_plugin(plugin, settings, start, out, config["seed"])
