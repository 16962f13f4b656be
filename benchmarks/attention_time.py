"""Seconds per generate stage's decoding with transformers' ``sdpa`` against ``sdpa_grouped``
(forgetbench/attention.py), side by side on one loaded model.

    FORGETBENCH_THREADS=2 python benchmarks/attention_time.py [--repeats 4] [--preset tiny]
        [--model PATH]

The preset's evaluation suite (tiny: HarmBench and XSTest, 50 prompts each), one
``generate_loaded`` call per eval as a generate stage makes it, with the preset's generation
settings. The model is loaded once and switched between the two attention functions; passes
alternate (A B, B A, ...) so machine drift hits both. Prints the seconds per pass of each, B's
ratio to A with a bootstrap 95% interval (benchmarks/method_step_time.py's), and whether every
token is the same.
"""

from __future__ import annotations

import argparse
import statistics
import time

from method_step_time import ratio_interval

from forgetbench.attention import NAME
from forgetbench.backends.base import (
    GenerationConfig,
    eos_ids,
    prepare_prompts,
    prompt_budget,
    resolve_policy,
)
from forgetbench.backends.hf import generate_loaded, load_weights
from forgetbench.cell import resolve
from forgetbench.models import load_tokenizer, resolve_model, set_threads
from forgetbench.stages.generate import eval_prompts


def eval_suite(preset: str, model: str | None):
    """(cell, generation config, policy, tokenizer, stop ids, prompts per eval): the preset's
    evaluation suite rendered as its generate stages render it."""
    cell = resolve("grpo", "alpaca", preset)
    config = GenerationConfig(**cell.resolved["backend"]["config"])
    policy = resolve_policy(resolve_model(model or cell.resolved["model"]))
    tokenizer = load_tokenizer(policy.tokenizer)
    _, budget = prompt_budget(config, policy.model)
    evals = [
        prepare_prompts(
            tokenizer,
            [row["prompt"] for row in eval_prompts({"eval": {"name": name, "config": settings}})],
            budget,
            config.overlong_prompts,
        )
        for name, settings in cell.resolved["evals"].items()
    ]
    return cell, config, policy, tokenizer, eos_ids(tokenizer, policy.model), evals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", default=None, help="model folder (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=4, help="timed passes of each")
    args = parser.parse_args()
    threads = set_threads()
    _, config, policy, tokenizer, stop, evals = eval_suite(args.preset, args.model)
    model = load_weights(policy)
    variants = {"A": "sdpa", "B": NAME}
    times: dict[str, list[float]] = {"A": [], "B": []}
    tokens: dict[str, list] = {}
    for run in range(args.repeats + 1):  # the first pass of each is a warm-up, not timed
        for name in ("A", "B") if run % 2 == 0 else ("B", "A"):
            model.set_attn_implementation(variants[name])
            start = time.perf_counter()
            out = [generate_loaded(config, model, tokenizer, stop, rows) for rows in evals]
            seconds = time.perf_counter() - start
            tokens[name] = [g.token_ids for generations in out for g in generations]
            if run:
                times[name].append(seconds)
            print(f"pass {run} {name} ({variants[name]}): {seconds:.2f} s", flush=True)
    print(
        f"\nconfig: preset {args.preset}, threads {threads}, {sum(map(len, evals))} prompts, "
        f"max_new_tokens {config.max_new_tokens}, batch {config.batch_size}"
    )
    for name in ("A", "B"):
        low, high = ratio_interval(times[name], times["A"])
        print(
            f"{name} {variants[name]}: median {statistics.median(times[name]):.2f} s per pass "
            f"({' '.join(f'{t:.2f}' for t in times[name])}), ratio to A "
            f"{statistics.median(times[name]) / statistics.median(times['A']):.3f} "
            f"[95% CI {low:.3f}, {high:.3f}]"
        )
    same = tokens["A"] == tokens["B"]
    print(f"tokens identical: {same} ({len(tokens['A'])} responses)")


if __name__ == "__main__":
    main()
