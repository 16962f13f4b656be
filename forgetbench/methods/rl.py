"""What every GRPO-family method shares: its training prompts, its reward, and the loop."""

from __future__ import annotations

import logging
from pathlib import Path

from forgetbench.tasks import DataError
from forgetbench.training.grpo import AdvantageFn, GRPOFamilyConfig, run_grpo


def training_rows(config: GRPOFamilyConfig, model_path: str) -> list[dict]:
    """The method's training prompts (``id``, ``prompt``, ``kind``, ``reference``), in the order
    that gives each its ``prompt_index`` in the training dataset."""
    from forgetbench.tasks import load_rows, load_train_task, prompt_counts, take_rows

    task = load_train_task(config.train_task)
    rows = take_rows(task, load_rows(task.prompts), prompt_counts(task, config))
    if task.system_prompt:
        rows = [{**row, "system": task.system_prompt} for row in rows]
    if config.max_prompt_length:
        rows = within_prompt_length(rows, model_path, config.max_prompt_length)
    return rows


def chat_prompt(row: dict) -> list[dict]:
    """The conversation a training row starts: its task's system turn, if any, then the prompt."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, {"role": "user", "content": row["prompt"]}]


def train_with_advantage(config: GRPOFamilyConfig, advantage_fn: AdvantageFn, model_path: str,
                         out_dir: Path, seed: int, scale_rewards: str = "none",
                         rows: list[dict] | None = None, reward_funcs: list | None = None,
                         **loop) -> Path:
    """Train a GRPO-family method on its task's prompts with its reward; returns the policy
    folder. ``rows``: the training prompts already loaded (``training_rows``); ``reward_funcs``:
    TRL reward functions instead of the config's ``reward`` plugin. ``loop``: ``run_grpo``'s
    extension arguments (``callbacks``, ``trainer_cls``, ``trainer_kwargs``, ``args_kwargs``)."""
    from datasets import Dataset

    from forgetbench import registry

    rows = training_rows(config, model_path) if rows is None else rows
    # Every column of the task's rows reaches the reward (TRL passes them as keyword arguments):
    # the safety reward reads kind and reference, the math reward the answer.
    dataset = Dataset.from_list([
        {"prompt": chat_prompt(row), "kind": row.get("kind") or config.train_task,
         "reference": row.get("reference") or "", "prompt_index": index,
         **{k: v for k, v in row.items() if k not in ("id", "prompt", "system", "kind",
                                                     "reference")}}
        for index, row in enumerate(rows)])
    if reward_funcs is None:
        reward_plugin = registry.get("reward", config.reward)
        reward_funcs = [reward_plugin.target(reward_plugin.build_config(config.reward_config))]
    return run_grpo(model_path, dataset, reward_funcs, advantage_fn, config, out_dir, seed,
                    scale_rewards=scale_rewards, **loop)


def within_prompt_length(rows: list[dict], model_path: str, limit: int) -> list[dict]:
    """The rows whose chat-templated prompt fits in ``limit`` tokens (TRL 1.16 has no
    max_prompt_length; dropping beats truncating, which would cut the chat template)."""
    from forgetbench.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    texts = [tokenizer.apply_chat_template(chat_prompt(row), tokenize=False,
                                           add_generation_prompt=True) for row in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [row for row, length in zip(rows, lengths) if length <= limit]
    if not kept:
        raise DataError(f"every training prompt is longer than max_prompt_length={limit} tokens; "
                        "raise it")
    if len(kept) < len(rows):
        logging.getLogger("forgetbench").warning(
            "dropped %d of %d training prompts longer than %d tokens", len(rows) - len(kept),
            len(rows), limit)
    return kept
