"""Tasks from anywhere (forgetbench.task_sources): a YAML file where a task name goes, extra task
folders that add to the built-in ones, data paths relative to the task's folder, stage keys that
hash the data and not where a machine keeps it, and the bad input around them."""

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_TASKS = ROOT / "tests" / "plugin_package" / "fbtest_plugin" / "tasks"


def my_eval(folder: Path, name: str = "my_arith", rows: int = 6) -> Path:
    """The plugin package's arithmetic eval, copied as a user's own YAML beside its data."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    lines = (PLUGIN_TASKS / "data" / "arith_eval.jsonl").read_text().splitlines()[:rows]
    (folder / "data" / "arith_eval.jsonl").write_text("\n".join(lines) + "\n")
    text = (
        (PLUGIN_TASKS / "evals" / "arith.yaml").read_text().replace("name: arith", f"name: {name}")
    )
    (folder / f"{name}.yaml").write_text(text)
    return folder / f"{name}.yaml"


def print_config(cli, *args, cwd_env=None):
    result = cli(
        "run", "--preset", "smoke", "--method", "grpo", "--print-config", *args, env=cwd_env
    )
    return result


def stage_keys(stdout: str) -> list[str]:
    """The stage folders of the user's eval in a --print-config plan."""
    return [
        line.split()[-1]
        for line in stdout.splitlines()
        if line.startswith("todo") and "my_arith" in line
    ]


def test_a_yaml_path_works_where_an_eval_or_attack_name_does(cli, tmp_path):
    """`--set evals=[harmbench,./x.yaml]` and `--attack ./y.yaml`: resolved under their own names,
    their data read relative to the YAML file."""
    eval_file = my_eval(tmp_path / "a")
    attack_dir = tmp_path / "lab" / "attacks"
    attack_dir.mkdir(parents=True)
    shutil.copytree(PLUGIN_TASKS / "data", tmp_path / "lab" / "data")
    attack_text = (PLUGIN_TASKS / "attacks" / "arith_sft.yaml").read_text()
    (attack_dir / "mine.yaml").write_text(
        attack_text.replace("task_evals: [fbtest/arith]", f"task_evals: [{eval_file}]")
    )
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "grpo",
        "--attack",
        str(attack_dir / "mine.yaml"),
        "--set",
        f"evals=[harmbench,{eval_file}]",
        "--print-config",
    )
    assert result.returncode == 0, result.stderr
    assert "attack grpo+arith_sft" in result.stdout and "generate my_arith before" in result.stdout
    assert str(tmp_path) not in json.dumps(
        [line for line in result.stdout.splitlines() if "path_root" not in line]
    )


def test_stage_keys_hash_the_data_not_where_it_is(cli, tmp_path):
    """The same eval and data in two folders: the same keys; changed data: new keys."""
    first = print_config(cli, "--set", f"evals=[{my_eval(tmp_path / 'one')}]")
    second = print_config(cli, "--set", f"evals=[{my_eval(tmp_path / 'two')}]")
    fewer = print_config(cli, "--set", f"evals=[{my_eval(tmp_path / 'three', rows=5)}]")
    assert first.returncode == second.returncode == fewer.returncode == 0, first.stderr
    assert stage_keys(first.stdout) and stage_keys(first.stdout) == stage_keys(second.stdout)
    assert set(stage_keys(fewer.stdout)).isdisjoint(stage_keys(first.stdout))


def test_extra_task_folders_add_to_the_builtin_ones(cli, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "evals").mkdir(parents=True)
    shutil.copy(my_eval(tmp_path / "src"), one / "evals" / "my_arith.yaml")
    shutil.copytree(tmp_path / "src" / "data", one / "data")
    (two / "train").mkdir(parents=True)
    shutil.copy(PLUGIN_TASKS / "train" / "chores.yaml", two / "train")
    shutil.copytree(PLUGIN_TASKS / "data", two / "data")
    import os

    listing = cli("list", env={"FORGETBENCH_TASKS": f"{one}{os.pathsep}{two}"})
    assert listing.returncode == 0, listing.stderr
    for name in ("my_arith", "harmbench", "math500", "chores", "safety", "alpaca"):
        assert name in listing.stdout, name
    missing = cli("list", env={"FORGETBENCH_TASKS": f"{one}{os.pathsep}{tmp_path / 'nope'}"})
    assert missing.returncode == 2
    [line] = missing.stderr.strip().splitlines()
    assert str(tmp_path / "nope") in line and "does not exist" in line


def test_a_task_defined_twice_names_both_files(cli, tmp_path):
    folder = tmp_path / "tasks"
    (folder / "evals").mkdir(parents=True)
    (folder / "evals" / "copy.yaml").write_text(
        (ROOT / "tasks" / "evals" / "mbpp.yaml").read_text().replace("data/mbpp", "data")
    )
    (folder / "data").mkdir()
    shutil.copy(ROOT / "tasks" / "data" / "mbpp" / "mbpp_test.jsonl", folder / "data")
    result = cli("list", "eval", env={"FORGETBENCH_TASKS": str(folder)})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "'mbpp' is defined twice" in line and "copy.yaml" in line and "mbpp.yaml" in line


@pytest.mark.parametrize("case", ["missing", "not-a-mapping", "escapes", "no-data"])
def test_a_bad_task_file_is_one_line_naming_it_and_writes_nothing(cli, tmp_path, case):
    path = tmp_path / "bad.yaml"
    text = (PLUGIN_TASKS / "evals" / "arith.yaml").read_text()
    (tmp_path / "data").mkdir()
    shutil.copy(PLUGIN_TASKS / "data" / "arith_eval.jsonl", tmp_path / "data")
    if case == "not-a-mapping":
        path.write_text("- just\n- a list\n")
    elif case == "escapes":
        path.write_text(text.replace("path: data/arith_eval.jsonl", "path: ../etc/passwd"))
    elif case == "no-data":
        path.write_text(text.replace("arith_eval.jsonl", "nothing.jsonl"))
    out = tmp_path / "out"
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "grpo",
        "--set",
        f"evals=[{path}]",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "bad.yaml" in line, line
    needle = {
        "missing": "does not exist",
        "not-a-mapping": "must be a YAML mapping",
        "escapes": "leaves its task folder",
        "no-data": "nothing.jsonl",
    }[case]
    assert needle in line, line
    assert not out.exists()


def test_builtin_tasks_keep_their_configs(tmp_path):
    """Built-in datasets carry no location or hash (their version pins them), so their dumped
    configs, and the stage keys made from them, are what they were."""
    from forgetbench import registry

    dataset = (
        registry.get("eval", "math500")
        .build_config(registry.get("eval", "math500").target)
        .model_dump(mode="json")["dataset"]
    )
    assert dataset == {
        "path": "data/math500/test.jsonl",
        "hub": None,
        "hub_config": None,
        "split": "train",
        "filter": {},
        "fields": {
            "id": "unique_id",
            "prompt": "problem",
            "answer": "answer",
            "subject": "subject",
            "level": "level",
        },
        "sample": None,
        "head": None,
        "id_prefix": None,
    }


def test_two_packages_registering_the_same_task_name_is_an_error_naming_both(tmp_path):
    """Two distributions under one entry-point name (one namespace) both shipping `arith`."""
    from forgetbench import registry
    from forgetbench.errors import UsageError
    from forgetbench.task_sources import register_task_dir

    first, second = tmp_path / "one", tmp_path / "two"
    for folder in (first, second):
        (folder / "evals").mkdir(parents=True)
        shutil.copy(PLUGIN_TASKS / "evals" / "arith.yaml", folder / "evals")
        shutil.copytree(PLUGIN_TASKS / "data", folder / "data")
    token = registry._namespace.set("duplab")
    try:
        register_task_dir(first)
        assert registry.get("eval", "duplab/arith").target["dataset"]["path_root"] == str(first)
        with pytest.raises(
            UsageError,
            match=r"eval 'duplab/arith' is defined twice: .*one.*"
            r"arith.yaml and .*two.*arith.yaml",
        ):
            register_task_dir(second)
        with pytest.raises(UsageError, match="task folder .* does not exist"):
            register_task_dir(tmp_path / "missing")
    finally:
        registry._namespace.reset(token)
