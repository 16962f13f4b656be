"""Supervised fine-tuning with TRL on prompt/completion pairs (loss on completions only)."""

from __future__ import annotations

from pathlib import Path

from forgetbench.config import Field
from forgetbench.training.common import (OptimConfig, peft_config, save_policy, trainer_args,
                                         write_log_history)


class SFTSettings(OptimConfig):
    max_length: int = Field(512, ge=16, description="Tokens per training row (prompt + response).")


def run_sft(model_path: str, pairs: list[tuple[str, str]], config: SFTSettings, out_dir: Path,
            seed: int, callbacks: list | None = None) -> Path:
    """Fine-tune on (user prompt, assistant response) pairs; returns the saved model folder.
    ``callbacks``: extra TrainerCallbacks (an attack's checkpoint saver)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from forgetbench.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "right"
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": prompt}],
         "completion": [{"role": "assistant", "content": response}]}
        for prompt, response in pairs])
    args = SFTConfig(**trainer_args(config, out_dir, seed), max_length=config.max_length,
                     completion_only_loss=True)
    trainer = SFTTrainer(model=load_model(model_path), args=args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config(config),
                         callbacks=callbacks)
    trainer.train()
    write_log_history(trainer, out_dir)
    tokenizer.padding_side = "left"
    return save_policy(trainer.model, tokenizer, out_dir)
