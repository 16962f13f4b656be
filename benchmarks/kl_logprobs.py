"""What recording the policy's log-probs while it generates costs a generate stage and saves a
KL stage, side by side on one machine.

    FORGETBENCH_THREADS=2 python benchmarks/kl_logprobs.py --policy RUN/stages/attack/*/model \
        --reference RUN/stages/train/*/model [--repeats 2] [--preset tiny]

RUN is a finished main job (``forgetbench run --method frpo --attack alpaca``): the attacked
policy and P0 (the method's policy) are what its step-13 and final KL stages measure. On the
preset's evaluation suite (tiny: HarmBench, XSTest, Alpaca helpfulness):
1. generation (one ``generate_loaded`` call per eval, as a generate stage makes it) without
   recording log-probs (A) and with (B): seconds per pass, and whether every token is the same;
2. the KL stage's computation on B's rollouts, the policy run over them (A, as before) against
   its recorded log-probs (B): seconds per pass and the largest relative difference of the
   per-rollout KL values (its "identical" count: values equal to 4 decimals).
Passes alternate (``attention_time.side_by_side``); each variant's first pass is a warm-up.
"""

from __future__ import annotations

import argparse

from attention_time import eval_suite, side_by_side

from forgetbench.backends.base import resolve_policy
from forgetbench.backends.hf import generate_loaded, load_weights
from forgetbench.models import set_threads
from forgetbench.stages import kl


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="the measured policy's model folder")
    parser.add_argument("--reference", required=True, help="P0's model folder")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    threads = set_threads()
    _, config, policy, tokenizer, stop, evals = eval_suite(args.preset, args.policy)
    model = load_weights(policy)
    print(f"policy {args.policy}, P0 {args.reference}, {threads} thread(s)", flush=True)
    generated = {}

    def generate(name):
        generated[name] = [
            generate_loaded(config, model, tokenizer, stop, prompts, record_logprobs=name == "B")
            for prompts in evals
        ]
        return [g.token_ids for suite in generated[name] for g in suite]

    side_by_side(
        "generation", {"A": "no log-probs", "B": "log-probs recorded"}, generate, args.repeats
    )

    # The KL stage's inputs as it reads them: each rollout's scored ids, log-probs where usable.
    rollouts = []
    for prompts, suite in zip(evals, generated["B"]):
        records = [
            {
                "response": g.response,
                "finish_reason": g.finish_reason,
                "logprob_ids": list(g.logprob_ids),
                "logprobs": list(g.logprobs),
            }
            for g in suite
        ]
        responses = [kl.response_ids(tokenizer, record) for record in records]
        pairs = [(list(p.token_ids), response) for p, response in zip(prompts, responses)]
        recorded = [kl.recorded_logprobs(r, ids) for r, ids in zip(records, responses)]
        rollouts.append((pairs, recorded))
    usable = sum(x is not None for _, recorded in rollouts for x in recorded)
    total = sum(len(recorded) for _, recorded in rollouts)
    print(f"rollouts whose recorded log-probs the KL stage uses: {usable} of {total}")
    values = {}
    reference = resolve_policy(args.reference)

    def measure(name):
        values[name] = [
            value
            for pairs, recorded in rollouts
            for value in kl._sequence_kls(
                policy,
                reference,
                pairs,
                recorded if name == "B" else [None] * len(pairs),
                tokenizer,
                "cpu",
            )
        ]
        return [round(value, 4) for value in values[name]]

    side_by_side(
        "KL", {"A": "policy run", "B": "policy's recorded log-probs"}, measure, args.repeats
    )
    worst = max(abs(b - a) / max(abs(a), 1e-12) for a, b in zip(values["A"], values["B"]))
    mean_a, mean_b = (sum(values[n]) / len(values[n]) for n in ("A", "B"))
    print(f"KL values: largest relative difference {worst:.2e}; mean {mean_a:.6f} -> {mean_b:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
