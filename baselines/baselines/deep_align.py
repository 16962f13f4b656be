"""Deep safety alignment by data augmentation (Qi et al., "Safety Alignment Should Be Made More
Than Just a Few Tokens Deep", ICLR 2025, arXiv 2406.05946).

    forgetbench run --method baselines/deep_align --attack alpaca

Safety-recovery examples: for each harmful prompt x with refusal y_r and harmful answer y_h, with
probability ``augment_prob`` the row is x, then the first k tokens of y_h (k uniform in
1..min(max_prefix_tokens, |y_h|)) as the start of the assistant turn, then y_r; the loss is on
y_r's tokens only (the prefix sits in the row's prompt, which TRL masks). Otherwise the row is the
plain (x, y_r). Benign anchor rows (the harmless prompts with their reference answers) are mixed
in, so the model keeps answering. The refusals and anchors are ``baselines/safety_sft``'s data;
the harmful answers come from ``baselines._harmful`` (the raw embedded model's, by default).

Source: ``Unispac/shallow-vs-deep-alignment: finetuning_buckets/trainer/trainer.py``
(``gen_safety_augmentation_batch``: probability 0.5, k ~ U{1..min(100, |y_h|)}, labels -100 on x
and the prefix; ``get_batch_loss_metrics`` concatenates anchor-batch tokens). Official: 256
triplets, anchors = Alpaca prompts answered by the original model at 4x the safety batch, lr 2e-5,
10 epochs, full fine-tuning. Here the anchors are the harmless training prompts (``n_harmless``
of them) in the same batches, and the optimiser settings are the preset's.
"""

from __future__ import annotations

import random
from pathlib import Path

from forgetbench import Field, load_tokenizer, method, run_sft

from baselines._harmful import HarmfulAnswersConfig, harmful_pairs
from baselines.safety_sft import training_rows


class DeepAlignConfig(HarmfulAnswersConfig):
    augment_prob: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Probability that a harmful row "
        "gets a harmful-answer prefix before its refusal (official: 0.5).",
    )
    max_prefix_tokens: int = Field(
        100, ge=1, description="Longest prefix, in tokens of the harmful answer (official: 100)."
    )


def end_of_turn(tokenizer) -> str:
    """What the chat template writes after an assistant message's text (``<|im_end|>`` ...)."""
    marker = "\x00MARK\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    return text.split(marker, 1)[1].rstrip()  # TRL appends nothing when the text ends in EOS


def augmented_rows(
    rows: list[dict],
    answers: dict[str, str],
    tokenizer,
    augment_prob: float,
    max_prefix_tokens: int,
    seed: int,
) -> list[dict]:
    """TRL prompt/completion text rows: the chat-templated user turn (plus, for an augmented
    harmful row, a harmful-answer prefix) as ``prompt``, the target and end of turn as
    ``completion``. ``answers``: harmful prompt -> harmful answer (rows without one stay plain)."""
    rng = random.Random(seed)
    end = end_of_turn(tokenizer)
    out = []
    for row in rows:
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        prefix = ""
        answer = answers.get(row["prompt"]) if row["kind"] == "harmful" else None
        if answer and rng.random() < augment_prob:
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            k = rng.randint(1, min(max_prefix_tokens, len(ids)))
            prefix = tokenizer.decode(ids[:k])
        out.append(
            {
                "prompt": head + prefix,
                "completion": row["target"] + end,
                "prefix_tokens": len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
                if prefix
                else 0,
            }
        )
    return out


@method("deep_align", config=DeepAlignConfig, passes=1)
def deep_align(config: DeepAlignConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """Deep alignment: refusals after random harmful-answer prefixes, plus benign anchors."""
    from datasets import Dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    answers = dict(harmful_pairs(config, out_dir, "deep_align"))
    rows = augmented_rows(
        training_rows(config),
        answers,
        load_tokenizer(model_path),
        config.augment_prob,
        config.max_prefix_tokens,
        seed,
    )
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    )
    return run_sft(model_path, dataset, config, out_dir, seed)
