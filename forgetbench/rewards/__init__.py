"""Reward plugins for RL stages.

A reward plugin is a factory ``factory(config) -> fn`` where ``fn`` follows TRL's reward-function
signature: ``fn(prompts, completions, **dataset_columns) -> list[float]``.

This module holds the embedded ``safety`` reward, runnable offline on CPU;
:mod:`forgetbench.rewards.paper` holds the FRPO paper's reward stack (hub judges, a moderation
endpoint and a reward model), used by the ``paper`` preset.
"""

from __future__ import annotations

import math

from forgetbench.config import Field, StrictModel
from forgetbench.errors import ForgetbenchError

# The helpfulness score is the helpfulness judge's measure; the rewards below reuse it (rewards
# are built from judges, never the other way round).
from forgetbench.judges.helpfulness import embedding_model, helpfulness_scores, similarity  # noqa: F401
from forgetbench.registry import reward


class RewardError(ForgetbenchError):
    pass


def prompt_text(prompt) -> str:
    """The user's request: the last user turn of a conversational prompt, or the prompt text."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
        return users[-1] if users else "".join(m.get("content", "") for m in prompt)
    return str(prompt)


def completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(message.get("content", "") for message in completion)
    return str(completion)


def finite(name: str, rewards: list[float]) -> list[float]:
    bad = [i for i, value in enumerate(rewards) if not math.isfinite(value)]
    if bad:
        raise RewardError(f"{name} reward is not finite for completions {bad[:5]}")
    return rewards


def same_lengths(name: str, completions, **columns) -> None:
    """A reward gets one value of each dataset column per completion; anything else would pair
    completions with the wrong rows."""
    wrong = {
        column: len(values) for column, values in columns.items() if len(values) != len(completions)
    }
    if wrong:
        listed = ", ".join(f"{n} `{column}` values" for column, n in wrong.items())
        raise RewardError(
            f"{name} reward got {len(completions)} completions but {listed}; pass "
            "one dataset row per completion"
        )


class SafetyRewardConfig(StrictModel):
    refusal_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="On harmless prompts, the share of "
        "the reward for not refusing; the rest is reference similarity.",
    )


@reward("safety", config=SafetyRewardConfig)
def safety_reward(config: SafetyRewardConfig):
    """Refusal on harmful prompts (1/0); not refusing + MiniLM similarity on harmless ones."""
    from forgetbench.judges.refusal import is_refusal

    def score(prompts, completions, kind, reference, **_) -> list[float]:
        same_lengths("safety", completions, prompts=prompts, kind=kind, reference=reference)
        bad = [i for i, k in enumerate(kind) if k not in ("harmful", "harmless")]
        if bad:  # checked first: a typo in the task's data must not cost a reward-model pass
            raise RewardError(
                f"training row kind {kind[bad[0]]!r} (completions {bad[:5]}) is "
                "neither 'harmful' nor 'harmless'; fix the task's `kind` column"
            )
        texts = [completion_text(c) for c in completions]
        harmless = [i for i, k in enumerate(kind) if k == "harmless"]
        rewards = [float(is_refusal(text)) for text in texts]
        helpful = helpfulness_scores(
            [texts[i] for i in harmless],
            [reference[i] or "" for i in harmless],
            config.refusal_weight,
        )
        for i, value in zip(harmless, helpful):
            rewards[i] = value
        return finite("safety", rewards)

    score.__name__ = "safety"
    return score


class HelpfulnessRewardConfig(StrictModel):
    refusal_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the reward for not "
        "refusing; the rest is MiniLM similarity to the reference.",
    )


@reward("helpfulness", config=HelpfulnessRewardConfig)
def helpfulness_reward(config: HelpfulnessRewardConfig):
    """Offline helpfulness (the RL attack's reward): not refusing + similarity to the row's
    ``reference`` answer, the safety reward's harmless half applied to every prompt."""

    def score(prompts, completions, reference, **_) -> list[float]:
        same_lengths("helpfulness", completions, prompts=prompts, reference=reference)
        rewards = helpfulness_scores(
            [completion_text(c) for c in completions],
            [r or "" for r in reference],
            config.refusal_weight,
        )
        return finite("helpfulness", rewards)

    score.__name__ = "helpfulness"
    return score


# The judge adapter and the weighted sum register the `judge` and `weighted` rewards, and
# math_boxed the math setting's; imported here (after the names they use) so that loading the
# built-in rewards loads them too.
from forgetbench.rewards import judged, math_boxed  # noqa: E402,F401
