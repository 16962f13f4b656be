"""Hostile input to the command line: every FORGETBENCH_* variable and every file argument that is
missing, empty, not UTF-8, not a mapping or a folder ends with one line naming the setting and the
fix, exit 2, before any work and with nothing written."""

import pytest

from forgetbench.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("forgetbench: error: "), err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def bad_files(tmp_path):
    files = {
        "missing": tmp_path / "nope.yaml",
        "empty": tmp_path / "empty.yaml",
        "not-utf8": tmp_path / "latin1.yaml",
        "not-a-mapping": tmp_path / "list.yaml",
        "folder": tmp_path / "folder.yaml",
        "malformed": tmp_path / "malformed.yaml",
    }
    files["empty"].write_text("")
    files["not-utf8"].write_bytes(b"preset: smoke\nmethods: [gr\xe9po]\n")
    files["not-a-mapping"].write_text("- grpo\n- frpo\n")
    files["folder"].mkdir()
    files["malformed"].write_text("methods: [grpo\n")
    return files


EXPECTED = {
    "missing": "does not exist",
    "empty": "is empty",
    "not-utf8": "is not UTF-8",
    "not-a-mapping": "must be a YAML mapping",
    "folder": "is a folder",
    "malformed": "malformed YAML",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_a_bad_preset_file(capsys, tmp_path, bad_files, case):
    out = tmp_path / "out"
    code, err = run(capsys, "run", "--preset", str(bad_files[case]), "--output-dir", str(out))
    assert_one_line_error(code, err, EXPECTED[case], bad_files[case].name)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_a_bad_matrix_file(capsys, tmp_path, bad_files, case):
    out = tmp_path / "out"
    code, err = run(capsys, "matrix", str(bad_files[case]), "--output-dir", str(out))
    assert_one_line_error(code, err, EXPECTED[case], bad_files[case].name)
    assert not out.exists()


@pytest.mark.parametrize("case", ["not-utf8", "not-a-mapping"])
def test_a_bad_task_file_in_a_tasks_folder(cli, tmp_path, bad_files, case):
    # A fresh process: the registry reads task folders once per process.
    tasks = tmp_path / "tasks"
    (tasks / "attacks").mkdir(parents=True)
    (tasks / "attacks" / "mine.yaml").write_bytes(bad_files[case].read_bytes())
    result = cli("list", "attack", env={"FORGETBENCH_TASKS": str(tasks)})
    assert_one_line_error(result.returncode, result.stderr.strip(), EXPECTED[case], "mine.yaml")


@pytest.mark.parametrize(
    "variable,value,needle",
    [
        ("FORGETBENCH_THREADS", "abc", "is not a positive integer"),
        ("FORGETBENCH_THREADS", "0", "is not a positive integer"),
        ("FORGETBENCH_THREADS", "-2", "is not a positive integer"),
        ("FORGETBENCH_THREADS", "1.5", "is not a positive integer"),
        ("FORGETBENCH_THREADS", "", "is set but empty"),
        ("FORGETBENCH_TASKS", "{missing}", "does not exist"),
        ("FORGETBENCH_TASKS", "{file}", "is a file, not a folder"),
        ("FORGETBENCH_TASKS", " ", "is set but empty"),
        ("FORGETBENCH_CACHE", "{file}", "is a file, not a folder"),
        ("FORGETBENCH_CACHE", "", "is set but empty"),
        ("FORGETBENCH_OUTPUT", "", "is set but empty"),
        ("FORGETBENCH_CPU_BF16", "yes", "is not 0 or 1"),
        ("FORGETBENCH_CPU_BF16", "", "is set but empty"),
    ],
)
def test_a_bad_environment_variable_is_one_line_before_any_work(
    capsys, monkeypatch, tmp_path, variable, value, needle
):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value.format(missing=tmp_path / "nope", file=a_file))
    code, err = run(capsys, "run", "--preset", "smoke")
    assert_one_line_error(code, err, variable, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no runs/ folder


def test_an_output_variable_pointing_under_a_file_is_one_line(capsys, monkeypatch, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.setenv("FORGETBENCH_OUTPUT", str(a_file / "runs"))
    code, err = main(["run", "--preset", "smoke"]), capsys.readouterr().err.strip()
    assert code == 1 and "is not writable" in err and len(err.splitlines()) == 1


def test_zero_training_steps_is_refused_not_reported_as_a_trained_policy(capsys, tmp_path):
    for override in ("method.max_steps=0", "attack.max_steps=0", "warmup.max_steps=-3"):
        code, err = run(
            capsys,
            "run",
            "--preset",
            "smoke",
            "--set",
            override,
            "--output-dir",
            str(tmp_path / "out"),
        )
        assert_one_line_error(code, err, "max_steps", "positive number of optimiser steps")
    assert not (tmp_path / "out").exists()


def test_balanced_micro_batches_that_split_no_batch_are_one_line_before_any_work(capsys, tmp_path):
    for override, rows in (
        ("warmup.balanced_micro_batches=3", 8),
        ("attack.balanced_micro_batches=16", 8),
    ):
        code, err = run(
            capsys,
            "run",
            "--preset",
            "tiny",
            "--set",
            override,
            "--output-dir",
            str(tmp_path / "out"),
        )
        assert_one_line_error(code, err, "balanced_micro_batches", f"a divisor of {rows}, or 1")
    assert not (tmp_path / "out").exists()


def test_more_jobs_than_cores_is_refused_before_any_work(capsys, monkeypatch, tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("FORGETBENCH_THREADS", raising=False)
    code, err = run(
        capsys,
        "run",
        "--preset",
        "smoke",
        "--jobs",
        str(cores + 1),
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert_one_line_error(code, err, f"--jobs {cores + 1}", f"{cores} cores")
    monkeypatch.setenv("FORGETBENCH_THREADS", str(cores))
    if cores >= 2:
        code, err = run(
            capsys, "run", "--preset", "smoke", "--jobs", "2", "--output-dir", str(tmp_path / "out")
        )
        assert_one_line_error(code, err, "FORGETBENCH_THREADS", "lower one of them")
    assert not list((tmp_path / "out").glob("stages/*/*"))


def test_jobs_share_the_cores_when_threads_are_not_set(monkeypatch):
    from forgetbench.executors import local_threads

    monkeypatch.delenv("FORGETBENCH_THREADS", raising=False)
    monkeypatch.setattr("forgetbench.environment.cores", lambda: 4)
    assert local_threads(1) is None and local_threads(2) == 2 and local_threads(4) == 1
