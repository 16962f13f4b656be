"""Decoding with MKL's linears against oneDNN's with the weights packed once, side by side on
one loaded model: a lever for issue 17 measured, not taken (README, "What is left").

    FORGETBENCH_THREADS=2 python benchmarks/packed_decode.py [--repeats 3] [--preset tiny]
        [--model PATH]

At few rows per decoded token (a GRPO step's 16 rollouts, an eval's 30-50 prompts) torch's
``F.linear`` goes to MKL's sgemm, which packs the weight at every call: a (16 x 576) by
(576 x 1536) product costs about as much as one of 50 rows. oneDNN can pack each weight once
(``torch.ops.mkldnn._reorder_linear_weight``, then ``_linear_pointwise``: what inductor's
freezing pass emits on CPU). Two workloads, each timed with both, passes alternated (A B, B A,
...), the first of each a warm-up: the preset's evaluation suite (one ``generate_loaded`` call per
eval, as a generate stage makes it, greedy) and a GRPO step's rollouts (the method's
prompts_per_step x num_generations samples of max_completion_length tokens, sampled at
temperature 1, forced to full length). Prints seconds per pass, B's ratio to A with a bootstrap
95% interval, how many responses are identical, and the largest logit difference on one batch:
oneDNN sums in another order, so the logits are not bit-identical and tokens agree only where
no near-tie flips.
"""

from __future__ import annotations

import argparse

from attention_time import eval_suite, side_by_side

from forgetbench.backends.base import GenerationConfig
from forgetbench.backends.hf import generate_loaded, load_weights
from forgetbench.models import set_threads


def packed_linears(model, rows: int):
    """``model`` with every ``nn.Linear`` computed by oneDNN on a weight packed once for about
    ``rows`` rows (inference only: the packed weight has no gradient)."""
    import torch

    class PackedLinear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
            self.bias = None if linear.bias is None else linear.bias.detach()
            self.out_features = linear.out_features

        def forward(self, x):
            flat = x.reshape(-1, x.shape[-1])
            y = torch.ops.mkldnn._linear_pointwise(flat, self.weight, self.bias, "none", [], "")
            return y.reshape(*x.shape[:-1], self.out_features)

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, PackedLinear(child))
    return model


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", default=None, help="model folder (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each")
    args = parser.parse_args()
    threads = set_threads()
    cell, config, policy, tokenizer, stop, evals = eval_suite(args.preset, args.model)
    method = cell.resolved["method"]["config"]
    rollouts = GenerationConfig(
        max_new_tokens=method["max_completion_length"],
        temperature=1.0,
        n=method["num_generations"],
        batch_size=method["prompts_per_step"],
    )
    rollout_prompts = evals[0][: method["prompts_per_step"]]
    print(
        f"config: preset {args.preset}, threads {threads}, evals {sum(map(len, evals))} prompts x "
        f"{config.max_new_tokens} tokens; rollouts {len(rollout_prompts)} x {rollouts.n} x "
        f"{rollouts.max_new_tokens} tokens\n"
    )

    mkl = load_weights(policy)
    suite = {"A": mkl, "B": packed_linears(load_weights(policy), max(map(len, evals)))}
    with torch.inference_mode():
        probe = tokenizer.pad(
            {"input_ids": [p.token_ids for p in evals[0]]}, padding=True, return_tensors="pt"
        )
        gap = (suite["A"](**probe).logits - suite["B"](**probe).logits).abs().max().item()
    print(f"largest logit difference on {len(evals[0])} prompts: {gap:.3g}\n")

    def full_length(model):
        model.generation_config.min_new_tokens = rollouts.max_new_tokens
        return model

    variants = {"A": "MKL", "B": "oneDNN packed"}
    side_by_side(
        "eval suite",
        variants,
        lambda name: [
            g.token_ids
            for rows in evals
            for g in generate_loaded(config, suite[name], tokenizer, stop, rows)
        ],
        args.repeats,
    )
    step = {
        "A": full_length(mkl),
        "B": full_length(packed_linears(load_weights(policy), rollouts.batch_size * rollouts.n)),
    }
    side_by_side(
        "rollouts",
        variants,
        lambda name: [
            g.token_ids
            for g in generate_loaded(rollouts, step[name], tokenizer, stop, rollout_prompts)
        ],
        args.repeats,
    )


if __name__ == "__main__":
    main()
