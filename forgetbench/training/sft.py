"""Supervised fine-tuning with TRL on prompt/completion pairs (loss on completions only)."""

from __future__ import annotations

from pathlib import Path

from forgetbench.config import Field
from forgetbench.errors import UsageError
from forgetbench.training.common import (
    OptimConfig,
    load_dtype,
    peft_config,
    step_timer,
    train_and_save,
    trainer_args,
)


class SFTSettings(OptimConfig):
    max_length: int = Field(512, ge=16, description="Tokens per training row (prompt + response).")


def sft_dataset(pairs: list[tuple[str, str]]):
    """(user prompt, assistant response) pairs as the conversational prompt/completion dataset
    TRL's SFTTrainer trains on (also for a trainer subclass's extra data, e.g. ``eval_dataset``)."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": response}],
            }
            for prompt, response in pairs
        ]
    )


def run_sft(
    model_path: str,
    pairs,
    config: SFTSettings,
    out_dir: Path,
    seed: int,
    callbacks: list | None = None,
    trainer_cls=None,
    trainer_kwargs: dict | None = None,
    args_kwargs: dict | None = None,
) -> Path:
    """Fine-tune on (user prompt, assistant response) pairs, or on a ready TRL prompt/completion
    ``datasets.Dataset`` (e.g. rows whose prompt already holds part of the assistant turn); loss
    on the completions only. Returns the saved ``out_dir/model``.

    ``callbacks``: extra TrainerCallbacks (an attack's checkpoint saver). ``trainer_cls``: a
    subclass of TRL's SFTTrainer (e.g. one overriding ``training_step`` or ``compute_loss``) used
    instead of it; ``trainer_kwargs``: extra keyword arguments for its constructor (e.g.
    ``optimizers``, or a subclass's own settings); ``args_kwargs``: extra SFTConfig fields.
    """
    from trl import SFTConfig, SFTTrainer

    from forgetbench.models import load_model, load_tokenizer

    trainer_cls = trainer_cls or SFTTrainer
    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, SFTTrainer)):
        raise UsageError(f"run_sft(trainer_cls={trainer_cls!r}): pass a subclass of trl.SFTTrainer")
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    dataset = pairs if hasattr(pairs, "column_names") else sft_dataset(pairs)
    args = SFTConfig(
        **{
            **trainer_args(config, out_dir, seed),
            "max_length": config.max_length,
            "completion_only_loss": True,
            **(args_kwargs or {}),
        }
    )
    trainer = trainer_cls(
        model=load_model(model_path, load_dtype(config)),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(config),
        callbacks=[step_timer(), *(callbacks or [])],
        **(trainer_kwargs or {}),
    )
    if not config.fused_lm_head:
        from forgetbench.training.lm_head import own_lm_heads

        own_lm_heads(trainer)
    return train_and_save(trainer, tokenizer, out_dir)
