"""`forgetbench results`: print, filter and export the long table (CSV, Parquet, Markdown).

The tables here are written by forgetbench's own writer (two cells, as `forgetbench matrix` leaves
them); tests/test_matrix_resume.py runs the command on a real run's output as well."""

from io import StringIO

import pandas as pd
import pytest

from forgetbench.results import load_results, to_markdown, write_table


def _rows(method, attack, seed):
    rows = []
    for phase, step in (("before", 0), ("after", 2)):
        for eval_name, metric, value in (
            ("harmbench", "refusal_rate", 0.75),
            ("xstest", "compliance_rate", 0.5),
        ):
            value = value if phase == "before" else value / 3
            rows.append(
                {
                    "method": method,
                    "attack": attack,
                    "seed": seed,
                    "phase": phase,
                    "step": step,
                    "eval": eval_name,
                    "judge": "refusal",
                    "metric": metric,
                    "value": value,
                    "ci_low": value / 2,
                    "ci_high": min(1.0, value * 1.5),
                    "n": 4,
                    "n_missing": 0,
                    "direction": "higher",
                    "version_vllm": None,
                    "config_hash": f"{method}{seed}",
                    "note": "a|b",
                }
            )
    return rows


@pytest.fixture
def output(tmp_path):
    for method, seed in (("grpo", 0), ("frpo", 1)):
        write_table(
            _rows(method, "alpaca", seed),
            tmp_path / "results",
            f"{method}__alpaca__seed{seed}__{method}{seed}",
        )
    return tmp_path


def test_prints_every_row_in_a_stable_order(cli, output):
    result = cli("results", "--output-dir", str(output))
    assert result.returncode == 0, result.stderr
    assert "8 rows from" in result.stdout
    body = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(body) == 8
    assert body[0].split("│")[1].strip() == "frpo" and body[-1].split("│")[1].strip() == "grpo"
    assert [line.split("│")[4].strip() for line in body[:4]] == ["before"] * 2 + ["after"] * 2


def test_filters_combine_and_a_comma_means_any(cli, output):
    result = cli(
        "results",
        "--output-dir",
        str(output),
        "--filter",
        "seed=1",
        "--filter",
        "eval=harmbench,xstest",
        "--filter",
        "phase=after",
        "--format",
        "csv",
    )
    frame = pd.read_csv(StringIO(result.stdout))
    assert frame["method"].tolist() == ["frpo", "frpo"]
    assert frame["phase"].tolist() == ["after", "after"]
    assert "config_hash" in frame.columns  # csv exports every column by default


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".md"])
def test_exports_to_a_file_by_suffix(cli, output, tmp_path, suffix):
    target = tmp_path / "export" / f"table{suffix}"
    result = cli(
        "results", "--output-dir", str(output), "--filter", "method=grpo", "--out", str(target)
    )
    assert result.returncode == 0, result.stderr
    assert "4 rows ->" in result.stderr
    expected = load_results(output)
    expected = expected[expected.method == "grpo"].reset_index(drop=True)
    if suffix == ".parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(target), expected)
    elif suffix == ".csv":
        frame = pd.read_csv(target)
        assert list(frame.columns) == list(expected.columns)
        assert frame["value"].tolist() == pytest.approx(expected["value"].tolist())
    else:
        lines = target.read_text().splitlines()
        assert (
            lines[0] == "| method | attack | seed | phase | step | eval | judge | metric | "
            "value | ci_low | ci_high | n | direction |"
        )
        assert len(lines) == 2 + 4
        assert lines[2].startswith("| grpo | alpaca | 0 | before | 0 | harmbench |")
    assert not list(target.parent.glob(".*"))  # written atomically, no temporary left


def test_markdown_to_stdout_with_chosen_columns(cli, output):
    result = cli(
        "results",
        "--output-dir",
        str(output),
        "--format",
        "markdown",
        "--columns",
        "method,seed,metric,value,note",
        "--filter",
        "phase=before",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["| method | seed | metric | value | note |", "|---|---|---|---|---|"]
    assert "| frpo | 1 | refusal_rate | 0.75 | a\\|b |" in lines  # a pipe in a cell is escaped
    assert len(lines) == 6


def test_markdown_renders_missing_values_empty():
    frame = pd.DataFrame({"a": [1.0, float("nan")], "b": ["x", None]})
    assert to_markdown(frame) == "| a | b |\n|---|---|\n| 1 | x |\n|  |  |\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--filter", "metod=grpo"), "no column 'metod'; columns are method"),
        (("--filter", "method"), "malformed --filter 'method'"),
        (("--format", "parquet"), "--format parquet needs --out"),
        (("--columns", "method,vaule"), "no column(s) 'vaule'"),
        (("--out", "x.xlsx"), "cannot tell the format from its suffix"),
    ],
)
def test_bad_results_arguments(cli, output, args, message):
    result = cli("results", "--output-dir", str(output), *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_no_results_yet(cli, tmp_path):
    result = cli("results", "--output-dir", str(tmp_path))
    assert result.returncode == 1
    assert "no results tables in" in result.stderr and "forgetbench matrix" in result.stderr


def test_rows_of_a_rerun_with_a_new_eval_version_are_told_apart(cli, output):
    """A re-run after an eval's version bump leaves a second table for the same cell; the summary
    view then shows eval_version and config_hash so the two sets of rows do not look duplicated."""
    rerun = [
        {**row, "eval_version": 2, "config_hash": "grpo0v2"} for row in _rows("grpo", "alpaca", 0)
    ]
    old = [{**row, "eval_version": 1} for row in _rows("grpo", "alpaca", 0)]
    write_table(old, output / "results", "grpo__alpaca__seed0__grpo0")
    write_table(rerun, output / "results", "grpo__alpaca__seed0__grpo0v2")
    result = cli(
        "results",
        "--output-dir",
        str(output),
        "--filter",
        "method=grpo",
        "--format",
        "markdown",
        "--all",
    )
    assert result.returncode == 0, result.stderr
    header, _, *body = result.stdout.splitlines()
    assert header.startswith(
        "| method | attack | seed | phase | step | eval | eval_version | config_hash | judge |"
    )
    assert len(body) == 8 and {line.split("|")[7].strip() for line in body} == {"1", "2"}
    plain = cli(
        "results", "--output-dir", str(output), "--filter", "method=frpo", "--format", "markdown"
    )
    assert "eval_version" not in plain.stdout.splitlines()[0]


def test_by_default_only_the_current_table_of_a_cell_is_shown_and_the_rest_is_said(cli, output):
    """results.current: the table written last for a cell is current; the stale one is left out
    with a one-line note on stderr (``--all`` brings it back, as above)."""
    write_table(
        [{**row, "eval_version": 1} for row in _rows("grpo", "alpaca", 0)],
        output / "results",
        "grpo__alpaca__seed0__grpo0",
    )
    write_table(
        [
            {**row, "eval_version": 2, "config_hash": "grpo0v2"}
            for row in _rows("grpo", "alpaca", 0)
        ],
        output / "results",
        "grpo__alpaca__seed0__grpo0v2",
    )
    result = cli("results", "--output-dir", str(output), "--format", "csv")
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(StringIO(result.stdout))
    assert len(frame) == 8 and set(frame[frame.method == "grpo"]["eval_version"]) == {2}
    assert "left out 4 stale row(s) of 1 cell(s)" in result.stderr and "grpo0" in result.stderr


def test_a_table_of_another_schema_version_is_refused_not_mixed(cli, output):
    path = output / "results" / "grpo__alpaca__seed0__grpo0.parquet"
    frame = pd.read_parquet(path)
    frame.assign(schema_version=99).to_parquet(path, index=False)
    result = cli("results", "--output-dir", str(output))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "schema version 99" in result.stderr and "reads version 1 only" in result.stderr
    frame.drop(columns="schema_version").to_parquet(path, index=False)
    result = cli("results", "--output-dir", str(output))
    assert result.returncode == 1 and "written before the results schema" in result.stderr


def test_a_row_that_breaks_the_declared_schema_is_not_written(tmp_path):
    from forgetbench.errors import ForgetbenchError

    rows = _rows("grpo", "alpaca", 0)
    rows[0]["n"] = "four"
    with pytest.raises(ForgetbenchError, match="results column 'n' must be int64"):
        write_table(rows, tmp_path, "bad")
    assert not list(tmp_path.iterdir())


def test_rate_views_show_the_wilson_interval_that_does_not_collapse_at_one(cli, tmp_path):
    """At 50/50 refusals the bootstrap CI is [1, 1]; every view shows Wilson's [0.93, 1]."""
    from forgetbench.results import metric_row, wilson_interval

    stats = metric_row([{"value": 1.0}] * 50, "mean", binary=True)
    assert stats["ci_low"] == stats["ci_high"] == 1.0
    row = {
        "method": "grpo",
        "attack": "alpaca",
        "seed": 0,
        "phase": "before",
        "step": 0,
        "eval": "harmbench",
        "judge": "refusal",
        "metric": "refusal_rate",
        "direction": "higher",
        **stats,
    }
    write_table([row, {**row, "phase": "after", "step": 2}], tmp_path / "results", "t")
    result = cli("results", "--output-dir", str(tmp_path), "--format", "markdown")
    low, high = wilson_interval(50, 50)
    assert round(low, 2) == 0.93
    assert f"| 1 | {low:.4g} | 1 | 50 |" in result.stdout


def test_before_after_pairs_each_judge_separately_and_shows_wilson():
    """Two judges reporting the same metric of one eval stay two pairs (keyed with the judge);
    a rate's interval is Wilson's, a continuous metric's the bootstrap."""
    from forgetbench.results import before_after, metric_row, wilson_interval

    rows = []
    for judge, hits in (("refusal", 50), ("llamaguard", 40)):
        for phase, step, k in (("before", 0, hits), ("during", 1, hits - 10), ("after", 2, 0)):
            rows.append(
                {
                    "method": "grpo",
                    "attack": "alpaca",
                    "seed": 0,
                    "phase": phase,
                    "step": step,
                    "eval": "harmbench",
                    "judge": judge,
                    "metric": "refusal_rate",
                    "direction": "higher",
                    **metric_row([{"value": 1.0}] * k + [{"value": 0.0}] * (50 - k), "mean", True),
                }
            )
    pairs = before_after(pd.DataFrame(rows)).set_index("judge")
    assert sorted(pairs.index) == ["llamaguard", "refusal"]
    assert pairs.loc["refusal", "before"] == 1.0 and pairs.loc["llamaguard", "before"] == 0.8
    assert (
        pairs.loc["refusal", "before_low"],
        pairs.loc["refusal", "before_high"],
    ) == wilson_interval(50, 50)
    assert (
        pairs.loc["refusal", "after_low"],
        pairs.loc["refusal", "after_high"],
    ) == wilson_interval(0, 50)
    assert pairs.loc["refusal", "change"] == -1.0 and pairs.loc["refusal", "during_steps"] == 1


@pytest.mark.slow
def test_a_bundles_refused_rows_leave_no_arrow_thread_to_abort_the_exit(output, tmp_path):
    """A bundle's rows were read from a Python file object, and an Arrow pool thread could drop
    the last reference to it while the interpreter exited: SIGABRT ("terminate called without an
    active exception", apache/arrow#34314). CI once failed on it in `leaderboard check` of a
    bundle with schema version 99. That way, 10 of 30 processes doing what this test's do aborted
    here, 2 at a time; forty clean exits in a row would happen by chance about once in 10^7."""
    import subprocess
    import sys

    path = tmp_path / "schema99.parquet"
    pd.read_parquet(output / "results" / "grpo__alpaca__seed0__grpo0.parquet").assign(
        schema_version=99
    ).to_parquet(path, index=False)
    script = (
        "import sys; from pathlib import Path; from forgetbench.errors import ForgetbenchError; "
        "from forgetbench.leaderboard.bundle import Bundle\n"
        f"try: Bundle(Path('b.tar.gz'), {{'rows.parquet': Path({str(path)!r}).read_bytes()}}).rows()\n"
        "except ForgetbenchError as error: sys.exit(3 if 'schema version 99' in str(error) else 4)"
    )
    exits = []
    for _ in range(10):  # four at a time: on two cores the exits overlap, as in CI
        runs = [
            subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        exits += [(run.wait(), run.stderr.read()[-300:]) for run in runs]
    failed = [exit for exit in exits if exit[0] != 3]
    assert not failed, f"{len(failed)} of 40 exits were not 3: {failed[:2]}"
