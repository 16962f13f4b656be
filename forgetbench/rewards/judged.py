"""Judges inside training: one adapter from the judge protocol to the two things an RL loop needs.

A judge plugin scores ``(prompts, responses, rows) -> list[Verdict]`` (:mod:`forgetbench.judges`);
a reward follows TRL's ``fn(prompts, completions, **columns) -> list[float]``. Here any judge,
built by :func:`forgetbench.judges.build_judge` exactly as the judge stage builds it (the same
plugin, the same config class), becomes

* a **binary constraint** (:class:`JudgeConstraint`) with TRL's judge semantics (``BaseBinaryJudge``
  in ``trl/trainer/judges.py``; CGPO, Xu et al. arXiv 2409.20370 §4.1.4): per completion
  ``1`` = satisfied, ``0`` = violated, ``-1`` = the judge failed (it raised, its endpoint was down,
  it returned a missing verdict). ``-1`` is counted and logged, and a consumer treats it as *not*
  passing: never a crash, never a silent pass;
* a **reward** (:class:`JudgeReward`, the ``judge`` reward plugin): ``offset + scale * value``,
  a missing verdict getting ``missing_reward`` (counted and logged) or, if that is None, an error.

The ``weighted`` reward plugin sums several rewards (plugins, judges among them) with weights, so
a method with one ``reward`` field can use many: ``reward: weighted, reward_config: {rewards:
[{name: judge, config: {judge: helpfulness}, weight: 1.0}, {name: safety, weight: 0.5}]}``.

The eval ``rows`` a judge may ask for are the training dataset's columns of each completion
(``kind``, ``reference``, ...) plus ``prompt``, the user's request as text.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Literal, Optional, Sequence

from pydantic import model_validator

from forgetbench.config import Field, StrictModel
from forgetbench.registry import reward
from forgetbench.rewards import RewardError, completion_text, prompt_text

log = logging.getLogger("forgetbench")

PASS, VIOLATED, FAILED = 1, 0, -1


class JudgeSpec(StrictModel):
    """A judge plugin and its settings, the same fields as the preset's ``judges.<name>``."""

    judge: str = Field(description="Judge plugin (`forgetbench list judge`).")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The judge's own settings (endpoints, models), validated by its config class.",
    )

    @model_validator(mode="after")
    def _judge_config_is_valid(self):
        # Checked when the config is resolved, so a bad judge key fails before any training.
        from forgetbench import registry

        registry.get("judge", self.judge).build_config(self.config)
        return self


class ConstraintSpec(JudgeSpec):
    """A judge used as a pass/violate constraint on its verdict's value."""

    passes_if: Literal["at_least", "below"] = Field(
        description="at_least: value >= threshold "
        "passes (refusal on harmful prompts); below: "
        "value < threshold passes (refusal on "
        "harmless prompts, a harm score)."
    )
    threshold: float = Field(0.5, description="The value the verdict is compared with.")


def inherit_judge_settings(tree: Any, run_judges: dict[str, dict]) -> Any:
    """``tree`` (a method's resolved config) with every judge spec in it (a dict with a ``judge``
    name) given the run's ``judges.<name>`` settings under its own ``config``, so the judge that
    constrains training is the judge that scores the evals (endpoints, models) unless the method
    overrides a field. For ``cell.resolve``, before the method's config is validated."""
    from forgetbench.config import deep_merge

    if isinstance(tree, list):
        return [inherit_judge_settings(item, run_judges) for item in tree]
    if not isinstance(tree, dict):
        return tree
    tree = {key: inherit_judge_settings(value, run_judges) for key, value in tree.items()}
    if isinstance(tree.get("judge"), str) and tree["judge"] in run_judges:
        tree["config"] = deep_merge(run_judges[tree["judge"]], tree.get("config") or {})
    return tree


def judge_rows(prompts: Sequence, columns: dict[str, Sequence]) -> list[dict]:
    """The rows a judge gets in training: each completion's dataset columns plus its prompt text."""
    return [
        {**{name: values[i] for name, values in columns.items()}, "prompt": prompt_text(p)}
        for i, p in enumerate(prompts)
    ]


class _JudgeCall:
    """A built judge called on a TRL batch; failures come back as missing verdicts, not raises."""

    def __init__(self, spec: JudgeSpec):
        from forgetbench.judges import build_judge

        self.spec = spec
        self.judge = build_judge(spec.judge, spec.config)
        self.counts: Counter = Counter()  # what the judge returned, over the whole run

    def verdicts(self, prompts, completions, columns: dict) -> list:
        from forgetbench.judges import Verdict, score_verdicts

        texts = [completion_text(c) for c in completions]
        try:
            return score_verdicts(
                self.judge.name,
                self.judge.score,
                [prompt_text(p) for p in prompts],
                texts,
                rows=lambda: judge_rows(prompts, columns),
            )
        except Exception as error:  # noqa: BLE001 - a judge's failure must not end the training run
            reason = f"judge {self.judge.name!r} raised {type(error).__name__}: {error}"
            return [Verdict(None, reason)] * len(texts)

    def note_missing(self, verdicts: list, what: str) -> None:
        missing = [v for v in verdicts if v.value is None or not math.isfinite(v.value)]
        if missing:
            log.warning(
                "judge %s: %d of %d completions have no verdict (%s); %s",
                self.judge.name,
                len(missing),
                len(verdicts),
                missing[0].reason,
                what,
            )


class JudgeConstraint(_JudgeCall):
    """A judge as a binary constraint: ``fn(prompts, completions, **columns) -> list[int]`` in
    {1, 0, -1}; ``counts`` holds the run's totals per outcome (pass / violated / failed)."""

    def __init__(self, spec: ConstraintSpec):
        super().__init__(spec)
        self.__name__ = f"constraint_{self.judge.name}"

    def outcome(self, value: Optional[float]) -> int:
        if value is None or not math.isfinite(value):
            return FAILED
        if self.spec.passes_if == "at_least":
            return PASS if value >= self.spec.threshold else VIOLATED
        return PASS if value < self.spec.threshold else VIOLATED

    def __call__(self, prompts, completions, **columns) -> list[int]:
        verdicts = self.verdicts(prompts, completions, columns)
        self.note_missing(verdicts, "counted as failed (-1), not as a pass")
        outcomes = [self.outcome(v.value) for v in verdicts]
        self.counts.update(
            {PASS: "pass", VIOLATED: "violated", FAILED: "failed"}[o] for o in outcomes
        )
        return outcomes


class JudgeRewardConfig(JudgeSpec):
    """A judge's verdict as a reward: ``offset + scale * value``."""

    scale: float = Field(
        1.0,
        description="Multiplies the verdict (-1 turns a harm score into a reward, with offset 1).",
    )
    offset: float = Field(0.0, description="Added after scaling.")
    missing_reward: Optional[float] = Field(
        0.0,
        description="The reward of a completion the judge "
        "gave no verdict (an empty answer, an endpoint down), "
        "counted and logged; None makes it an error instead.",
    )


class JudgeReward(_JudgeCall):
    """A judge as a TRL reward function; ``counts`` holds the run's scored / missing totals."""

    def __init__(self, config: JudgeRewardConfig):
        super().__init__(config)
        self.__name__ = f"judge_{self.judge.name}"

    def __call__(self, prompts, completions, **columns) -> list[float]:
        verdicts = self.verdicts(prompts, completions, columns)
        config = self.spec
        missing = {
            i for i, v in enumerate(verdicts) if v.value is None or not math.isfinite(v.value)
        }
        if missing and config.missing_reward is None:
            raise RewardError(
                f"judge {self.judge.name!r} gave no verdict for {len(missing)} "
                f"completion(s) ({verdicts[min(missing)].reason}); set "
                "missing_reward to score them instead"
            )
        self.note_missing(verdicts, f"rewarded {config.missing_reward}")
        self.counts.update(scored=len(verdicts) - len(missing), missing=len(missing))
        return [
            config.missing_reward if i in missing else config.offset + config.scale * v.value
            for i, v in enumerate(verdicts)
        ]


@reward("judge", config=JudgeRewardConfig)
def judge_reward(config: JudgeRewardConfig):
    """Any judge plugin as a reward: offset + scale * its verdict (missing: missing_reward)."""
    return JudgeReward(config)


# ---- several rewards with weights ----------------------------------------------------------------


class RewardTerm(StrictModel):
    """One reward plugin in a weighted sum."""

    name: str = Field(
        description="Reward plugin (`forgetbench list reward`; `judge` wraps a judge)."
    )
    config: dict[str, Any] = Field(default_factory=dict, description="The reward's own settings.")
    weight: float = Field(1.0, description="Its weight in the sum.")

    @model_validator(mode="after")
    def _reward_config_is_valid(self):
        from forgetbench import registry

        registry.get("reward", self.name).build_config(self.config)
        return self


class WeightedRewardConfig(StrictModel):
    rewards: list[RewardTerm] = Field(
        min_length=1, description="The rewards summed, each {name, config, weight}."
    )


def build_reward(name: str, config: Optional[dict] = None):
    """Reward plugin ``name`` built with ``config`` validated by its config class."""
    from forgetbench import registry

    plugin = registry.get("reward", name)
    return plugin.target(plugin.build_config(config or {}))


class WeightedReward:
    """``sum_k weight_k * reward_k(prompts, completions, **columns)``; every term must score every
    completion (a None or non-finite value is an error naming the term)."""

    __name__ = "weighted"

    def __init__(self, terms: list[tuple[str, Any, float]]):
        self.terms = terms  # (name, reward function, weight)

    def __call__(self, prompts, completions, **columns) -> list[float]:
        total = [0.0] * len(completions)
        for name, fn, weight in self.terms:
            values = fn(prompts, completions, **columns)
            if len(values) != len(completions):
                raise RewardError(
                    f"reward {name!r} returned {len(values)} values for "
                    f"{len(completions)} completions"
                )
            bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(v)]
            if bad:
                raise RewardError(
                    f"reward {name!r} gave no finite value for completions "
                    f"{bad[:5]}; in a weighted sum every term scores every row"
                )
            total = [t + weight * float(v) for t, v in zip(total, values)]
        return total


@reward("weighted", config=WeightedRewardConfig)
def weighted_reward(config: WeightedRewardConfig):
    """A weighted sum of reward plugins (judges too, through the `judge` reward)."""
    return WeightedReward(
        [(term.name, build_reward(term.name, term.config), term.weight) for term in config.rewards]
    )
