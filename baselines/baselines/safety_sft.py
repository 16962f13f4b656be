"""Safety SFT: supervised safety training only, no RL (the "what does RL add" control).

    forgetbench run --method baselines/safety_sft --attack alpaca

Source: ``git-disl/Vaccine: script/alignment/SFT.sh`` (``--optimizer normal``: a plain
transformers Trainer, token NLL on harmful prompt -> refusal plus benign pairs from
BeaverTails_safe); the same recipe is ``git-disl/Booster: script/alignment/sft.sh``. Their
hyper-parameters (lr 1e-3, 50 epochs, batch 5, LoRA r=8 alpha=4) are for 7B LoRA runs; here the
optimiser settings are forgetbench's SFT defaults, overridden by a preset's shared ``method:``
fields (``max_steps``, ``learning_rate``, ...) exactly as for the RL methods.

The data are the prompts the RL methods train on: the first ``n_harmful`` harmful and
``n_harmless`` harmless prompts of ``train_task`` (``forgetbench.load_train_prompts``, the same
rows GRPO and FRPO see). Targets: each harmful prompt's refusal demonstration from its source
dataset (safety_tuned_llamas, matched by row id: the RL prompt file keeps no refusal), and each
harmless prompt's reference answer. Loss on the response tokens only (``run_sft``).
"""

from __future__ import annotations

from pathlib import Path

from forgetbench import (
    DatasetSpec,
    Field,
    ForgetbenchError,
    SFTSettings,
    load_rows,
    load_train_prompts,
    method,
    run_sft,
)

# The harmful RL prompts of the `safety` task are safety_tuned_llamas rows `stl-train-NNNN` (the
# row index, zero-padded) whose output opens with a refusal (tasks/data/safety_train/README.md).
REFUSALS = DatasetSpec(
    path="data/safety_tuned_llamas/training/safety_only_data_Instructions.json",
    id_prefix="stl-train-",
    fields={"response": "output"},
)


def _index(row_id: str) -> str:
    """``stl-train-0288`` and ``stl-train-288`` name the same row."""
    prefix, _, number = row_id.rpartition("-")
    return f"{prefix}-{int(number)}" if number.isdigit() else row_id


class SafetySFTConfig(SFTSettings):
    train_task: str = Field(
        "safety",
        description="The RL methods' training task "
        "(tasks/train/<name>.yaml) whose prompts are trained on.",
    )
    n_harmful: int = Field(
        64, ge=0, description="Harmful prompts (-> refusal), the first ones the RL methods take."
    )
    n_harmless: int = Field(64, ge=0, description="Harmless prompts (-> reference answer).")


def training_rows(config: SafetySFTConfig) -> list[dict]:
    """The RL methods' prompts with a ``target``: the refusal for a harmful prompt, the reference
    answer otherwise (rows keep ``prompt`` and ``kind``)."""
    rows = load_train_prompts(config.train_task, config.n_harmful, config.n_harmless)
    refusals = {_index(row["id"]): row["response"] for row in load_rows(REFUSALS)}
    targeted, missing = [], []
    for row in rows:
        target = (
            refusals.get(_index(row["id"])) if row["kind"] == "harmful" else row.get("reference")
        )
        if target and target.strip():
            targeted.append({**row, "target": target.strip()})
        else:
            missing.append(row["id"])
    if missing:
        raise ForgetbenchError(
            f"safety_sft: {len(missing)} training prompt(s) have no target "
            f"(e.g. {missing[:3]}): harmful prompts need a refusal in "
            f"{REFUSALS.path} (by id), harmless ones a `reference`; use "
            "train_task 'safety'"
        )
    return targeted


def training_pairs(config: SafetySFTConfig) -> list[tuple[str, str]]:
    """(prompt, target) for the RL methods' prompts: refusals for harmful, references otherwise."""
    return [(row["prompt"], row["target"]) for row in training_rows(config)]


@method("safety_sft", config=SafetySFTConfig, passes=1)
def safety_sft(config: SafetySFTConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """Safety SFT only: refusals / reference answers on the RL prompts, no RL (Vaccine's SFT)."""
    return run_sft(model_path, training_pairs(config), config, out_dir, seed)
