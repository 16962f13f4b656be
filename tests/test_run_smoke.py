"""`forgetbench run --preset smoke` end to end: real stage processes, TRL and the shipped data, on
the tiny model of tests/conftest.py (the runner, stage store and results are what is under test;
the real model's runs are the slow tests': tests/test_attacks.py, tests/test_matrix_resume.py)."""

import json
import shutil
import time

import pandas as pd
import pytest

from forgetbench.stages.generate import GENERATIONS_FILE

COLUMNS = {
    "method",
    "attack",
    "seed",
    "phase",
    "step",
    "eval",
    "eval_version",
    "judge",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "ci_method",
    "n",
    "n_missing",
    "direction",
    "config_hash",
    "base_model",
    "backend",
    "version_torch",
    "version_transformers",
    "version_trl",
    "git_revision",
    "date",
    "policy_stage",
    "preset",
    "backend_used",
    "backend_version",
    "sandbox",
}


@pytest.fixture(scope="module")
def run_args(tiny_model):
    return (
        "run",
        "--preset",
        "smoke",
        "--method",
        "frpo",
        "--attack",
        "alpaca",
        "--set",
        f"model={tiny_model}",
        # two stages at once, one thread each: the tiny model's stages are mostly Python, so
        # this nearly halves the run (the serial path is every other CLI test's)
        "--jobs",
        "2",
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, run_args):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("smoke")
    started = time.monotonic()
    first = run_cli(*run_args, "--output-dir", str(out), env={"FORGETBENCH_THREADS": "1"})
    yield out, first, time.monotonic() - started
    shutil.rmtree(out, ignore_errors=True)  # checkpoints: disk a small CI machine needs back


def test_run_prints_before_after_table(smoke_run):
    out, result, _ = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "frpo attacked by alpaca" in result.stdout
    assert "before (P0)" in result.stdout and "after (P1)" in result.stdout


def test_results_table_rows_columns_and_ranges(smoke_run):
    out, result, _ = smoke_run
    assert result.returncode == 0, result.stderr[-3000:]
    [parquet] = (out / "results").glob("*.parquet")
    table = pd.read_parquet(parquet)
    assert COLUMNS <= set(table.columns)
    csv = pd.read_csv(parquet.with_suffix(".csv"))
    assert list(csv.columns) == list(table.columns) and len(csv) == len(table)
    assert csv["value"].tolist() == pytest.approx(table["value"].tolist())
    # {step 0 (P0), step 1 (checkpoint), step 2 (P1)} x (the 3 evals' metric + KL from P0 there)
    assert len(table) == 18
    assert set(zip(table["eval"], table["metric"])) == {
        ("harmbench", "refusal_rate"),
        ("xstest", "compliance_rate"),
        ("alpaca_helpfulness", "helpfulness"),
        ("harmbench", "kl_from_p0"),
        ("xstest", "kl_from_p0"),
        ("alpaca_helpfulness", "kl_from_p0"),
    }
    assert sorted(set(zip(table["phase"], table["step"]))) == [
        ("after", 2),
        ("before", 0),
        ("during", 1),
    ]
    scores, kl = table[table.judge != "kl"], table[table.judge == "kl"]
    assert scores["value"].between(0, 1).all()
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert (table["n"] + table["n_missing"]).eq(4).all()
    assert scores["direction"].eq("higher").all() and kl["direction"].eq("lower").all()
    assert kl.loc[kl.step == 0, "value"].eq(0).all() and kl.loc[kl.step > 0, "value"].gt(0).all()
    assert table[["config_hash", "version_torch", "version_trl", "base_model"]].notna().all().all()
    assert table["backend_used"].eq("hf").all() and table["backend_version"].notna().all()
    assert (table["method"].unique().tolist(), table["attack"].unique().tolist()) == (
        ["frpo"],
        ["alpaca"],
    )


def test_stage_folders_hold_config_and_outputs(smoke_run):
    out, result, _ = smoke_run
    assert result.returncode == 0
    stages = out / "stages"
    assert not list(stages.glob(".tmp-*"))
    for kind in ("warmup", "train", "attack", "generate", "judge", "kl"):
        folders = list((stages / kind).iterdir())
        folders = [f for f in folders if f.is_dir()]
        assert folders, kind
        for folder in folders:
            request = json.loads((folder / "request.json").read_text())
            assert request["kind"] == kind and request["config"]
            assert json.loads((folder / "stage.json").read_text())["key"] in folder.name
    [train] = [f for f in (stages / "train").iterdir() if f.is_dir()]
    assert (train / "model" / "config.json").is_file()
    history = json.loads((train / "log_history.json").read_text())
    assert any("advantage_abs_mean" in entry for entry in history)  # our advantage was used
    rows = [
        json.loads(line)
        for g in (stages / "generate").glob("*/" + GENERATIONS_FILE)
        for line in open(g)
    ]
    assert len(rows) == 36  # 9 generation stages (3 evals x 3 steps) x 4 prompts
    assert {
        "id",
        "prompt",
        "response",
        "finish_reason",
        "num_tokens",
        "backend",
        "sampling",
        "chat_template_sha256",
    } <= set(rows[0])


def test_second_run_reuses_every_stage(smoke_run, run_args, cli):
    out, first, _ = smoke_run
    assert first.returncode == 0
    started = time.monotonic()
    second = cli(*run_args, "--output-dir", str(out), env={"FORGETBENCH_THREADS": "1"})
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    lines = [line for line in second.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 30 and all("re-used" in line for line in lines)
    assert "running" not in second.stdout
    assert elapsed < 30
    [parquet] = (out / "results").glob("*.parquet")
    assert pd.read_parquet(parquet)["value"].notna().all()
