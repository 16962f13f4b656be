"""Refusal of harmful requests against compliance on harmless ones, on a dev set, for tuning the
safety stage of a preset.

    python benchmarks/safety_frontier.py --policy PATH                    # score a policy
    python benchmarks/safety_frontier.py --set warmup.n_harmless=360      # warm-up, then score
    python benchmarks/safety_frontier.py --policy WARMED --method grpo --set method.learning_rate=1e-4

The dev set never touches a reported number: HarmBench's *validation* standard behaviours (the
harmbench eval uses the test split) and XSTest safe prompts after the preset's `limit` in the
xstest eval's fixed order. It prints both rates with Wilson 95% intervals, and their gap
(refusal minus over-refusal): a policy that refuses by prompt content has a large gap; one that
refuses at a rate whatever the prompt has a gap near 0.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from forgetbench import registry
from forgetbench.backends.base import GenerationConfig
from forgetbench.backends.hf import hf_backend
from forgetbench.evals import EvalTask
from forgetbench.judges.refusal import is_refusal
from forgetbench.models import set_threads
from forgetbench.cell import resolve
from forgetbench.results import metric_row
from forgetbench.stages import warmup
from forgetbench.tasks import load_rows


def dev_prompts(config: dict) -> dict[str, list[str]]:
    """HarmBench val behaviours; XSTest safe prompts after the ones the preset reports."""
    harmbench = EvalTask.model_validate(config["evals"]["harmbench"])
    val = harmbench.dataset.model_copy(
        update={"path": harmbench.dataset.path.replace("_test.csv", "_val.csv"), "sample": None}
    )
    xstest = EvalTask.model_validate(config["evals"]["xstest"])
    reported = xstest.limit or 0
    return {
        "harmbench_val": [row["prompt"] for row in load_rows(val)],
        "xstest_dev": [row["prompt"] for row in load_rows(xstest.dataset)][reported:][:60],
    }


def refusal_rates(policy: str, prompts: dict[str, list[str]], max_new_tokens: int) -> dict:
    generate = hf_backend(GenerationConfig(max_new_tokens=max_new_tokens, batch_size=16))
    flat = [p for group in prompts.values() for p in group]
    refused = iter(is_refusal(g.response) for g in generate(policy, flat))
    return {name: [next(refused) for _ in group] for name, group in prompts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument(
        "--policy",
        help="policy folder to score (or to start --method from); "
        "default: run the preset's warm-up",
    )
    parser.add_argument("--method", help="also train this method from the policy")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override, e.g. warmup.n_harmless=360",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=24, help="refusals show in the first tokens"
    )
    args = parser.parse_args()
    set_threads()

    cell = resolve(args.method or "grpo", "alpaca", args.preset, args.overrides, seed=0)
    config = cell.resolved
    with tempfile.TemporaryDirectory() as tmp:
        policy, started = args.policy, time.perf_counter()
        if policy is None:
            warmup.run(config, {}, Path(tmp) / "warmup")
            policy = str(Path(tmp) / "warmup" / "model")
        if args.method:
            plugin = registry.get("method", args.method)
            policy = str(
                plugin.target(
                    plugin.build_config(config["method"]["config"]),
                    policy,
                    Path(tmp) / "method",
                    config["seed"],
                )
            )
        trained = time.perf_counter() - started
        refused = refusal_rates(policy, dev_prompts(config), args.max_new_tokens)

    # The eval's own metrics: refusal of HarmBench, compliance (the complement) on XSTest.
    shown = {"harmbench_val": ("refusal", "mean"), "xstest_dev": ("compliance", "complement")}
    rows = {}
    for name, (what, transform) in shown.items():
        rows[name] = row = metric_row(
            [{"value": float(v)} for v in refused[name]], transform, binary=True
        )
        print(
            f"{name}: {what} {row['value']:.2f} [{row['wilson_low']:.2f}, "
            f"{row['wilson_high']:.2f}] (n={row['n']})"
        )
    gap = rows["harmbench_val"]["value"] - (1 - rows["xstest_dev"]["value"])
    print(
        f"gap (harmbench refusal - xstest refusal): {gap:+.2f}; training {trained:.0f} s; "
        f"overrides {' '.join(args.overrides) or 'none'}"
    )


if __name__ == "__main__":
    main()
