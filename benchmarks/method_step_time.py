"""Seconds per optimiser step of several methods, side by side on the same preset and seed.

    python benchmarks/method_step_time.py [--methods grpo,frpo,baselines/sam_grpo] [--steps 4]
        [--repeats 2] [--set method.num_generations=8]
    python benchmarks/method_step_time.py --methods "frpo,frpo[gradient_checkpointing=false]"

A method may carry its own settings in brackets (``name[key=value;key=value]``, keys of its
config): two variants of one method side by side, e.g. gradient checkpointing on and off.

The paper claims FRPO costs no extra compute over GRPO (docs/methods.md §1.3); the baselines cost more
(SAM and Vaccine two passes, Booster three). Every method runs the preset's method settings
through its real loop on the embedded model; the first method is the reference of the ratios.
GRPO-family completions are forced to the full ``max_completion_length`` (the config's
``generation_kwargs: {min_new_tokens: ...}``) so all do identical generation work whatever their
policies say; the runs rotate (A B C, B C A, ...) so machine drift hits all. Step times come from
``step_seconds`` in each run's ``log_history.json`` (every loop logs it); the first step of each
run is a warm-up and is not timed. Prints the median seconds per step and the ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from pathlib import Path

from forgetbench import registry
from forgetbench.models import resolve_model, set_threads
from forgetbench.cell import resolve


def step_times(variant: str, config, model_path: str, out: Path) -> list[float]:
    registry.get("method", parse_variant(variant)[0]).target(config, model_path, out, 0)
    history = json.loads((out / "log_history.json").read_text())
    return [entry["step_seconds"] for entry in history if "step_seconds" in entry][1:]


def parse_variant(text: str) -> tuple[str, dict]:
    """``name[key=value;key=value]`` -> (name, {key: value}) with YAML-typed values."""
    import yaml

    name, _, settings = text.partition("[")
    own = {}
    for item in filter(None, settings.rstrip("]").split(";")):
        key, _, value = item.partition("=")
        own[key.strip()] = yaml.safe_load(value)
    return name.strip(), own


def method_config(variant: str, preset: str, overrides: list[str], steps: int):
    method, own = parse_variant(variant)
    plugin = registry.get("method", method)
    fields = plugin.config.model_fields if plugin.config is not None else {}
    own = {**own, "max_steps": steps}
    cell = resolve(method, "alpaca", preset, overrides, seed=0, method_set=own)
    values = cell.resolved["method"]["config"]
    if "generation_kwargs" in fields:  # fixed-length rollouts: equal generation work
        forced = {**values["generation_kwargs"], "min_new_tokens": values["max_completion_length"]}
        values = {**values, "generation_kwargs": forced}
    return plugin.build_config(values), cell.resolved["model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods",
        default="grpo,frpo",
        help="comma-separated method plugins; the first is the reference of the ratios",
    )
    parser.add_argument(
        "--steps", type=int, default=4, help="optimiser steps per run (the first is not timed)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per method, rotated")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override shared by all methods, e.g. method.beta=0.01",
    )
    args = parser.parse_args()
    threads = set_threads()
    methods = [name.strip() for name in re.split(r",(?![^\[]*\])", args.methods) if name.strip()]

    configs = {}
    for method in methods:
        configs[method], model = method_config(method, args.preset, args.overrides, args.steps)
    model_path = resolve_model(model)
    order = [
        methods[(r + i) % len(methods)] for r in range(args.repeats) for i in range(len(methods))
    ]
    times: dict[str, list[float]] = {method: [] for method in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for run, method in enumerate(order):
            times[method] += step_times(method, configs[method], model_path, Path(tmp) / str(run))
            print(
                f"run {run + 1}/{len(order)} {method}: "
                + " ".join(f"{t:.2f}" for t in times[method][-(args.steps - 1) :]),
                flush=True,
            )

    print(f"\nconfig: preset {args.preset}, threads {threads}, {args.steps} steps per run")
    for method, config in configs.items():
        shape = {
            k: getattr(config, k)
            for k in (
                "num_generations",
                "prompts_per_step",
                "max_completion_length",
                "grad_accum",
                "batch_size",
                "lora_r",
                "beta",
            )
            if hasattr(config, k)
        }
        print(f"  {method}: {shape}")
    medians = {m: statistics.median(t) for m, t in times.items()}
    reference = methods[0]
    for method, values in times.items():
        low, high = ratio_interval(values, times[reference])
        print(
            f"{method}: median {medians[method]:.2f} s/step over {len(values)} steps "
            f"(min {min(values):.2f}, max {max(values):.2f}), "
            f"ratio to {reference} {medians[method] / medians[reference]:.3f} "
            f"[95% CI {low:.3f}, {high:.3f}]"
        )


def ratio_interval(values: list[float], reference: list[float], resamples: int = 5000):
    """Percentile-bootstrap 95% interval of median(values) / median(reference), the steps of
    each resampled on their own (seed 0: the same interval for the same times)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = np.asarray(values), np.asarray(reference)
    ratios = np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1) / np.median(
        b[rng.integers(0, len(b), (resamples, len(b)))], axis=1
    )
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


if __name__ == "__main__":
    main()
