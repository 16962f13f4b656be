"""How well each trained policy of a run predicts harmful answers: the mean per-token NLL of the
harmful answers a method trained against, under the warm-up policy and under every P0.

    python benchmarks/harmful_nll.py --output-dir RUNS [--answers baselines-booster]

The answers are ``harmful_answers.jsonl`` of the first train stage whose folder starts with
``--answers`` (Booster and deep alignment write them: the raw embedded model's greedy answers to
the harmful training prompts). Each answer is scored after its prompt in the chat template, on
the answer's tokens only. A policy whose NLL fell below the warm-up's learned those answers: this
is how Booster's low P0 refusal on ``tiny`` was traced to its harmful-perturbation term (issue
12's table). Evaluation only; one forward pass per answer per policy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def mean_nll(path: Path, rows: list[dict]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from forgetbench.models import load_tokenizer

    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": row["prompt"]}],
                tokenize=False,
                add_generation_prompt=True,
            )
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + answer_ids])
            logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]
            total += float(
                torch.nn.functional.cross_entropy(
                    logits, ids[0, len(prompt_ids) :], reduction="sum"
                )
            )
            count += len(answer_ids)
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--answers", default="baselines-booster")
    args = parser.parse_args()
    from forgetbench.models import set_threads

    set_threads()
    stages = args.output_dir / "stages"
    found = sorted(stages.glob(f"train/{args.answers}-*/harmful_answers.jsonl"))
    if not found:
        raise SystemExit(f"no train stage {args.answers}-* with harmful_answers.jsonl in {stages}")
    rows = [json.loads(line) for line in found[0].open()]
    policies = [("warm-up", folder / "model") for folder in sorted(stages.glob("warmup/*/"))]
    for folder in sorted(stages.glob("train/*/")):
        request = json.loads((folder / "request.json").read_text())
        policies.append(
            (
                f"{request['config']['method']['name']} seed {request['config']['seed']}",
                folder / "model",
            )
        )
    print(f"mean NLL per token of the {len(rows)} harmful answers of {found[0].parent.name}")
    for name, path in policies:
        if path.is_dir():
            print(f"  {name:34s} {mean_nll(path, rows):.3f}")


if __name__ == "__main__":
    main()
