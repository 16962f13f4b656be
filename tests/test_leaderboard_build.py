"""`forgetbench leaderboard build` on results tables written by forgetbench's own writer, with
per-prompt verdicts in stage folders as a run leaves them (seconds; the real smoke matrix is in
tests/test_leaderboard_e2e.py): outputs, tracks, the site in Chromium, refusals."""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from chromium import BOARD, artefact, inspect_page
from forgetbench.results import write_table
from test_leaderboard_rank import rows_for


def write_run(
    root,
    methods=(("grpo", 0.45), ("frpo", 0.8)),
    seeds=(0, 1, 2),
    protocol="a1b2c3d4e5f6",
    attacks=("alpaca", "alpaca-highlr"),
):
    """A run folder: one results table per cell, verdicts under stages/judge/<slug>-<key>/."""
    rng = np.random.default_rng(0)
    for method, p in methods:
        for seed in seeds:
            rows = []
            for attack in attacks:
                verdicts = [rng.random(30) < max(0.0, p - 0.15 * k) for k in range(3)]
                part, per_prompt = rows_for(method, seed, attack, [0, 1, 2], verdicts)
                keys = {}
                for stage, values in per_prompt.items():
                    key = hashlib.sha256(f"{protocol}{stage}".encode()).hexdigest()[:12]
                    keys[stage] = key
                    folder = root / "stages" / "judge" / f"harmbench-{key}"
                    folder.mkdir(parents=True)
                    (folder / "verdicts.jsonl").write_text(
                        "".join(json.dumps({"id": i, "value": v}) + "\n" for i, v in values.items())
                    )
                for row in part:
                    row.update(
                        preset="smoke",
                        protocol_hash=protocol,
                        config_hash=f"{method}{seed}",
                        attack_config_hash=attack,
                        judge_stage=keys.get(row.get("judge_stage")),
                        train_seconds=10.0 if method == "grpo" else 25.0,
                        train_steps=2,
                        method_passes=1.0 if method == "grpo" else 2.0,
                    )
                rows += part
            write_table(rows, root / "results", f"{method}__seed{seed}__{protocol}")
    return root


@pytest.fixture
def built(tmp_path, cli):
    runs = write_run(tmp_path / "runs")
    out = tmp_path / "site"
    result = cli(
        "leaderboard", "build", "--results", str(runs), "--out", str(out), "--resamples", "300"
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_build_writes_every_format_from_the_rows(built):
    out, result = built
    track = out / "smoke-a1b2c3d4"
    header, rule, first, second = result.stdout.splitlines()[:4]
    assert header.startswith("| rank | method | S-AUC [95% CI] | S P0 |")
    assert first.startswith("| 1 | frpo |") and second.startswith("| 2 | grpo |")
    # s/step x GRPO: 25 s / 10 s per step; passes x GRPO: 2 / 1 (the plugins' declarations)
    assert "| s/step ×GRPO | passes ×GRPO |" in header
    assert "| 2.50 | 2.00 |" in first and "| 1.00 | 1.00 |" in second
    tex = (track / "leaderboard.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "S-AUC [95\\% CI]" in tex
    csv = pd.read_csv(track / "leaderboard.csv")
    assert list(csv["method"]) == ["frpo", "grpo"]
    for attack in ("alpaca", "alpaca-highlr"):
        for suffix in ("png", "svg"):
            assert (track / f"safety-{attack}.{suffix}").stat().st_size > 1000
            assert (track / f"kl-{attack}.{suffix}").stat().st_size > 1000
        assert (track / f"attack-{attack}.md").is_file()
    tracks = json.loads((out / "tracks.json").read_text())
    assert tracks["smoke-a1b2c3d4"]["attacks"] == {
        "alpaca": ["alpaca"],
        "alpaca-highlr": ["alpaca-highlr"],
    }
    page = (track / "method-frpo.html").read_text()
    assert "Provenance" in page and "S-AUC difference" in page


def test_rows_of_another_protocol_form_their_own_track(tmp_path, cli):
    runs = write_run(tmp_path / "runs")
    write_run(
        tmp_path / "runs", methods=(("grpo", 0.3),), protocol="ffffffffffff", attacks=("alpaca",)
    )
    out = tmp_path / "site"
    result = cli(
        "leaderboard", "build", "--results", str(runs), "--out", str(out), "--resamples", "100"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads((out / "tracks.json").read_text())) == [
        "smoke-a1b2c3d4",
        "smoke-ffffffff",
    ]
    lone = pd.read_csv(out / "smoke-ffffffff" / "leaderboard.csv")
    assert list(lone["method"]) == ["grpo"]


def test_the_site_loads_in_headless_chromium(built, tmp_path, tmp_path_factory):
    out, _ = built
    shot = artefact(tmp_path_factory, "leaderboard-constructed.png")
    seen = inspect_page((out / "index.html").as_uri(), BOARD, shot, tmp_path / "profile")
    print(f"\nscreenshot: {shot}")
    assert sorted(seen["value"]["methods"]) == ["frpo", "grpo"]
    assert len(seen["value"]["images"]) == 5  # heatmap + 2 attacks x (safety, KL)
    assert all(width > 0 for _, width in seen["value"]["images"])
    assert seen["errors"] == []
    method_page = out / "smoke-a1b2c3d4" / "method-frpo.html"
    seen = inspect_page(
        method_page.as_uri(),
        "Array.from(document.images).map(i => i.naturalWidth)",
        tmp_path / "method.png",
        tmp_path / "profile2",
    )
    assert seen["value"] and all(w > 0 for w in seen["value"]) and seen["errors"] == []


def test_build_refuses_nothing_to_build_from(tmp_path, cli):
    result = cli("leaderboard", "build", "--out", str(tmp_path / "site"))
    assert result.returncode == 2 and "no results to build a board from" in result.stderr
    assert not (tmp_path / "site").exists()


def test_build_refuses_a_results_table_of_another_schema_version(tmp_path, cli):
    runs = write_run(tmp_path / "runs")
    table = next((runs / "results").glob("*.parquet"))
    pd.read_parquet(table).assign(schema_version=2).to_parquet(table, index=False)
    result = cli("leaderboard", "build", "--results", str(runs), "--out", str(tmp_path / "s"))
    assert result.returncode == 1 and "schema version 2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("not a tarball"), "is not a tar archive"),
        (lambda p: _tar(p, {"../evil": b"x", "MANIFEST.json": b"{}"}), "points outside the bundle"),
        (lambda p: _tar(p, {"/etc/x": b"x"}), "points outside the bundle"),
        (lambda p: _tar(p, {"rows.parquet": b"x"}), "has no MANIFEST.json"),
        (
            lambda p: _tar(p, {"MANIFEST.json": json.dumps({"bundle_version": 7}).encode()}),
            "bundle version 7",
        ),
    ],
)
def test_check_refuses_malformed_bundles_in_one_line(tmp_path, cli, make, message):
    bundle = tmp_path / "bundle.tar.gz"
    make(bundle)
    result = cli("leaderboard", "check", str(bundle), "--any-track")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def _tar(path, files):
    import io

    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_add_without_a_published_board_says_how_to_build_one(tmp_path, cli):
    bundle = tmp_path / "b.tar.gz"
    _tar(bundle, {"MANIFEST.json": b"{}"})
    result = cli("leaderboard", "add", str(bundle), "--leaderboard", str(tmp_path / "lb"))
    assert result.returncode == 2 and "leaderboard build --out" in result.stderr
    assert not (tmp_path / "lb").exists()


def test_seconds_per_step_is_the_median_over_seeds_of_each_seeds_median_step():
    """One seed slowed by another job (its stage took 320 s for 20 steps of about 11.4 s) moves
    neither the per-seed median step time nor the median over seeds; rows without the column
    fall back to stage seconds over steps."""
    from forgetbench.leaderboard.board import _sec_per_step

    frame = pd.DataFrame(
        {
            "method": ["frpo"] * 3 + ["old"] * 2,
            "seed": [0, 1, 2, 0, 1],
            "train_step_seconds": [11.33, 11.34, 11.39, None, None],
            "train_seconds": [239.3, 239.5, 320.6, 30.0, 50.0],
            "train_steps": [20, 20, 20, 10, 10],
        }
    )
    assert _sec_per_step(frame, "frpo") == pytest.approx(11.34)
    assert _sec_per_step(frame, "old") == pytest.approx(4.0)  # median of 3 s and 5 s
