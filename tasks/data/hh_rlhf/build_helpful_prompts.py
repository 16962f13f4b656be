#!/usr/bin/env python3
"""Build ``helpful_prompts.jsonl``: the offline prompts of the ``ultrafeedback-rl`` attack.

    python tasks/data/hh_rlhf/build_helpful_prompts.py

The paper's RL attack runs GRPO on UltraFeedback prompts; offline we use single-turn hh-rlhf
helpful-base dialogues (first human turn -> prompt, first assistant reply of ``chosen`` ->
``reference`` for the similarity reward). Dialogues whose prompt the safety-training RL stage
uses (``tasks/data/safety_train/rl_prompts.jsonl``, by id or by prompt text) and repeated prompts
are left out, so the attack never trains on a prompt the method was rewarded on. (The refusal
warm-up's demonstrations may hold some of the ``train`` prompts; ``safety_train/build.py`` drops
the ``heldout`` ones from the warm-up, so the eval's prompts are never trained on.) The rest is
split, after a seeded shuffle, into ``train`` (the attack's prompts) and ``heldout`` (the attack's
own task metric: held-out reward). Deterministic; standard library only.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "helpful-base" / "test.jsonl.gz"
SAFETY_TRAIN = HERE.parent / "safety_train"
OUT = HERE / "helpful_prompts.jsonl"
HELDOUT_SHARE = 0.4
SEED = 0


def single_turn(chosen: str) -> tuple[str, str] | None:
    parts = re.split(r"\n\n(Human|Assistant):", chosen)
    if len(parts) != 5 or parts[1] != "Human" or parts[3] != "Assistant":
        return None  # multi-turn, or not Human-then-Assistant
    prompt, reply = parts[2].strip(), parts[4].strip()
    return (prompt, reply) if prompt and reply else None


def key(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def main() -> None:
    safety = [json.loads(line) for name in ("rl_prompts.jsonl",)
              for line in (SAFETY_TRAIN / name).read_text(encoding="utf-8").splitlines() if line]
    used = {row["id"] for row in safety}
    used_prompts = {key(row["prompt"]) for row in safety}
    with gzip.open(SOURCE, "rt", encoding="utf-8") as handle:
        dialogues = [json.loads(line) for line in handle if line.strip()]
    rows = []
    for index, dialogue in enumerate(dialogues):
        row_id = f"hh-helpful-test-{index:04d}"
        turn = single_turn(dialogue["chosen"])
        if row_id in used or turn is None or key(turn[0]) in used_prompts:
            continue
        used_prompts.add(key(turn[0]))  # the same question asked in two dialogues: keep one
        rows.append({"id": row_id, "prompt": turn[0], "reference": turn[1],
                     "source": "hh_rlhf/helpful-base/test"})
    random.Random(SEED).shuffle(rows)
    cut = round(len(rows) * (1 - HELDOUT_SHARE))
    with OUT.open("w", encoding="utf-8", newline="\n") as handle:
        for number, row in enumerate(rows):
            handle.write(json.dumps({**row, "split": "train" if number < cut else "heldout"},
                                    ensure_ascii=False) + "\n")
    print(f"{OUT.name}: {cut} train + {len(rows) - cut} heldout of {len(dialogues)} dialogues "
          f"({len(used)} ids of the safety RL prompts left out)")


if __name__ == "__main__":
    main()
