"""Supervised fine-tuning with TRL on prompt/completion pairs (loss on completions only)."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

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
from forgetbench.training.distributed import split_batch
from forgetbench.training.micro_batches import (
    balanced_args,
    seed_balanced_sampler,
    steps_are_row_sums,
)


class SFTSettings(OptimConfig):
    max_length: int = Field(512, ge=16, description="Tokens per training row (prompt + response).")
    balanced_micro_batches: int = Field(
        1,
        ge=1,
        description="Micro-batches each micro-batch's rows are trained in, grouped by length "
        "(transformers' BatchRebalanceSampler) so that rows of like length are padded together: "
        "the same rows and loss per optimiser step as 1 (rows as drawn), less padding "
        "(forgetbench/training/micro_batches.py). Must divide batch_size (per rank); an RL "
        "attack leaves it unused.",
    )

    @model_validator(mode="after")
    def _micro_batches_divide_the_batch(self):
        if self.balanced_micro_batches == 1:
            return self
        rows = self.rows_per_micro_batch()
        if rows is None:  # an RL attack: its micro-batches are completions, never padded rows
            return self
        per_rank = split_batch(rows, self.grad_accum, self.processes)[0]
        if per_rank % self.balanced_micro_batches:
            raise ValueError(
                f"balanced_micro_batches={self.balanced_micro_batches} must divide the rows per "
                f"micro-batch ({per_rank}); set it to a divisor of {per_rank}, or 1"
            )
        return self


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
    if config.balanced_micro_batches > 1 and not steps_are_row_sums(trainer_cls):
        # e.g. Vaccine and Booster perturb the weights per micro-batch: another split is another
        # algorithm, which the speed-only setting must never be
        raise UsageError(
            f"balanced_micro_batches={config.balanced_micro_batches}: {trainer_cls.__name__} "
            "overrides training_step or compute_loss, so its step depends on the micro-batches; "
            "set balanced_micro_batches=1"
        )
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    dataset = pairs if hasattr(pairs, "column_names") else sft_dataset(pairs)
    shared = trainer_args(config, out_dir, seed)
    args = SFTConfig(
        **{
            **shared,
            **balanced_args(shared, config.balanced_micro_batches, len(dataset), config.processes),
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
    seed_balanced_sampler(trainer)
    if not config.fused_lm_head:
        from forgetbench.training.lm_head import own_lm_heads

        own_lm_heads(trainer)
    return train_and_save(trainer, tokenizer, out_dir)
