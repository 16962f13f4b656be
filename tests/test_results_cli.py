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
        for eval_name, metric, value in (("harmbench", "refusal_rate", 0.75),
                                         ("xstest", "compliance_rate", 0.5)):
            value = value if phase == "before" else value / 3
            rows.append({"method": method, "attack": attack, "seed": seed, "phase": phase,
                         "step": step, "eval": eval_name, "judge": "refusal", "metric": metric,
                         "value": value, "ci_low": value / 2, "ci_high": min(1.0, value * 1.5),
                         "n": 4, "n_missing": 0, "direction": "higher", "version_vllm": None,
                         "config_hash": f"{method}{seed}", "note": "a|b"})
    return rows


@pytest.fixture
def output(tmp_path):
    for method, seed in (("grpo", 0), ("frpo", 1)):
        write_table(_rows(method, "alpaca", seed), tmp_path / "results",
                    f"{method}__alpaca__seed{seed}__{method}{seed}")
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
    result = cli("results", "--output-dir", str(output), "--filter", "seed=1",
                 "--filter", "eval=harmbench,xstest", "--filter", "phase=after",
                 "--format", "csv")
    frame = pd.read_csv(StringIO(result.stdout))
    assert frame["method"].tolist() == ["frpo", "frpo"]
    assert frame["phase"].tolist() == ["after", "after"]
    assert "config_hash" in frame.columns  # csv exports every column by default


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".md"])
def test_exports_to_a_file_by_suffix(cli, output, tmp_path, suffix):
    target = tmp_path / "export" / f"table{suffix}"
    result = cli("results", "--output-dir", str(output), "--filter", "method=grpo",
                 "--out", str(target))
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
        assert lines[0] == "| method | attack | seed | phase | step | eval | judge | metric | " \
                           "value | ci_low | ci_high | n | direction |"
        assert len(lines) == 2 + 4
        assert lines[2].startswith("| grpo | alpaca | 0 | before | 0 | harmbench |")
    assert not list(target.parent.glob(".*"))  # written atomically, no temporary left


def test_markdown_to_stdout_with_chosen_columns(cli, output):
    result = cli("results", "--output-dir", str(output), "--format", "markdown",
                 "--columns", "method,seed,metric,value,note", "--filter", "phase=before")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["| method | seed | metric | value | note |", "|---|---|---|---|---|"]
    assert "| frpo | 1 | refusal_rate | 0.75 | a\\|b |" in lines  # a pipe in a cell is escaped
    assert len(lines) == 6


def test_markdown_renders_missing_values_empty():
    frame = pd.DataFrame({"a": [1.0, float("nan")], "b": ["x", None]})
    assert to_markdown(frame) == "| a | b |\n|---|---|\n| 1 | x |\n|  |  |\n"


@pytest.mark.parametrize("args, message", [
    (("--filter", "metod=grpo"), "no column 'metod'; columns are method"),
    (("--filter", "method"), "malformed --filter 'method'"),
    (("--format", "parquet"), "--format parquet needs --out"),
    (("--columns", "method,vaule"), "no column(s) 'vaule'"),
    (("--out", "x.xlsx"), "cannot tell the format from its suffix"),
])
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
    rerun = [{**row, "eval_version": 2, "config_hash": "grpo0v2"}
             for row in _rows("grpo", "alpaca", 0)]
    old = [{**row, "eval_version": 1} for row in _rows("grpo", "alpaca", 0)]
    write_table(old, output / "results", "grpo__alpaca__seed0__grpo0")
    write_table(rerun, output / "results", "grpo__alpaca__seed0__grpo0v2")
    result = cli("results", "--output-dir", str(output), "--filter", "method=grpo",
                 "--format", "markdown")
    assert result.returncode == 0, result.stderr
    header, _, *body = result.stdout.splitlines()
    assert header.startswith("| method | attack | seed | phase | step | eval | eval_version | "
                             "config_hash | judge |")
    assert len(body) == 8 and {line.split("|")[7].strip() for line in body} == {"1", "2"}
    plain = cli("results", "--output-dir", str(output), "--filter", "method=frpo",
                "--format", "markdown")
    assert "eval_version" not in plain.stdout.splitlines()[0]
