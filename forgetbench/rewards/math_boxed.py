"""The FRPO paper's math reward (docs/methods.md §1.5): ``math_boxed``.

    r(x, y) = format_weight * format(y) + correct_weight * correct(x, y)        (§1.5, "Reward")
            = 0.2 * [y holds exactly one \\boxed{}] + 0.8 * [its answer equals the reference]

The paper's code scores correctness with Dr. GRPO's ``boxed_reward_fn`` (``fast=True``, a 3 s
timeout); here correctness is the ``math_verify`` judge (the one MATH500 is scored with: the last
``\\boxed{}`` answer against the row's ``answer``, by math-verify), with the same 3 s limit per
answer. An answer whose check runs out of time scores 0 for correctness (what a timeout gives in
Dr. GRPO's grader): it is counted in ``counts["timed_out"]`` and logged with the reason, so a
policy that learns to emit answers that hang the verifier shows in the log. A reference the
verifier cannot parse also scores 0, counted as ``missing`` and logged.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

from forgetbench.config import Field, StrictModel
from forgetbench.registry import reward
from forgetbench.rewards import RewardError, completion_text, finite, prompt_text, same_lengths

log = logging.getLogger("forgetbench")

_BOXED = re.compile(r"\\boxed\s*\{")


class MathBoxedConfig(StrictModel):
    format_weight: float = Field(
        0.2,
        ge=0,
        description="Weight of the format term: exactly one "
        "\\boxed{} in the completion (docs/methods.md §1.5: 0.2).",
    )
    correct_weight: float = Field(
        0.8, ge=0, description="Weight of the correctness term (docs/methods.md §1.5: 0.8)."
    )
    timeout_s: int = Field(
        3,
        ge=1,
        description="math-verify's time limit per answer (the paper's "
        "Dr. GRPO grader: 3 s); a timed-out answer scores 0, counted and "
        "logged.",
    )
    float_rounding: int = Field(6, ge=0, description="math_verify judge's float_rounding.")


def boxed_count(text: str) -> int:
    return len(_BOXED.findall(text))


class MathBoxedReward:
    """TRL reward function; ``counts`` holds the run's totals (scored, timed_out, missing)."""

    __name__ = "math_boxed"

    def __init__(self, config: MathBoxedConfig):
        from forgetbench.judges import build_judge

        self.config = config
        self.judge = build_judge(
            "math_verify", {"timeout_s": config.timeout_s, "float_rounding": config.float_rounding}
        )
        self.counts: Counter = Counter()

    def __call__(self, prompts, completions, answer=None, **_) -> list[float]:
        from forgetbench.judges import score_verdicts
        from forgetbench.judges.verify_worker import TIMED_OUT

        if answer is None:
            raise RewardError(
                "math_boxed reward needs each row's `answer` (map the reference "
                "column to `answer` in the training task's prompts.fields)"
            )
        same_lengths("math_boxed", completions, prompts=prompts, answer=answer)
        texts = [completion_text(c) for c in completions]
        verdicts = score_verdicts(
            self.judge.name,
            self.judge.score,
            [prompt_text(p) for p in prompts],
            texts,
            rows=lambda: [{"answer": a} for a in answer],
        )
        rewards = []
        for text, verdict in zip(texts, verdicts):
            timed_out = (verdict.reason or "").startswith(TIMED_OUT)
            missing = verdict.value is None
            self.counts.update(
                timed_out=timed_out, missing=missing, scored=not (timed_out or missing)
            )
            if timed_out or missing:
                log.warning("math_boxed: correctness scored 0 (%s)", verdict.reason)
            correct = 0.0 if missing else float(verdict.value)
            rewards.append(
                self.config.format_weight * float(boxed_count(text) == 1)
                + self.config.correct_weight * correct
            )
        return finite("math_boxed", rewards)


@reward("math_boxed", config=MathBoxedConfig)
def math_boxed_reward(config: MathBoxedConfig):
    """The FRPO paper's math reward: 0.2 x exactly one \\boxed{} + 0.8 x correct (math-verify)."""
    return MathBoxedReward(config)
