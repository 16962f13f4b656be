"""Final-answer judges for math: ``gsm8k_answer`` (numbers) and ``math_verify`` (LaTeX answers).

Both compare the response's final answer with the eval row's ``answer`` field (map the
reference column to ``answer`` in the eval's ``dataset.fields``) and give 1 (correct) or 0, with
the extracted answer and the reference in the reason.

* ``gsm8k_answer``: the response's final number is the first number after its last ``####``,
  else after its last "the answer is" (any case), else inside its last ``\\boxed{}``, else its
  last number. Numbers may carry ``$``, thousands commas (``1,234``) and decimals; a trailing
  full stop is not a decimal point. The reference is the text after the last ``####`` of the
  row's ``answer`` (GSM8K's format), or the whole field when it has none. Equal means equal
  within 1e-6 (relative to the reference, at least absolute 1e-6).
* ``math_verify``: the content of the response's last ``\\boxed{...}`` (or ``\\fbox{...}``),
  braces balanced, parsed with ``math_verify.parse`` and compared with
  ``math_verify.verify(gold, prediction)`` against the row's ``answer`` parsed the same way
  (``\\boxed{<answer>}``), so ``\\frac{1}{2}`` equals ``0.5``, ``\\left( 3, \\frac{\\pi}{2}
  \\right)`` equals ``(3, \\pi/2)``. A reference that math-verify cannot parse leaves the row
  *missing* (it cannot be judged), with the reason.

An empty response, or one without an extractable answer, is wrong: 0 with the reason (not
missing: the policy failed the task, and leaving it out would raise the accuracy).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Optional, Sequence

from forgetbench.config import Field, StrictModel
from forgetbench.errors import ForgetbenchError
from forgetbench.judges import Verdict, check_lengths, is_empty, rows_with
from forgetbench.registry import judge

_NUMBER = re.compile(r"(?<![\w.])-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is", re.I)


# ---- numbers (GSM8K) ---------------------------------------------------------------------------


def parse_number(text: str) -> Optional[Decimal]:
    """``"$1,234.50"`` -> Decimal("1234.50"); None when ``text`` holds no number."""
    found = _NUMBER.search(text)
    if found is None:
        return None
    try:
        return Decimal(re.sub(r"[\s$,]", "", found.group(0)))
    except InvalidOperation:
        return None


def last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced; an unclosed
    one runs to the end), or of a brace-less ``\\boxed 5``; None when there is none."""
    starts = list(re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text))
    if not starts:
        return None
    last = starts[-1]
    if last.group(1) is None:
        rest = text[last.end() :].split()
        return rest[0].rstrip(".$") if rest else None
    depth, position = 1, last.end()
    while position < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        position += 1
    return text[last.end() : position - 1 if depth == 0 else position].strip()


def extract_final_number(response: str) -> tuple[Optional[Decimal], str]:
    """The response's final number and where it was found (see the module docstring)."""
    if "####" in response:
        return parse_number(response.rsplit("####", 1)[1]), "after ####"
    cues = list(_ANSWER_IS.finditer(response))
    if cues:
        value = parse_number(response[cues[-1].end() :])
        if value is not None:
            return value, "after 'the answer is'"
    boxed = last_boxed(response)
    if boxed is not None and parse_number(boxed) is not None:
        return parse_number(boxed), "in \\boxed{}"
    numbers = _NUMBER.findall(response)
    if numbers:
        return parse_number(numbers[-1]), "last number"
    return None, "no number in the response"


def reference_number(answer: str) -> Optional[Decimal]:
    return parse_number(str(answer).rsplit("####", 1)[-1])


def numbers_equal(a: Decimal, b: Decimal, tolerance: float = 1e-6) -> bool:
    return abs(float(a) - float(b)) <= tolerance * max(1.0, abs(float(b)))


class GSM8KAnswerConfig(StrictModel):
    """Numeric final-answer matching (no options beyond the tolerance)."""

    tolerance: float = Field(
        1e-6,
        ge=0,
        description="Relative tolerance (at least absolute, "
        "for references below 1) for two numbers to count as equal.",
    )


@judge("gsm8k_answer", config=GSM8KAnswerConfig)
def gsm8k_answer(config: GSM8KAnswerConfig):
    """Final number (after ####, 'the answer is', in \\boxed{}, else last) vs the reference: 1/0."""

    def score(
        prompts: Sequence[str], responses: Sequence[str], rows: Optional[Sequence[dict]] = None
    ) -> list[Verdict]:
        check_lengths("gsm8k_answer", prompts, responses, rows)
        verdicts = []
        for response, row in zip(responses, rows_with("gsm8k_answer", rows, "answer")):
            reference = reference_number(row["answer"])
            if reference is None:
                raise ForgetbenchError(
                    f"gsm8k_answer: eval row {row.get('id', '?')!r} has no "
                    f"number in its answer {str(row['answer'])[-80:]!r}"
                )
            if is_empty(response):
                verdicts.append(Verdict(0.0, "empty response"))
                continue
            value, where = extract_final_number(str(response))
            if value is None:
                verdicts.append(Verdict(0.0, where))
                continue
            correct = numbers_equal(value, reference, config.tolerance)
            verdicts.append(
                Verdict(1.0 if correct else 0.0, f"answer {value} ({where}), reference {reference}")
            )
        return verdicts

    return score


# ---- LaTeX answers (MATH) ----------------------------------------------------------------------


class MathVerifyConfig(StrictModel):
    """Answer equivalence with the math-verify package (HF's grader, as in open-r1/lighteval)."""

    timeout_s: int = Field(
        5,
        ge=1,
        description="Seconds math-verify may spend parsing or "
        "comparing one answer (its own timeout, in a child process that is "
        "killed after 3 x timeout_s + 2 s: forgetbench.judges.verify_worker); "
        "a timed-out answer is wrong (0), with the reason.",
    )
    float_rounding: int = Field(
        6,
        ge=0,
        description="Decimal places floats are rounded to "
        "before comparing (math_verify.verify's float_rounding).",
    )


def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise ForgetbenchError(
            "the math_verify judge needs the math-verify package: pip install "
            "math-verify (a forgetbench dependency; reinstall forgetbench)"
        ) from None
    return math_verify


@judge("math_verify", config=MathVerifyConfig)
def math_verify_judge(config: MathVerifyConfig):
    """Last \\boxed{} answer vs the reference, equivalence by math-verify (parse + verify): 1/0."""
    from forgetbench.judges.verify_worker import Verifier

    _math_verify()  # a missing package is one line now, not a dead child process later
    verifier = Verifier(config.timeout_s, config.float_rounding)

    def score(
        prompts: Sequence[str], responses: Sequence[str], rows: Optional[Sequence[dict]] = None
    ) -> list[Verdict]:
        check_lengths("math_verify", prompts, responses, rows)
        verdicts = []
        for response, row in zip(responses, rows_with("math_verify", rows, "answer")):
            answer = str(row["answer"])
            if is_empty(response):
                verdicts.append(Verdict(0.0, "empty response"))
                continue
            boxed = last_boxed(str(response))
            if not boxed:
                verdicts.append(Verdict(0.0, "no \\boxed{} answer in the response"))
                continue
            correct, problem = verifier.check(answer, boxed)
            if correct is None:
                verdicts.append(Verdict(None, problem))
                continue
            reason = f"boxed {boxed[:200]!r}, reference {answer[:200]!r}"
            verdicts.append(
                Verdict(1.0 if correct else 0.0, f"{problem}: {reason}" if problem else reason)
            )
        return verdicts

    return score
