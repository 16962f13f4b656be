"""Training tasks beyond harmful/harmless: a task names its prompts, its reward and, optionally,
its groups (kinds) with their counts; the safety task's selection is what it was."""

import pytest

from forgetbench.errors import ForgetbenchError
from forgetbench.cell import resolve
from forgetbench.tasks import (
    DataError,
    TrainTask,
    load_rows,
    load_train_prompts,
    load_train_task,
    prompt_counts,
    take_rows,
)
from forgetbench.training.grpo import GRPOFamilyConfig


def task(**fields) -> TrainTask:
    return TrainTask.model_validate(
        {"name": "t", "version": 1, "prompts": {"path": "unused.jsonl"}, **fields}
    )


ROWS = [
    {"id": str(i), "prompt": f"p{i}", "kind": kind}
    for i, kind in enumerate(["easy", "hard", "easy", "hard", "easy", "odd"])
]


def test_groups_take_their_counts_and_a_method_field_overrides_one():
    grouped = task(groups={"easy": 2, "hard": 1})
    counts = prompt_counts(grouped, GRPOFamilyConfig())
    assert counts == {"easy": 2, "hard": 1}
    taken = take_rows(grouped, ROWS, counts)
    assert sorted(row["id"] for row in taken) == ["0", "1", "2"]  # first of each kind
    with pytest.raises(DataError, match=r"asked for 4 'hard' rows, it has 2; lower n_hard"):
        take_rows(grouped, ROWS, {"easy": 1, "hard": 4})


def test_a_task_without_groups_takes_the_first_n_prompts():
    plain = task()
    assert prompt_counts(plain, GRPOFamilyConfig()) is None
    assert take_rows(plain, ROWS, None) == ROWS
    assert [
        r["id"] for r in take_rows(plain, ROWS, prompt_counts(plain, GRPOFamilyConfig(n_prompts=3)))
    ] == ["0", "1", "2"]
    with pytest.raises(DataError, match="asked for 9 prompts, it has 6"):
        take_rows(plain, ROWS, 9)


def test_the_safety_task_selects_exactly_as_before():
    """Its groups are harmful / harmless with the method's n_harmful / n_harmless: the same rows
    in the same order as the selection every earlier run trained on."""
    safety = load_train_task("safety")
    config = GRPOFamilyConfig(n_harmful=5, n_harmless=7)
    assert prompt_counts(safety, config) == {"harmful": 5, "harmless": 7}
    assert take_rows(
        safety, load_rows(safety.prompts), prompt_counts(safety, config)
    ) == load_train_prompts("safety", 5, 7)


def test_the_reward_is_the_tasks_unless_the_method_names_one():
    math_cell = resolve("frpo", "code", "smoke", ("method.train_task=math", "warmup.enabled=false"))
    assert math_cell.resolved["method"]["config"]["reward"] == "math_boxed"
    own = resolve(
        "frpo",
        "code",
        "smoke",
        ("method.train_task=math", "warmup.enabled=false", "method.reward=safety"),
    )
    assert own.resolved["method"]["config"]["reward"] == "safety"
    safety = resolve("frpo", "code", "smoke")
    assert safety.resolved["method"]["config"]["reward"] == "safety"
    assert "n_prompts" not in safety.resolved["method"]["config"]  # unset: not in the keys


def test_a_task_without_demonstrations_cannot_be_the_warmups():
    with pytest.raises(
        ForgetbenchError, match="'math' has no warm-up demonstrations; set warmup.enabled=false"
    ):
        resolve("frpo", "code", "smoke", ("warmup.task=math",))
