"""Build the `math` training task's prompts from the shipped MATH train split.

    python tasks/data/math_train/build.py [--out FOLDER]

The FRPO paper's math setting (docs/methods.md §1.5): MATH problems of Levels 3-5, shuffled with
seed 42, the first 100 held out. Here, from `math_train.jsonl.gz` (the 7,500-problem MATH train
split, PROVENANCE.md):

1. keep Levels 3, 4 and 5 (the `level` field, "Level 3" ...), in the file's order;
2. shuffle with ``random.Random(42)`` and hold out the first 100 (their ids go to
   build_report.json; they are not in rl_prompts.jsonl.gz);
3. each row's `answer` is the content of the last \\boxed{} of its worked `solution` (the
   reference the `math_boxed` reward compares with), found as the math_verify judge finds it.

Two differences from the paper, both forced by what is shipped: the paper loads
`qwedsacf/competition_math` and shuffles with Hugging Face `datasets` (a different generator),
so the held-out 100 and the order differ; and the MATH *test* problems are not here, so nothing
of MATH-500 can leak into training (tests/test_math_setting.py checks it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEVELS = ("Level 3", "Level 4", "Level 5")
SEED, HELD_OUT = 42, 100  # docs/methods.md §1.5: "shuffled with seed 42; first 100 held out"


def main() -> None:
    sys.path.insert(0, str(HERE.parents[2]))
    from forgetbench.judges.math_answer import last_boxed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    out = parser.parse_args().out
    with gzip.open(HERE / "math_train.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    kept = [row for row in rows if row["level"] in LEVELS]
    random.Random(SEED).shuffle(kept)
    held, train = kept[:HELD_OUT], kept[HELD_OUT:]
    prompts, no_answer = [], []
    for row in train:
        answer = last_boxed(row["solution"])
        if not answer:
            no_answer.append(row["unique_id"])
            continue
        prompts.append({"id": row["unique_id"], "problem": row["problem"], "answer": answer,
                        "level": row["level"], "type": row["type"]})
    out.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same bytes on every build (gzip stores the time otherwise)
    with open(out / "rl_prompts.jsonl.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        handle.write("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts).encode())
    report = {"source_rows": len(rows), "levels_3_5": len(kept), "held_out": len(held),
              "held_out_ids": [row["unique_id"] for row in held],
              "dropped_without_boxed_answer": no_answer, "prompts": len(prompts),
              "per_level": {level: sum(p["level"] == level for p in prompts) for level in LEVELS}}
    (out / "build_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(prompts)} prompts ({len(held)} held out, {len(no_answer)} without an answer)")


if __name__ == "__main__":
    main()
