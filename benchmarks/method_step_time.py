"""Seconds per optimiser step of FRPO and GRPO, side by side on the same config and seed.

    python benchmarks/method_step_time.py [--steps 4] [--repeats 2] [--set method.num_generations=8]

The paper claims FRPO costs no extra compute over GRPO (methods.md §1.3). Both methods run the
tiny preset's method settings through the real TRL loop on the embedded model. Completions are
forced to the full ``max_completion_length`` (min_new_tokens) so both do identical generation
work whatever their policies say; the runs alternate (GRPO, FRPO, FRPO, GRPO, ...) so machine
drift hits both. The first step of each run is a warm-up and is not timed. Prints the median
seconds per step of each method and the ratio FRPO / GRPO (target <= 1.02).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from forgetbench import registry
from forgetbench.config import apply_override, parse_override
from forgetbench.models import resolve_model, set_threads
from forgetbench.pipeline import resolve


def step_times(method: str, config, model_path: str, out: Path) -> list[float]:
    from transformers import TrainerCallback

    import forgetbench.methods.rl as rl

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    rl.TRAINER_CALLBACKS[:] = [Clock()]
    rl.GENERATION_KWARGS.update(min_new_tokens=config.max_completion_length)
    try:
        registry.get("method", method).target(config, model_path, out, 0)
    finally:
        rl.TRAINER_CALLBACKS.clear()
        rl.GENERATION_KWARGS.clear()
    # Step k spans on_step_begin(k) .. on_step_end(k): generation, scoring, loss, backward, step.
    return [end - begin for begin, end in zip(marks[0::2], marks[1::2])][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per run (the "
                        "first is not timed)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method, interleaved")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override shared by both methods, e.g. method.beta=0.01")
    args = parser.parse_args()
    threads = set_threads()

    configs = {}
    for method in ("grpo", "frpo"):
        cell = resolve(method, "alpaca", args.preset,
                       [*args.overrides, f"method.max_steps={args.steps}"], seed=0)
        configs[method] = registry.get("method", method).build_config(
            cell.resolved["method"]["config"])
    model_path = resolve_model(cell.resolved["model"])
    order = [m for r in range(args.repeats) for m in (("grpo", "frpo") if r % 2 == 0
                                                      else ("frpo", "grpo"))]
    times: dict[str, list[float]] = {"grpo": [], "frpo": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run, method in enumerate(order):
            times[method] += step_times(method, configs[method], model_path, Path(tmp) / str(run))
            print(f"run {run + 1}/{len(order)} {method}: "
                  + " ".join(f"{t:.2f}" for t in times[method][-(args.steps - 1):]), flush=True)

    c = configs["frpo"]
    print(f"\nconfig: preset {args.preset}, G={c.num_generations}, "
          f"{c.prompts_per_step} prompts/step, {c.max_completion_length} completion tokens "
          f"(forced), grad_accum {c.grad_accum}, lora_r {c.lora_r}, threads {threads}, "
          f"beta grpo {configs['grpo'].beta} / frpo {c.beta}")
    medians = {m: statistics.median(t) for m, t in times.items()}
    for method, values in times.items():
        print(f"{method}: median {medians[method]:.2f} s/step over {len(values)} steps "
              f"(min {min(values):.2f}, max {max(values):.2f})")
    print(f"ratio frpo/grpo: {medians['frpo'] / medians['grpo']:.3f}  (target <= 1.02)")


if __name__ == "__main__":
    main()
