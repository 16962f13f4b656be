"""Evaluation suites: each ``tasks/evals/<name>.yaml`` is an ``eval`` plugin.

An eval names its prompts, the judge that scores each response, and metrics with their direction.
Metric values: ``mean`` of the judge's verdicts, or its ``complement`` (1 - mean), e.g. XSTest
compliance = 1 - refusal rate.
"""

from __future__ import annotations

from typing import Literal, Optional

from forgetbench.config import Field, StrictModel
from forgetbench.registry import register_yaml_tasks
from forgetbench.tasks import DatasetSpec


class MetricSpec(StrictModel):
    name: str = Field(description="Metric name in the results table.")
    judge: str = Field(description="Judge plugin whose verdicts the metric aggregates.")
    transform: Literal["mean", "complement"] = Field(
        "mean", description="mean of verdicts, or 1 - mean."
    )
    direction: Literal["higher", "lower"] = Field(
        description="Which way is better (for the defender)."
    )
    binary: bool = Field(
        True,
        description="Verdicts are 0/1 (the table then also gives the "
        "Wilson interval beside the bootstrap CI) rather than continuous.",
    )


class EvalTask(StrictModel):
    name: str = Field(description="The eval's name.")
    version: int = Field(description="Bumped whenever prompts, format or metrics change.")
    description: str = Field("", description="One line for `forgetbench list`.")
    dataset: DatasetSpec = Field(description="Rows with at least `id` and `prompt` fields.")
    prompt_template: str = Field(
        "{prompt}", description="Python format string over the row's fields giving the user turn."
    )
    limit: Optional[int] = Field(
        None, ge=1, description="Evaluate only the first N prompts (presets set this)."
    )
    metrics: list[MetricSpec] = Field(description="What to report.")

    def judges(self) -> list[str]:
        return sorted({metric.judge for metric in self.metrics})


register_yaml_tasks("eval", "evals", EvalTask)
