"""What every GRPO-family method shares: its training prompts, its reward, and the loop."""

from __future__ import annotations

from pathlib import Path

from forgetbench.tasks import load_rows, load_train_task, prompt_counts, take_rows
from forgetbench.training.grpo import AdvantageFn, GRPOFamilyConfig, run_grpo
from forgetbench.training.grpo_inputs import grpo_dataset, reward_function, within_prompt_length


def training_rows(config: GRPOFamilyConfig, model_path: str) -> list[dict]:
    """The method's training prompts (``id``, ``prompt``, ``kind``, ``reference``), in the order
    that gives each its ``prompt_index`` in the training dataset."""
    task = load_train_task(config.train_task)
    rows = take_rows(task, load_rows(task.prompts), prompt_counts(task, config))
    # a task without groups: its rows are all of one kind, the task's
    rows = [
        {
            **row,
            "kind": row.get("kind") or task.name,
            **({"system": task.system_prompt} if task.system_prompt else {}),
        }
        for row in rows
    ]
    if config.max_prompt_length:
        rows = within_prompt_length(rows, model_path, config.max_prompt_length)
    return rows


def train_with_advantage(
    config: GRPOFamilyConfig,
    advantage_fn: AdvantageFn,
    model_path: str,
    out_dir: Path,
    seed: int,
    scale_rewards: str = "none",
    rows: list[dict] | None = None,
    reward_funcs: list | None = None,
    **loop,
) -> Path:
    """Train a GRPO-family method on its task's prompts with its reward; returns the policy
    folder. ``rows``: the training prompts already loaded (``training_rows``); ``reward_funcs``:
    TRL reward functions instead of the config's ``reward`` plugin. ``loop``: ``run_grpo``'s
    extension arguments (``callbacks``, ``trainer_cls``, ``trainer_kwargs``, ``args_kwargs``)."""
    rows = training_rows(config, model_path) if rows is None else rows
    if reward_funcs is None:
        reward_funcs = [reward_function(config)]
    return run_grpo(
        model_path,
        grpo_dataset(rows),
        reward_funcs,
        advantage_fn,
        config,
        out_dir,
        seed,
        scale_rewards=scale_rewards,
        **loop,
    )
