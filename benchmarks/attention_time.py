"""Seconds per generate stage's decoding with transformers' ``sdpa`` against ``sdpa_grouped``
(forgetbench/attention.py), side by side on one loaded model.

    FORGETBENCH_THREADS=2 python benchmarks/attention_time.py [--repeats 4] [--preset tiny]
        [--model PATH]

The preset's evaluation suite (tiny: HarmBench and XSTest, 50 prompts each), one
``generate_loaded`` call per eval as a generate stage makes it, with the preset's generation
settings. The model is loaded once and switched between the two attention functions; passes
alternate (A B, B A, ...) so machine drift hits both. Prints the seconds per pass of each, B's
ratio to A with a bootstrap 95% interval (benchmarks/method_step_time.py's), and how many
responses are identical (``side_by_side``, shared with benchmarks/packed_decode.py).
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


def side_by_side(label: str, variants: dict[str, str], work, repeats: int) -> None:
    """Time ``work(name)`` (the responses' token ids) for variants A and B (name -> what it is),
    passes alternated (A B, B A, ...) so machine drift hits both, the first of each a warm-up;
    print each pass, the medians, B's ratio to A with a bootstrap 95% interval and how many
    responses are identical."""
    times: dict[str, list[float]] = {"A": [], "B": []}
    tokens: dict[str, list] = {}
    for run in range(repeats + 1):
        for name in ("A", "B") if run % 2 == 0 else ("B", "A"):
            start = time.perf_counter()
            tokens[name] = work(name)
            seconds = time.perf_counter() - start
            if run:
                times[name].append(seconds)
            print(f"{label} pass {run} {name} ({variants[name]}): {seconds:.2f} s", flush=True)
    low, high = ratio_interval(times["B"], times["A"])
    median = {name: statistics.median(values) for name, values in times.items()}
    same = sum(a == b for a, b in zip(tokens["A"], tokens["B"]))
    print(
        f"{label}: A ({variants['A']}) median {median['A']:.2f} s, B ({variants['B']}) median "
        f"{median['B']:.2f} s, ratio B/A {median['B'] / median['A']:.3f} "
        f"[95% CI {low:.3f}, {high:.3f}]; responses identical {same} of {len(tokens['A'])}\n"
    )


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
    print(
        f"config: preset {args.preset}, threads {threads}, {sum(map(len, evals))} prompts, "
        f"max_new_tokens {config.max_new_tokens}, batch {config.batch_size}\n"
    )

    def decode(name: str) -> list:
        model.set_attn_implementation(variants[name])
        return [
            g.token_ids
            for rows in evals
            for g in generate_loaded(config, model, tokenizer, stop, rows)
        ]

    side_by_side("eval suite", variants, decode, args.repeats)


if __name__ == "__main__":
    main()
