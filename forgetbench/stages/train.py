"""Base training by a method plugin: warm-up policy (or base model) -> policy P0 in ``model/``."""

from __future__ import annotations

from pathlib import Path

from forgetbench.stages.policy import policy_path, run_policy_plugin


def run(config: dict, inputs: dict[str, Path], out: Path) -> None:
    from forgetbench import registry
    from forgetbench.models import resolve_model

    plugin = registry.get("method", config["method"]["name"])
    settings = plugin.build_config(config["method"]["config"])
    start = policy_path(inputs["policy"]) if "policy" in inputs else resolve_model(config["model"])
    run_policy_plugin(plugin, settings, start, out, config["seed"])
