"""What a GRPO run is fed, shared by the GRPO-family methods and the RL attack: its settings, its
prompts as a TRL dataset (dropping those too long for the prompt budget), and its reward."""

from __future__ import annotations

import logging
from typing import Literal

from forgetbench import registry
from forgetbench.config import Field
from forgetbench.models import load_tokenizer, user_turn_text
from forgetbench.tasks import DataError
from forgetbench.training.grpo import GRPOFamilyConfig


class GRPOSettings(GRPOFamilyConfig):
    """The GRPO family's settings plus how GRPO normalises advantages (the ``grpo`` method's and
    the RL attack's ``rl:`` settings)."""

    adv_norm: Literal["group", "batch", "none"] = Field(
        "group",
        description="Advantage normalisation: group std (GRPO), batch std, or none (Dr. GRPO).",
    )


def chat_prompt(row: dict) -> list[dict]:
    """The conversation a training row starts: its task's system turn, if any, then the prompt."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, {"role": "user", "content": row["prompt"]}]


def grpo_dataset(rows: list[dict]):
    """The prompts (rows with ``prompt``, ``kind``, ``reference``; ``system`` for a task with a
    system prompt) as TRL's conversational dataset, with ``prompt_index`` (its row's number) and
    every other column of the row: TRL passes them to the rewards (the safety reward reads kind
    and reference, the math reward the answer)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": chat_prompt(row),
                "kind": row.get("kind") or "",
                "reference": row.get("reference") or "",
                "prompt_index": index,
                **{
                    k: v
                    for k, v in row.items()
                    if k not in ("id", "prompt", "system", "kind", "reference")
                },
            }
            for index, row in enumerate(rows)
        ]
    )


def reward_function(config: GRPOFamilyConfig):
    """The config's ``reward`` plugin, built with its ``reward_config``."""
    plugin = registry.get("reward", config.reward)
    return plugin.target(plugin.build_config(config.reward_config))


def within_prompt_length(rows: list[dict], model_path: str, limit: int) -> list[dict]:
    """The rows whose chat-templated prompt fits in ``limit`` tokens (TRL 1.16 has no
    max_prompt_length; dropping beats truncating, which would cut the chat template)."""
    tokenizer = load_tokenizer(model_path)
    texts = [
        user_turn_text(tokenizer, row["prompt"])
        if not row.get("system")
        else tokenizer.apply_chat_template(
            chat_prompt(row), tokenize=False, add_generation_prompt=True
        )
        for row in rows
    ]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [row for row, length in zip(rows, lengths) if length <= limit]
    if not kept:
        raise DataError(
            f"every training prompt is longer than max_prompt_length={limit} tokens; raise it"
        )
    if len(kept) < len(rows):
        logging.getLogger("forgetbench").warning(
            "dropped %d of %d training prompts longer than %d tokens",
            len(rows) - len(kept),
            len(rows),
            limit,
        )
    return kept
