"""The lm-eval bridge: lm-eval's own API on the embedded model, offline, with local task YAMLs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import require_or_skip  # noqa: E402

# CI installs the extra and sets FORGETBENCH_REQUIRE_LMEVAL=1: a broken lm-eval fails there.
require_or_skip(
    "lm_eval",
    "FORGETBENCH_REQUIRE_LMEVAL",
    "lm-eval is the `lmeval` extra: pip install -e '.[lmeval]'",
)

from forgetbench.errors import UsageError  # noqa: E402
from forgetbench.lmeval_bridge import load_lm, local_tasks, resolve_task, run_lmeval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GSM8K_TEST = ROOT / "tasks" / "data" / "gsm8k" / "test.jsonl"

# A multiple-choice (log-likelihood) task over real GSM8K rows: the reference's final answer vs
# that answer plus one. Its data file is named relative to the YAML, as a user would write it.
MC_TASK = """\
task: gsm8k_mc_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/mc.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_mc_task(folder: Path) -> Path:
    rows = [json.loads(line) for line in GSM8K_TEST.open()][:4]
    (folder / "data").mkdir()
    with open(folder / "data" / "mc.jsonl", "w") as handle:
        for row in rows:
            answer = int(row["answer"].rsplit("####", 1)[1].strip().replace(",", ""))
            handle.write(
                json.dumps(
                    {"question": row["question"], "choices": [f" {answer}", f" {answer + 1}"]}
                )
                + "\n"
            )
    path = folder / "mc.yaml"
    path.write_text(MC_TASK)
    return path


def test_shipped_and_user_yaml_tasks_resolve_to_absolute_data(tmp_path):
    assert "gsm8k_local" in local_tasks()
    shipped = resolve_task("gsm8k_local")
    assert shipped["task"] == "gsm8k_local" and shipped["dataset_path"] == "json"
    assert Path(shipped["dataset_kwargs"]["data_files"]["test"]) == GSM8K_TEST.resolve()
    user = resolve_task(str(write_mc_task(tmp_path)))
    assert user["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "data" / "mc.jsonl")
    assert resolve_task("hellaswag") == "hellaswag"  # left to lm-eval's registry


def test_bad_tasks_fail_before_loading_a_model(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        resolve_task(str(tmp_path / "nope.yaml"))
    (tmp_path / "no_task.yaml").write_text("dataset_path: json\n")
    with pytest.raises(UsageError, match="must be a mapping with a `task`"):
        resolve_task(str(tmp_path / "no_task.yaml"))
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    with pytest.raises(UsageError, match="cannot read lm-eval task"):
        resolve_task(str(tmp_path / "broken.yaml"))
    with pytest.raises(UsageError, match="does not know task"):
        run_lmeval("not-a-model-either", ["no_such_task_forgetbench"])
    # conftest.py says the CPU has no bf16 (FORGETBENCH_CPU_BF16=0): refused before any load
    with pytest.raises(UsageError, match=r"--dtype=bfloat16: this CPU has no bfloat16.*float32"):
        load_lm("not-a-model-either", dtype="bfloat16")


def test_cli_runs_generation_and_loglikelihood_tasks_on_the_embedded_model(tmp_path):
    """`forgetbench lmeval` from another folder: lm-eval's API, offline, rows with n and CIs."""
    mc = write_mc_task(tmp_path)
    out = tmp_path / "scores.csv"
    env = {
        **os.environ,
        "FORGETBENCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "forgetbench",
            "lmeval",
            "--model",
            "smollm2-135m-instruct",
            "--task",
            "gsm8k_local",
            "--task",
            str(mc),
            "--limit",
            "2",
            "--gen-kwargs",
            "max_gen_toks=16",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "| eval | judge | metric | value | ci_low | ci_high | n | stderr | direction |"
        in result.stdout
    )
    table = pd.read_csv(out)
    got = {(r.eval, r.judge, r.metric) for r in table.itertuples()}
    assert got == {
        ("gsm8k_local", "lm-eval/strict-match", "exact_match"),
        ("gsm8k_local", "lm-eval/flexible-extract", "exact_match"),
        ("gsm8k_mc_tiny", "lm-eval/none", "acc"),
    }
    assert (table["n"] == 2).all() and (table["n_missing"] == 0).all()
    assert (table["ci_method"] == "bootstrap95").all() and (table["direction"] == "higher").all()
    assert (
        (0 <= table["ci_low"])
        & (table["ci_low"] <= table["value"])
        & (table["value"] <= table["ci_high"])
        & (table["ci_high"] <= 1)
    ).all()
    assert table["value"].isin([0.0, 0.5, 1.0]).all()
    assert not any(math.isnan(v) for v in table["stderr"])
    assert set(table["n_documents"]) == {1319, 4}
    assert table["lm_eval_version"].iloc[0] == "0.4.13"
    assert table["model"].iloc[0] == "smollm2-135m-instruct"
