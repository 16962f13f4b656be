"""One registry for all kinds: in-tree decorators, entry-point packages, clear unknown-name errors."""

import json
import os
import subprocess
import sys

import pytest

from forgetbench import registry
from forgetbench.errors import UsageError


def test_builtin_plugins_of_every_kind_are_listed(cli):
    result = cli("list")
    assert result.returncode == 0, result.stderr
    for kind, name in [
        ("method", "frpo"),
        ("method", "grpo"),
        ("attack", "alpaca"),
        ("eval", "harmbench"),
        ("eval", "xstest"),
        ("judge", "refusal"),
        ("reward", "safety"),
        ("backend", "hf"),
    ]:
        assert name in registry.names(kind)
        assert name in result.stdout
    assert "entropic-risk" in result.stdout  # descriptions come from the plugin docstrings


def test_list_imports_no_heavy_backend():
    code = (
        "import sys; from forgetbench.cli import main; main(['list']); "
        "heavy = [m for m in ('torch', 'trl', 'vllm', 'ray') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize(
    "args, known",
    [
        (("run", "--method", "frp"), "Did you mean 'frpo'"),
        (("run", "--attack", "alpacca"), "Did you mean 'alpaca'"),
        (("run", "--preset", "tinny"), "Did you mean 'tiny'"),
        (("list", "methd"), "kinds are method"),
    ],
)
def test_unknown_names_exit_2_with_suggestion(cli, args, known):
    result = cli(*args, "--print-config") if args[0] == "run" else cli(*args)
    assert result.returncode == 2
    assert known in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_eval_lists_known_ones():
    with pytest.raises(UsageError, match="Known evals: .*harmbench, .*xstest"):
        registry.get("eval", "harmbnch")


@pytest.mark.parametrize("passes", [0, -1, "2", float("nan")])
def test_a_method_declaring_passes_that_are_not_a_positive_number_is_refused(passes):
    with pytest.raises(ValueError, match="passes must be a number > 0"):
        registry.method("bad_passes_test", passes=passes)(len)


def test_same_name_twice_is_an_error():
    registry.register("judge", "dup_test", len)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("judge", "dup_test", max)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Build and install tests/plugin_package into a private folder put on PYTHONPATH."""
    from pathlib import Path

    target = tmp_path_factory.mktemp("site")
    package = Path(__file__).parent / "plugin_package"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(package),
        ],
        check=True,
    )
    return target


def test_third_party_package_registers_through_entry_point(cli, installed_plugin):
    env = {"PYTHONPATH": str(installed_plugin)}
    listing = cli("list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "fbtest/grpo_large_beta" in listing.stdout and "fbtest/keyword_judge" in listing.stdout
    for task in ("fbtest/arith", "fbtest/arith_sft", "fbtest/chores"):  # its task folder
        assert task in listing.stdout, task
    plan = cli(
        "run", "--preset", "smoke", "--method", "fbtest/grpo_large_beta", "--print-config", env=env
    )
    assert plan.returncode == 0, plan.stderr
    assert '"beta": 0.5' in plan.stdout and "train fbtest/grpo_large_beta" in plan.stdout
    unknown = cli("run", "--method", "fbtest/nope", "--print-config", env=env)
    assert unknown.returncode == 2 and "fbtest/grpo_large_beta" in unknown.stderr


@pytest.mark.slow
def test_third_party_method_trains_and_its_judge_scores_on_smoke(cli, installed_plugin, tmp_path):
    """The package's method (the README's custom-advantage example) really trains and its judge
    really scores: a smoke run with the plugin judge as HarmBench's metric."""
    import pandas as pd

    env = {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(installed_plugin), os.environ.get("PYTHONPATH")])
        )
    }
    out = tmp_path / "out"
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "fbtest/centred",
        "--attack",
        "alpaca",
        "--set",
        "warmup.enabled=false",
        "--set",
        "evals=[harmbench]",
        "--set",
        "attack.task_evals=[]",
        "--set",
        "method.temperature_scale=2",
        "--set",
        "eval.harmbench.metrics=[{name: says_i, judge: fbtest/keyword_judge, direction: lower}]",
        "--set",
        "judges.fbtest/keyword_judge.keyword=I",
        "--output-dir",
        str(out),
        env=env,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [train] = (out / "stages" / "train").glob("fbtest-centred-*")
    history = json.loads((train / "log_history.json").read_text())
    steps = [entry for entry in history if "advantage_abs_mean" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]  # two optimiser steps of the plugin
    assert (train / "model" / "config.json").is_file()
    [table] = [pd.read_parquet(p) for p in (out / "results").glob("*.parquet")]
    scored = table[table.judge == "fbtest/keyword_judge"].set_index("step")
    assert sorted(scored.index) == [0, 1, 2] and scored["n"].eq(4).all()
    # Step 0's value recounted from the stored responses: the judge's verdicts, not a constant.
    [before] = [p for p in (out / "stages" / "generate").glob("harmbench-before-*")]
    responses = [json.loads(line)["response"] for line in open(before / "generations.jsonl")]
    assert scored.loc[0, "value"] == pytest.approx(sum("I" in r for r in responses) / 4)


@pytest.mark.slow
def test_third_party_tasks_run_on_smoke(cli, installed_plugin, tmp_path):
    """The package's task folder (register_task_dir): its training task trains the policy, its
    attack fine-tunes it, its eval scores every step, each reading the package's own data."""
    import pandas as pd

    env = {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(installed_plugin), os.environ.get("PYTHONPATH")])
        )
    }
    out = tmp_path / "out"
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "grpo",
        "--attack",
        "fbtest/arith_sft",
        "--set",
        "warmup.enabled=false",
        "--set",
        "evals=[fbtest/arith]",
        "--set",
        "method.train_task=fbtest/chores",
        "--output-dir",
        str(out),
        env=env,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [train] = (out / "stages" / "train").glob("grpo-*")
    request = json.loads((train / "request.json").read_text())
    assert request["config"]["method"]["config"]["train_task"] == "fbtest/chores"
    assert (train / "model" / "config.json").is_file()
    [table] = [pd.read_parquet(p) for p in (out / "results").glob("*.parquet")]
    scored = table[
        (table["eval"] == "fbtest/arith") & (table["judge"] == "gsm8k_answer")
    ].set_index("step")
    assert sorted(scored.index) == [0, 1, 2] and scored["n"].eq(6).all()
    assert set(table["attack"]) == {"fbtest/arith_sft"}
    # The plugin's eval prompts came from its own data file, in the installed package.
    [before] = (out / "stages" / "generate").glob("fbtest-arith-before-*")
    prompts = [json.loads(line)["prompt"] for line in open(before / "generations.jsonl")]
    assert prompts[0] == "What is 7 + 5? Give the final number."
