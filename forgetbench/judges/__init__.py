"""Judges score stored generations in a pass separate from generation.

A judge plugin is a factory ``factory(config) -> score`` where

    score(prompts, responses) -> list[Verdict]                  # the basic form
    score(prompts, responses, rows=None) -> list[Verdict]       # a judge that needs the eval row

``prompts`` are what the policy was asked (the eval's prompt template applied), ``responses`` what
it answered. A judge that declares a ``rows`` parameter (or ``**kwargs``) also receives, for each
response, its eval row: the dataset row after the eval's ``fields`` mapping, before the prompt
template (e.g. HarmBench's raw ``prompt`` = behaviour and a ``context`` string; StrongREJECT's
original forbidden prompt when the policy saw a jailbreak wrapped around it). The judge stage
passes ``rows`` only to judges that accept it, so two-argument judges keep working unchanged.

A ``score`` function may carry a ``provenance`` dict saying how it scored (``code_exec``:
``{"sandbox": "namespaces"}``); the judge stage stores it beside the verdicts and the results
table copies the columns ``forgetbench.stages.judge.JUDGE_PROVENANCE`` names into its rows.

A verdict with ``value=None`` is *missing* (endpoint down, garbage answer, empty response) and
carries the reason; metrics count it in ``n_missing`` and never score it as 0. (Correctness judges
-- ``code_exec``, ``gsm8k_answer``, ``math_verify`` -- score an empty response 0 with the reason
``empty response`` instead: an empty answer to a task is a wrong answer, and counting it missing
would raise the accuracy of a policy that stops answering.) A missing verdict
marked ``retryable`` (the endpoint failed even after its retries) makes the judge stage keep the
scored rows and fail, so that re-running the same command asks again only for the missing ones
(or, with the judge's ``allow_missing``, finish with them counted as missing).
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Optional, Sequence


class Verdict(NamedTuple):
    value: Optional[float]
    reason: Optional[str] = None
    retryable: bool = False  # missing because of a transient failure: a re-run may fill it


JudgeFn = Callable[..., list[Verdict]]


def accepts_rows(score: Callable) -> bool:
    """Whether ``score`` takes the eval rows (a ``rows`` parameter or ``**kwargs``)."""
    try:
        parameters = inspect.signature(score).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "rows" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class BuiltJudge(NamedTuple):
    name: str
    config: object  # the judge plugin's validated config (a pydantic model)
    score: JudgeFn


def build_judge(name: str, config: Optional[dict] = None) -> BuiltJudge:
    """Judge plugin ``name`` with ``config`` validated by its config class: how the judge stage
    builds the judges that score the evals and how training builds the ones that constrain or
    reward it (:mod:`forgetbench.rewards.judged`), so both are the same judge."""
    from forgetbench import registry

    plugin = registry.get("judge", name)
    settings = plugin.build_config(config or {})
    return BuiltJudge(plugin.name, settings, plugin.target(settings))


def score_verdicts(
    name: str,
    score: JudgeFn,
    prompts: Sequence[str],
    responses: Sequence[str],
    rows: Optional[Callable[[], Sequence[dict]]] = None,
) -> list[Verdict]:
    """``score`` on the responses, with the rows (built by ``rows()`` only when the judge takes
    them), checked to return one verdict per response; tuples become :class:`Verdict`."""
    if accepts_rows(score) and rows is not None:
        verdicts = score(prompts, responses, rows=rows())
    else:
        verdicts = score(prompts, responses)
    if len(verdicts) != len(responses):
        from forgetbench.errors import ForgetbenchError

        raise ForgetbenchError(
            f"judge {name!r} returned {len(verdicts)} verdicts for "
            f"{len(responses)} responses; a judge must return one per response"
        )
    return [v if isinstance(v, Verdict) else Verdict(*v) for v in verdicts]


def check_lengths(
    name: str, prompts: Sequence, responses: Sequence, rows: Optional[Sequence] = None
) -> None:
    if len(prompts) != len(responses) or (rows is not None and len(rows) != len(prompts)):
        raise ValueError(
            f"{name} judge got {len(prompts)} prompts, {len(responses)} responses"
            + (f" and {len(rows)} rows" if rows is not None else "")
        )


def rows_with(name: str, rows: Optional[Sequence[dict]], field: str) -> Sequence[dict]:
    """The eval rows a reference-based judge needs, each checked for ``field`` (a one-line error
    naming the row and the fix otherwise)."""
    from forgetbench.errors import ForgetbenchError

    if rows is None:
        raise ForgetbenchError(
            f"the {name} judge needs the eval rows (their `{field}`); it is "
            "run by the judge stage, which passes them"
        )
    for row in rows:
        if row.get(field) is None:
            raise ForgetbenchError(
                f"{name}: eval row {row.get('id', '?')!r} has no `{field}` "
                f"field; map the reference column to `{field}` in the eval's "
                "dataset.fields"
            )
    return rows


def is_empty(response) -> bool:
    return response is None or not str(response).strip()
