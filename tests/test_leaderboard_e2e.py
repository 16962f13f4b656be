"""The leaderboard end to end on a real `smoke` matrix (grpo, frpo x alpaca x seeds 0, 1, 2,
warm-up off): the results contract on real rows, `forgetbench leaderboard build`, the site in
headless Chromium, and submission bundles, good and bad.

Everything here is plumbing (rows, provenance, board arithmetic, bundles, the page), so the
matrix runs on the tiny randomly initialised model of conftest.py: the same 174 real stages
(TRL training, generation, judges, KL) in minutes instead of the 25 the embedded model takes on
2 cores. Its scores are noise; none of the assertions below reads a score as a claim. The matrix
runs once per module; set FORGETBENCH_LEADERBOARD_RUNS to the output folder of the same
`forgetbench matrix` command to re-use one."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chromium import BOARD, artefact, inspect_page
from conftest import run_cli

pytestmark = pytest.mark.slow


def matrix(model: Path) -> tuple[str, ...]:
    return (
        "matrix",
        "--preset",
        "smoke",
        "--methods",
        "grpo,frpo",
        "--attacks",
        "alpaca",
        "--seeds",
        "0,1,2",
        "--set",
        "warmup.enabled=false",
        "--set",
        f"model={model}",
    )


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    reuse = os.environ.get("FORGETBENCH_LEADERBOARD_RUNS")
    if reuse:
        yield Path(reuse)
        return
    out = tmp_path_factory.mktemp("leaderboard-runs")
    result = run_cli(*matrix(tiny_model), "--output-dir", str(out), timeout=5400)
    assert result.returncode == 0, result.stderr[-3000:]
    _drop_policies(out)
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _drop_policies(folder: Path) -> None:
    """The board needs rows, generations and verdicts, not the 0.5 GB policies; a stage stays
    done (its stage.json is what says so)."""
    for name in ("model", "checkpoints", "trainer"):
        for path in (folder / "stages").glob(f"*/*/{name}"):
            shutil.rmtree(path)


@pytest.fixture(scope="module")
def site(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("board") / "site"
    result = run_cli(
        "leaderboard", "build", "--results", str(runs), "--out", str(out), "--resamples", "500"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print("\n" + result.stdout)  # the board's main table, for the log
    return out, result


def _track(site_dir: Path) -> Path:
    [track] = [p for p in site_dir.iterdir() if p.is_dir()]
    return track


def test_rows_carry_the_schema_and_the_provenance_of_their_own_stages(runs):
    from forgetbench.results import SCHEMA_VERSION, current, load_results

    frame, note = current(load_results(runs))
    assert note is None and set(frame["schema_version"]) == {SCHEMA_VERSION}
    assert frame["protocol_hash"].nunique() == 1 and frame["preset"].eq("smoke").all()
    assert set(frame.loc[frame["eval_role"] == "task", "eval"]) == {"alpaca_helpfulness"}
    stages = {p.name.rsplit("-", 1)[-1]: p for p in (runs / "stages").glob("*/*")}
    for row in frame.sample(10, random_state=0).to_dict("records"):
        judged = json.loads((stages[row["judge_stage"]] / "stage.json").read_text())
        generated = json.loads((stages[row["generate_stage"]] / "stage.json").read_text())
        trained = json.loads((stages[row["train_stage"]] / "stage.json").read_text())
        assert row["date"] == judged["finished"]
        assert row["generated_at"] == generated["finished"]
        assert row["trained_at"] == trained["finished"]
        assert row["version_torch"] == generated["versions"]["torch"]
        assert row["git_revision"] == generated.get("git_revision")


def test_rerunning_with_every_stage_reused_does_not_relabel_the_numbers(runs, tiny_model, tmp_path):
    from forgetbench.results import load_results

    copy = tmp_path / "runs"  # the rerun rewrites every table: not in a shared folder
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("model", "checkpoints", "trainer"))
    before = load_results(copy)
    result = run_cli(*matrix(tiny_model), "--output-dir", str(copy), timeout=900)
    assert result.returncode == 0 and "0 computed" in result.stdout
    after = load_results(copy)
    provenance = ["date", "generated_at", "trained_at", "git_revision", "version_torch", "value"]
    pd.testing.assert_frame_equal(before[provenance], after[provenance])
    assert set(after["table_written"]) != set(before["table_written"])


def test_board_numbers_are_recomputed_from_the_rows(site, runs):
    from forgetbench.results import current, load_results

    out, result = site
    assert "| 1 |" in result.stdout and "grpo" in result.stdout and "frpo" in result.stdout
    track = _track(out)
    for name in (
        "leaderboard.md",
        "leaderboard.tex",
        "leaderboard.csv",
        "attack-alpaca.md",
        "differences.csv",
        "heatmap.png",
        "heatmap.svg",
        "safety-alpaca.png",
        "safety-alpaca.svg",
        "kl-alpaca.png",
        "kl-alpaca.svg",
        "method-grpo.html",
        "method-frpo.html",
        "data.json",
    ):
        assert (track / name).stat().st_size > 0, name
    assert "\\toprule" in (track / "leaderboard.tex").read_text()
    frame, _ = current(load_results(runs))
    data = json.loads((track / "data.json").read_text())
    for entry in data["methods"]:
        rows = frame[
            (frame["method"] == entry["method"])
            & (frame["eval"] == "harmbench")
            & (frame["metric"] == "refusal_rate")
        ]
        per_seed = []
        for _, curve in rows.groupby("seed"):
            curve = curve.sort_values("step")
            steps, values = curve["step"].to_numpy(float), curve["value"].to_numpy(float)
            per_seed.append(np.trapezoid(values, steps) / steps[-1])
        assert entry["s_auc"] == pytest.approx(np.mean(per_seed))
        assert entry["low"] <= entry["s_auc"] <= entry["high"] and entry["seeds"] == 3
        p0 = rows[rows["phase"] == "before"]["value"].mean()
        assert entry["s_p0"] == pytest.approx(p0)
    csv = pd.read_csv(track / "leaderboard.csv")
    assert sorted(csv["method"]) == ["frpo", "grpo"]


def _tree(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_site_in_headless_chromium(site, tmp_path, tmp_path_factory):
    out, _ = site
    shot = artefact(tmp_path_factory, "leaderboard-smoke.png")
    seen = inspect_page((out / "index.html").as_uri(), BOARD, shot, tmp_path / "profile")
    print(f"\nscreenshot: {shot}")
    assert sorted(seen["value"]["methods"]) == ["frpo", "grpo"]
    images = seen["value"]["images"]
    assert len(images) >= 3 and all(width > 0 for _, width in images), images
    assert seen["errors"] == []
    assert shot.stat().st_size > 10_000
    # the same check catches a broken image: a copy without one plot
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (_track(broken) / "heatmap.png").unlink()
    seen = inspect_page(
        (broken / "index.html").as_uri(), BOARD, tmp_path / "broken.png", tmp_path / "profile2"
    )
    widths = {src.rsplit("/", 1)[-1]: width for src, width in seen["value"]["images"]}
    assert widths["heatmap.png"] == 0 and any("heatmap.png" in e for e in seen["errors"])


# ------------------------------------------------------------------ submissions


@pytest.fixture(scope="module")
def bundles(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    for method in ("grpo", "frpo"):
        result = run_cli(
            "submit",
            "--output-dir",
            str(runs),
            "--method",
            method,
            "--out",
            str(folder / f"{method}.tar.gz"),
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture
def leaderboard(bundles, tmp_path):
    """A leaderboard folder with GRPO's bundle on it, its site built from that alone."""
    folder = tmp_path / "leaderboard"
    (folder / "submissions").mkdir(parents=True)
    shutil.copy(bundles / "grpo.tar.gz", folder / "submissions" / "grpo.tar.gz")
    result = run_cli(
        "leaderboard",
        "build",
        "--submissions",
        str(folder / "submissions"),
        "--out",
        str(folder / "site"),
        "--resamples",
        "200",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_a_bundle_holds_what_the_check_needs_and_passes_it(bundles, leaderboard):
    with tarfile.open(bundles / "frpo.tar.gz") as archive:
        names = archive.getnames()
        method = archive.extractfile("method.yaml").read().decode()
    assert {"MANIFEST.json", "method.yaml", "rows.parquet"} <= set(names)
    assert any(n.startswith("generations/") and n.endswith(".jsonl.gz") for n in names)
    assert any(n.startswith("verdicts/") for n in names)
    assert any(n.startswith("configs/") for n in names)
    assert "hyperparameters:" in method and "lam:" in method and "TODO" in method
    result = run_cli(
        "leaderboard", "check", str(bundles / "frpo.tar.gz"), "--leaderboard", str(leaderboard)
    )
    assert result.returncode == 0, result.stderr
    assert "accepted (frpo" in result.stdout and "seeds [0, 1, 2]" in result.stdout


def test_add_stores_the_bundle_and_rebuilds_with_a_self_reported_badge(bundles, leaderboard):
    result = run_cli(
        "leaderboard", "add", str(bundles / "frpo.tar.gz"), "--leaderboard", str(leaderboard)
    )
    assert result.returncode == 0, result.stderr
    stored = list((leaderboard / "submissions").glob("frpo-*.tar.gz"))
    assert len(stored) == 1
    table = (_track(leaderboard / "site") / "leaderboard.md").read_text()
    assert "| frpo |" in table and "self-reported" in table
    again = run_cli(
        "leaderboard", "add", str(bundles / "frpo.tar.gz"), "--leaderboard", str(leaderboard)
    )
    assert again.returncode == 2 and "already has a method named 'frpo'" in again.stderr


def _rewrite(source: Path, target: Path, change, rehash: bool = True) -> Path:
    """Copy a bundle with ``change(files)`` applied; the manifest re-hashed unless told not to."""
    with tarfile.open(source) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    change(files)
    if rehash:
        manifest = json.loads(files["MANIFEST.json"])
        manifest["files"] = {
            n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != "MANIFEST.json"
        }
        files["MANIFEST.json"] = json.dumps(manifest).encode()
    with tarfile.open(target, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return target


# Arrow's own buffers, not Python file objects: an Arrow thread can drop a Python file during
# interpreter exit and abort pytest (see forgetbench.results.schema.read_table).
def _rows(files) -> pd.DataFrame:
    return pq.read_table(pa.BufferReader(files["rows.parquet"])).to_pandas()


def _put_rows(files, frame) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    files["rows.parquet"] = buffer.getvalue().to_pybytes()


def _changed_value(files):
    frame = _rows(files)
    at = frame.index[(frame["eval"] == "harmbench") & (frame["phase"] == "after")][0]
    frame.loc[at, "value"] = 1.0 - frame.loc[at, "value"] if frame.loc[at, "value"] != 0.5 else 0.75
    _put_rows(files, frame)


def _removed_row(files):
    frame = _rows(files)
    _put_rows(files, frame.drop(frame.index[frame["phase"] == "during"][0]))


def _missing_seed(files):
    frame = _rows(files)
    _put_rows(files, frame[frame["seed"] != 2])


def _schema_99(files):
    _put_rows(files, _rows(files).assign(schema_version=99))


def _another_protocol(files):
    """A consistent bundle of another protocol: decoding changed in every config, and the rows'
    protocol hash recomputed to match it."""
    from forgetbench.config import stable_hash
    from forgetbench.results import protocol

    frame = _rows(files)
    for name in [n for n in files if n.startswith("configs/")]:
        resolved = json.loads(files[name])
        resolved["backend"]["config"]["max_new_tokens"] += 1
        files[name] = json.dumps(resolved).encode()
        cell = frame["config_file"] == name.split("/", 1)[1]
        prompts = dict(
            frame[cell & (frame["phase"] == "before") & (frame["judge"] != "kl")][
                ["eval", "eval_prompts_sha256"]
            ]
            .drop_duplicates()
            .values
        )
        frame.loc[cell, "protocol_hash"] = stable_hash(protocol(resolved, prompts))
    _put_rows(files, frame)


def _edited_method_yaml(files):
    files["method.yaml"] += b"\nclaimed_s_auc: 0.99\n"


def _outside(files):
    files["../x"] = b"escape"


def _flipped_verdict(files):
    """A verdict flipped and the rows recomputed to agree with it: only the refusal judge's
    re-run on the stored responses can tell."""
    from forgetbench.results import metric_row

    frame = _rows(files)
    row = frame[(frame["judge"] == "refusal") & (frame["eval"] == "harmbench")].iloc[0]
    name = f"verdicts/{row['judge_stage']}.jsonl.gz"
    verdicts = [json.loads(line) for line in gzip.decompress(files[name]).splitlines()]
    verdicts[0]["value"] = 1.0 - verdicts[0]["value"]
    files[name] = gzip.compress("".join(json.dumps(v) + "\n" for v in verdicts).encode())
    again = metric_row(verdicts, "mean", True)
    for index in frame.index[frame["judge_stage"] == row["judge_stage"]]:
        for column, value in again.items():
            frame.loc[index, column] = value
    _put_rows(files, frame)


BAD = [
    ("changed-value", _changed_value, True, "but its verdicts give"),
    ("removed-row", _removed_row, True, "row missing"),
    ("mismatched-hash", _edited_method_yaml, False, "does not match its SHA-256"),
    ("another-protocol", _another_protocol, True, "matches no track of the leaderboard"),
    ("missing-seeds", _missing_seed, True, "the leaderboard needs at least 3"),
    ("unknown-schema", _schema_99, True, "schema version 99"),
    ("outside-path", _outside, True, "points outside the bundle"),
    ("rejudged", _flipped_verdict, True, "the refusal judge re-run on the stored responses"),
]


@pytest.mark.parametrize("name, change, rehash, message", BAD, ids=[b[0] for b in BAD])
def test_bad_bundles_are_refused_in_one_line_and_change_nothing(
    bundles, leaderboard, tmp_path, name, change, rehash, message
):
    bad = _rewrite(bundles / "frpo.tar.gz", tmp_path / f"{name}.tar.gz", change, rehash)
    before = _tree(leaderboard)
    for verb in ("check", "add"):
        result = run_cli("leaderboard", verb, str(bad), "--leaderboard", str(leaderboard))
        assert result.returncode == 2, (verb, result.stdout, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (verb, lines)
    assert _tree(leaderboard) == before


def test_not_an_archive_is_refused(leaderboard, tmp_path):
    fake = tmp_path / "results.tar.gz"
    fake.write_text("method,s_auc\nmine,0.99\n")
    before = _tree(leaderboard)
    result = run_cli("leaderboard", "add", str(fake), "--leaderboard", str(leaderboard))
    assert result.returncode == 2 and "is not a tar archive" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and _tree(leaderboard) == before
