"""Refusal SFT warm-up: the embedded model refuses nothing, so safety is first demonstrated.
Shared by every method and cached once."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from forgetbench.config import Field
from forgetbench.training.sft import SFTSettings


class WarmupConfig(SFTSettings):
    enabled: bool = Field(
        True, description="Run the warm-up; off = methods start from the base model."
    )
    task: str = Field(
        "safety",
        description="Training task (tasks/train/<name>.yaml) whose "
        "`warmup` dataset holds the demonstrations.",
    )
    n_harmful: int = Field(100, ge=0, description="Refusal demonstrations (harmful prompts).")
    n_harmless: int = Field(300, ge=0, description="Helpful demonstrations (harmless prompts).")

    @model_validator(mode="after")
    def _task_has_demonstrations(self):
        from forgetbench.tasks import load_train_task

        if self.enabled and load_train_task(self.task).warmup is None:
            raise ValueError(
                f"training task {self.task!r} has no warm-up demonstrations; set "
                "warmup.enabled=false or warmup.task=safety"
            )
        return self


def run(config: dict, inputs: dict[str, Path], out: Path) -> None:
    from forgetbench.models import resolve_model
    from forgetbench.tasks import load_rows, load_train_task, take_by_kind
    from forgetbench.training.sft import run_sft

    settings = WarmupConfig.model_validate(config["warmup"])
    task = load_train_task(settings.task)
    rows = take_by_kind(load_rows(task.warmup), settings.n_harmful, settings.n_harmless)
    pairs = [(row["prompt"], row["response"]) for row in rows]
    run_sft(resolve_model(config["model"]), pairs, settings, out, config["seed"])
