"""The whole pipeline on the fast path: a 2 x 2 `forgetbench matrix` (grpo, frpo x alpaca and a
hotter alpaca) on the tiny model of tests/conftest.py, in real stage processes with real TRL, to a
results table per cell, then `forgetbench results` and `forgetbench leaderboard build` on it.

The tiny model's numbers are noise: what is checked is the plumbing (sharing, tables, provenance,
re-use), never a claim about safety or cost; the real model's matrix is tests/test_matrix_resume.py
and tests/test_leaderboard_e2e.py (slow)."""

from __future__ import annotations

import json
import shutil
import textwrap
import time

import pandas as pd
import pytest

from forgetbench.results import current, load_results


@pytest.fixture(scope="module")
def matrix(tiny_model, tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("fast-matrix")
    spec = root / "matrix.yaml"
    # No warm-up and no mid-attack checkpoint: P0 and P1 of each cell, on HarmBench (2 prompts)
    # and the Alpaca attacks' helpfulness eval (2 prompts).
    spec.write_text(
        textwrap.dedent(f"""\
        preset: smoke
        methods: [grpo, frpo]
        attacks: [alpaca, {{label: alpaca-hot, plugin: alpaca, set: {{learning_rate: 1.0e-3}}}}]
        set: ["model={tiny_model}", "warmup.enabled=false", "attack.checkpoint_every=0",
              "evals=[harmbench]", "eval.harmbench.limit=2", "eval.alpaca_helpfulness.limit=2"]
        """)
    )
    out = root / "out"
    started = time.monotonic()
    # two stages at once, one thread each: the local executor's parallel path, and half the time
    result = run_cli(
        "matrix",
        str(spec),
        "--output-dir",
        str(out),
        "--jobs",
        "2",
        env={"FORGETBENCH_THREADS": "1"},
    )
    seconds = time.monotonic() - started
    print(f"\nthe 2 x 2 matrix on the tiny model ran in {seconds:.0f} s")
    yield spec, out, result
    shutil.rmtree(root, ignore_errors=True)


def test_two_by_two_matrix_runs_to_a_results_table_per_cell(matrix):
    spec, out, result = matrix
    assert result.returncode == 0, result.stderr[-3000:]
    assert "42 stages: 0 re-used, 42 computed, 0 failed, 0 skipped" in result.stdout
    # each method trained once, each cell attacked once
    assert len(list((out / "stages" / "train").glob("*/stage.json"))) == 2
    assert len(list((out / "stages" / "attack").glob("*/stage.json"))) == 4
    assert len(list((out / "results").glob("*.parquet"))) == 4
    frame, note = current(load_results(out))
    assert note is None
    assert set(zip(frame["method"], frame["attack"])) == {
        (m, a) for m in ("grpo", "frpo") for a in ("alpaca", "alpaca-hot")
    }
    # per cell: (P0, P1) x (harmbench, alpaca_helpfulness) x (score, KL from P0)
    assert frame.groupby(["method", "attack"]).size().eq(8).all()
    assert set(frame["phase"]) == {"before", "after"}
    scores, kl = frame[frame.judge != "kl"], frame[frame.judge == "kl"]
    assert set(scores["metric"]) == {"refusal_rate", "helpfulness"}
    assert (frame["n"] + frame["n_missing"]).eq(2).all()
    assert scores["value"].dropna().between(0, 1).all()
    assert kl.loc[kl.phase == "before", "value"].eq(0).all()
    assert kl.loc[kl.phase == "after", "value"].gt(0).all()
    # P0 is one policy per method: its rows are the same numbers in both of its cells
    before = scores[scores.phase == "before"].set_index(["method", "attack", "eval"])["value"]
    for method in ("grpo", "frpo"):
        pd.testing.assert_series_equal(
            before[method, "alpaca"], before[method, "alpaca-hot"], check_names=False
        )
    assert (
        frame[
            [
                "config_hash",
                "train_stage",
                "generate_stage",
                "judge_stage",
                "base_model",
                "version_torch",
                "git_revision",
            ]
        ]
        .notna()
        .all()
        .all()
    )
    # the cost beside seconds per step: the methods' declared passes (both one per micro-batch)
    assert frame["method_passes"].eq(1.0).all()
    # and the median step time of the train stage's own log, the same for a policy's two cells
    assert frame["train_step_seconds"].gt(0).all()
    assert frame.groupby("method")["train_step_seconds"].nunique().eq(1).all()


def test_a_second_run_reuses_every_stage_and_tabulates_the_same_numbers(matrix, cli):
    spec, out, result = matrix
    assert result.returncode == 0, result.stderr[-3000:]
    first = load_results(out).sort_values(["method", "attack", "phase", "eval", "metric"])
    again = cli("matrix", str(spec), "--output-dir", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "42 stages: 42 re-used, 0 computed" in again.stdout
    second = load_results(out).sort_values(["method", "attack", "phase", "eval", "metric"])
    assert first["value"].tolist() == pytest.approx(second["value"].tolist(), nan_ok=True)


def test_results_command_filters_and_exports_the_matrix_table(matrix, cli, tmp_path):
    spec, out, result = matrix
    assert result.returncode == 0, result.stderr[-3000:]
    listed = cli(
        "results",
        "--output-dir",
        str(out),
        "--filter",
        "method=frpo",
        "--filter",
        "phase=after",
        "--format",
        "csv",
    )
    assert listed.returncode == 0, listed.stderr
    from io import StringIO

    rows = pd.read_csv(StringIO(listed.stdout))
    assert len(rows) == 8 and set(rows["method"]) == {"frpo"} and set(rows["phase"]) == {"after"}
    target = tmp_path / "all.parquet"
    assert cli("results", "--output-dir", str(out), "--out", str(target)).returncode == 0
    assert len(pd.read_parquet(target)) == 32


def test_leaderboard_builds_from_the_matrix(matrix, cli, tmp_path):
    spec, out, result = matrix
    assert result.returncode == 0, result.stderr[-3000:]
    site = tmp_path / "site"
    built = cli(
        "leaderboard", "build", "--results", str(out), "--out", str(site), "--resamples", "50"
    )
    assert built.returncode == 0, built.stderr[-3000:]
    tracks = json.loads((site / "tracks.json").read_text())
    [track] = tracks
    assert set(tracks[track]["attacks"]) == {"alpaca", "alpaca-hot"}
    board = pd.read_csv(site / track / "leaderboard.csv")
    assert sorted(board["method"]) == ["frpo", "grpo"]
