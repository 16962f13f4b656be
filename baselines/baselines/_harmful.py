"""Harmful answers as training data (Booster's harmful loss, deep alignment's prefixes).

Official recipes use BeaverTails' harmful answers; here they are the greedy answers of an unaligned
model (by default the raw embedded model, which complies with harmful requests) to the training
task's harmful prompts, generated in the method's own train stage and saved beside its policy as
``harmful_answers.jsonl``. Answers that open with a refusal are dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

from forgetbench import (
    Field,
    ForgetbenchError,
    generate_responses,
    load_train_prompts,
    match_refusal,
)

from baselines.safety_sft import SafetySFTConfig

ANSWERS_FILE = "harmful_answers.jsonl"


class HarmfulAnswersConfig(SafetySFTConfig):
    harmful_model: str = Field(
        "smollm2-135m-instruct",
        description="The model whose greedy "
        "answers to the harmful prompts are the harmful data: an unaligned "
        "model that complies (the raw embedded model does).",
    )
    harmful_max_new_tokens: int = Field(64, ge=1, description="Tokens per harmful answer.")


def harmful_pairs(config: HarmfulAnswersConfig, out_dir: Path, who: str) -> list[tuple[str, str]]:
    """(harmful prompt, harmful answer): ``harmful_model``'s greedy answers to the training task's
    harmful prompts, refusals dropped; saved to ``out_dir/harmful_answers.jsonl``."""
    prompts = [row["prompt"] for row in load_train_prompts(config.train_task, config.n_harmful, 0)]
    if not prompts:
        raise ForgetbenchError(f"{who} needs harmful prompts: set n_harmful >= 1")
    answers = generate_responses(config.harmful_model, prompts, config.harmful_max_new_tokens)
    pairs = [
        (prompt, answer.strip())
        for prompt, answer in zip(prompts, answers)
        if answer.strip() and match_refusal(answer, 200) is None
    ]
    with open(out_dir / ANSWERS_FILE, "w") as handle:
        for prompt, answer in pairs:
            handle.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
    if not pairs:
        raise ForgetbenchError(
            f"{who}: harmful_model {config.harmful_model!r} refused (or left "
            f"empty) all {len(prompts)} harmful prompts, so there are no "
            "harmful answers; set harmful_model to an unaligned model"
        )
    return pairs
