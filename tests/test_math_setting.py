"""The FRPO paper's math setting (docs/methods.md §1.5): the `math` training task's data, the
`math_boxed` reward computed by hand, its time limit, the paper-math preset and lambda sweep, and
a smoke run end to end (training task, reward, code attack, MATH500 rows in the results)."""

import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from forgetbench import registry
from forgetbench.tasks import load_rows, load_train_task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "data" / "math_train"


def math_reward(**config):
    plugin = registry.get("reward", "math_boxed")
    return plugin.target(plugin.build_config(config))


# ------------------------------------------------------------------------------------- the reward


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("so x = 3, and \\boxed{3}", "3", 0.2 * 1 + 0.8 * 1),  # format and correct
        ("\\boxed{4}", "3", 0.2 * 1 + 0.8 * 0),  # format only
        ("\\boxed{2} or maybe \\boxed{3}", "3", 0.2 * 0 + 0.8 * 1),  # two boxes: last is judged
        ("the answer is 3", "3", 0.0),  # no box: neither
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # equal by math-verify
        ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("", "3", 0.0),
    ],
)
def test_math_boxed_is_the_papers_weighted_sum(completion, answer, expected):
    """r = 0.2 x [exactly one \\boxed{}] + 0.8 x [the boxed answer is correct] (§1.5)."""
    reward = math_reward()
    conversational = [[{"role": "assistant", "content": completion}]]
    assert reward(["q"], conversational, answer=[answer]) == pytest.approx([expected])


def test_math_boxed_weights_come_from_its_config():
    reward = math_reward(format_weight=0.5, correct_weight=2.0)
    assert reward(
        ["q", "q"], ["\\boxed{3}", "\\boxed{1}\\boxed{3}"], answer=["3", "3"]
    ) == pytest.approx([2.5, 2.0])


def test_an_answer_that_hangs_the_verifier_is_a_counted_logged_zero(caplog):
    """9^(9^(9^9)) makes sympy compute a number with ~3.7e8 digits: the check is stopped at the
    time limit, correctness scores 0 (format still counts), and the run's log and counts say so."""
    reward = math_reward(timeout_s=1)
    with caplog.at_level(logging.WARNING, logger="forgetbench"):
        values = reward(["q", "q"], ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{7}"], answer=["1", "7"])
    assert values == pytest.approx([0.2, 1.0])
    assert reward.counts["timed_out"] == 1 and reward.counts["scored"] == 1
    assert any("math-verify timed out" in record.getMessage() for record in caplog.records)


def test_the_hard_limit_kills_a_check_that_ignores_the_soft_one():
    """math-verify's own alarm cannot fire inside a C call or outside the main thread; the
    child process is then killed at the limit, and the next answer gets a fresh child."""
    from forgetbench.judges.verify_worker import TIMED_OUT, Verifier

    verifier = Verifier(timeout_s=60, float_rounding=6)
    assert verifier.check("7", "7") == (True, "")  # starts the child, warms it up
    verifier.limit_s = 1
    correct, reason = verifier.check("1", "9^{9^{9^{9}}}")
    assert correct is False and reason.startswith(TIMED_OUT) and "killed" in reason
    assert verifier.process is None
    verifier.limit_s = 30
    assert verifier.check("\\frac{1}{2}", "0.5") == (True, "")
    verifier.close()


def test_the_reward_needs_the_rows_answer():
    with pytest.raises(Exception, match="needs each row's `answer`"):
        math_reward()(["q"], ["\\boxed{1}"])


# --------------------------------------------------------------------------------------- the data


def test_math_task_is_levels_3_to_5_without_the_held_out_100_or_math500():
    task = load_train_task("math")
    assert task.reward == "math_boxed" and task.groups is None and task.warmup is None
    assert task.system_prompt == (
        "Please reason step by step, and put your final answer within \\boxed{}."
    )
    rows = load_rows(task.prompts)
    report = json.loads((DATA / "build_report.json").read_text())
    assert len(rows) == report["prompts"] == 5484
    assert {row["level"] for row in rows} == {"Level 3", "Level 4", "Level 5"}
    assert all(row["answer"].strip() for row in rows)
    assert len(report["held_out_ids"]) == 100
    assert not set(report["held_out_ids"]) & {row["id"] for row in rows}
    with gzip.open(DATA / "math_train.jsonl.gz", "rt") as handle:
        source = [json.loads(line) for line in handle]
    assert report["levels_3_5"] == sum(
        r["level"] in ("Level 3", "Level 4", "Level 5") for r in source
    )
    math500 = {
        json.loads(line)["problem"].strip()
        for line in open(ROOT / "tasks" / "data" / "math500" / "test.jsonl")
    }
    assert not math500 & {row["prompt"].strip() for row in rows}


def test_math_build_is_deterministic(tmp_path):
    result = subprocess.run(
        [sys.executable, str(DATA / "build.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in ("rl_prompts.jsonl.gz", "build_report.json"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


# ----------------------------------------------------------------------------- presets and sweep


def test_paper_math_preset_has_the_papers_settings():
    from forgetbench.cell import resolve

    cell = resolve("frpo", "code", "paper-math")
    method = cell.resolved["method"]["config"]
    assert cell.resolved["model"] == "Qwen/Qwen2.5-Math-7B"
    assert (method["train_task"], method["reward"], method["lam"], method["beta"]) == (
        "math",
        "math_boxed",
        2.0,
        1e-4,
    )
    assert (
        method["lora_r"],
        method["lora_alpha"],
        method["num_generations"],
        method["max_completion_length"],
        method["max_prompt_length"],
        method["temperature"],
        method["top_p"],
        method["epochs"],
        method["lr_scheduler"],
        method["warmup_ratio"],
        method["learning_rate"],
        method["max_grad_norm"],
    ) == (64, 128, 8, 2048, 512, 1.0, 1.0, 3, "cosine", 0.1, 6e-6, 0.5)
    assert set(cell.resolved["evals"]) == {"math500", "mbpp"}
    grpo = resolve("grpo", "code", "paper-math").resolved["method"]["config"]
    assert (grpo["beta"], grpo["adv_norm"], grpo["learning_rate"], grpo["max_grad_norm"]) == (
        1e-4,
        "none",
        6e-6,
        1.0,
    )


def test_the_lambda_sweep_is_the_papers():
    """§1.5: lambda in {10, 4, 2, 1, 0.5, 0.2, 0.1}, lr 6e-6 for lambda >= 1 and 5e-6 below."""
    from forgetbench.matrix import load_matrix_file, make_spec
    from forgetbench.planner import plan_matrix

    path = ROOT / "forgetbench" / "presets" / "sweeps" / "paper-math-lambda.yaml"
    load_matrix_file(path)
    plan = plan_matrix(make_spec(file=path))
    frpo = {
        cell.resolved["method"]["config"]["lam"]: cell.resolved["method"]["config"]
        for cell in (p.cell for p in plan.cells)
        if cell.resolved["method"]["name"] == "frpo"
    }
    assert {lam: c["learning_rate"] for lam, c in frpo.items()} == {
        10.0: 6e-6,
        4.0: 6e-6,
        2.0: 6e-6,
        1.0: 6e-6,
        0.5: 5e-6,
        0.2: 5e-6,
        0.1: 5e-6,
    }
    assert {c["beta"] for c in frpo.values()} == {1e-4}


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_math_setting_runs_end_to_end_on_smoke(cli, tmp_path):
    """FRPO on the math task with the math_boxed reward, the code attack, MATH500 (and the
    attack's MBPP) scored before, at the checkpoint and after."""
    import pandas as pd

    out = tmp_path / "out"
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "frpo",
        "--attack",
        "code",
        "--set",
        "warmup.enabled=false",
        "--set",
        "method.train_task=math",
        "--set",
        "method.n_prompts=4",
        "--set",
        "evals=[math500]",
        "--set",
        "eval.math500.limit=4",
        "--output-dir",
        str(out),
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [train] = (out / "stages" / "train").glob("frpo-*")
    history = json.loads((train / "log_history.json").read_text())
    # the task's reward scored the rollouts (TRL logs each reward function by its name)
    rewards = [
        entry["rewards/math_boxed/mean"] for entry in history if "rewards/math_boxed/mean" in entry
    ]
    assert len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)
    [table] = [pd.read_parquet(p) for p in (out / "results").glob("*.parquet")]
    math500 = table[table["judge"] == "math_verify"].set_index("step")
    assert set(math500["eval"]) == {"math500"}
    assert sorted(math500.index) == [0, 1, 2] and math500["n"].eq(4).all()
    assert math500["value"].between(0, 1).all()
    assert sorted(table[table["judge"] == "code_exec"]["step"]) == [0, 1, 2]  # MBPP
