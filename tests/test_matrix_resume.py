"""A real `smoke` matrix (the embedded model, real TRL training, real stage processes): killed with
SIGKILL during training, between stages and during generation, then finished by two runners at
once, it yields the same results (and the same generations) as one uninterrupted run; the Ray
executor on a local 2-CPU cluster yields them too.

The matrix is the smallest that shows the point: one method, one attack, one eval, no warm-up,
no intermediate checkpoints (train -> generate/judge/kl before, attack -> generate/judge/kl after:
8 stages)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

from conftest import ROOT
from forgetbench.matrix import make_spec
from forgetbench.planner import plan_matrix
from forgetbench.results import load_results
from forgetbench.stages.store import lock_path

pytestmark = pytest.mark.slow

OVERRIDES = (
    "warmup.enabled=false",
    "evals=[harmbench]",
    "attack.checkpoint_every=0",
    "attack.task_evals=[]",
)
SETTINGS = ("--preset", "smoke", *(arg for o in OVERRIDES for arg in ("--set", o)))
MATRIX = ("matrix", "--methods", "grpo", "--attacks", "alpaca", *SETTINGS)
ENV = {
    **os.environ,
    "FORGETBENCH_THREADS": os.environ.get("FORGETBENCH_THREADS", "2"),
    "PYTHONUNBUFFERED": "1",
}
# Columns that may differ between identical runs: when and how long each stage ran, when the
# table was written, and the git revision when commits land in a shared checkout while the test
# runs (checked non-empty below). A re-run that re-uses every stage keeps all but table_written.
TIMESTAMPS = [
    "date",
    "generated_at",
    "trained_at",
    "train_seconds",
    "train_step_seconds",
    "git_revision",
    "table_written",
]


def start(out: Path, *args: str, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "forgetbench", *(args or MATRIX), "--output-dir", str(out)],
        cwd=ROOT,
        env=ENV,
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def stages_by_kind():
    matrix = plan_matrix(
        make_spec(methods=["grpo"], attacks=["alpaca"], preset="smoke", overrides=OVERRIDES)
    )
    found = {}
    for stage in matrix.stages:
        found.setdefault(stage.kind, []).append(stage)
    return matrix.stages, found


def table(out: Path) -> pd.DataFrame:
    return load_results(out).drop(columns=TIMESTAMPS)


def generations(out: Path) -> dict:
    """Each generation stage's responses, by stage folder."""
    return {
        path.parent.name: [
            (row["id"], row["response"]) for row in map(json.loads, path.read_text().splitlines())
        ]
        for path in (out / "stages" / "generate").glob("*/generations.jsonl")
    }


def worker_log_says(out: Path, kind: str, text: str) -> bool:
    """Whether the log of a ``kind`` stage being computed shows ``text``."""
    for log in (out / "stages").glob(f".tmp-{kind}-*/worker.log"):
        try:
            if text in log.read_text(errors="replace"):
                return True
        except OSError:  # renamed into place meanwhile
            pass
    return False


def workers_of(out: Path) -> list[int]:
    """Live stage worker processes writing under ``out``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "forgetbench.stages.worker" in cmdline and str(out) in cmdline:
            pids.append(int(proc.name))
    return pids


def sigkill(process: subprocess.Popen, out: Path) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    # the stage worker dies with its runner (parent-death signal), leaving no orphan
    wait_for(lambda: not workers_of(out), "the killed runner's worker to exit", timeout=30)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    log = out.parent / "uninterrupted.log"
    process = start(out, log=log)
    assert process.wait(timeout=1200) == 0, log.read_text()[-3000:]
    yield out, log.read_text()
    shutil.rmtree(out, ignore_errors=True)  # checkpoints: disk a small CI machine needs back


def test_uninterrupted_matrix_table_and_provenance(baseline, cli):
    out, text = baseline
    assert "8 stages: 0 re-used, 8 computed, 0 failed, 0 skipped" in text
    frame = load_results(out)
    assert len(frame) == 4 and set(frame["phase"]) == {"before", "after"}
    assert set(frame["metric"]) == {"refusal_rate", "kl_from_p0"}
    provenance = [
        "config_hash",
        "config_file",
        "method_config_hash",
        "attack_config_hash",
        "eval_config_hash",
        "judge_config_hash",
        "policy_stage",
        "generate_stage",
        "judge_stage",
        "train_stage",
        "base_model",
        "backend",
        "version_torch",
        "version_transformers",
        "version_trl",
        "version_forgetbench",
        "python_version",
        "date",
        "git_revision",
        "preset",
        "stage_format",
    ]
    scores = frame[frame.judge != "kl"]
    assert scores[provenance].notna().all().all()
    kl = frame[frame.judge == "kl"]  # a KL row has no judge config: its stage key says it all
    assert kl[[c for c in provenance if c != "judge_config_hash"]].notna().all().all()
    assert "version_vllm" in frame.columns
    # every row is reproducible from the config stored beside it
    from forgetbench.config import stable_hash

    for config_file, config_hash in zip(frame["config_file"], frame["config_hash"]):
        assert stable_hash(json.loads((out / "results" / config_file).read_text())) == config_hash
    # each row points at the stages it came from (a KL row at its kl stage)
    for row in frame.itertuples():
        kind = "kl" if row.judge == "kl" else "judge"
        assert (
            json.loads(
                next((out / "stages" / kind).glob(f"*-{row.judge_stage}/stage.json")).read_text()
            )["inputs"]["generations"]
            == row.generate_stage
        )
    # a second identical run re-uses all six stages and tabulates the same rows
    started = time.monotonic()
    again = cli(*MATRIX, "--output-dir", str(out))
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 30
    assert "8 stages: 8 re-used, 0 computed" in again.stdout
    assert [line for line in again.stdout.splitlines() if line.startswith("[")] == [
        line for line in again.stdout.splitlines() if "re-used" in line and line.startswith("[")
    ]
    pd.testing.assert_frame_equal(table(out), frame.drop(columns=TIMESTAMPS))
    # the dry run now marks every stage done
    dry = cli(*MATRIX, "--output-dir", str(out), "--dry-run")
    assert (
        "8 stages planned (train 1, attack 1, generate 2, judge 2, kl 2): 8 done, 0 to run"
        in dry.stdout
    )


def test_results_command_filters_and_exports_the_real_table(baseline, cli, tmp_path):
    out, _ = baseline
    frame = load_results(out)
    result = cli(
        "results",
        "--output-dir",
        str(out),
        "--filter",
        "phase=after",
        "--format",
        "csv",
        "--columns",
        "all",
    )
    assert result.returncode == 0, result.stderr
    from io import StringIO

    exported = pd.read_csv(StringIO(result.stdout))
    assert list(exported.columns) == list(frame.columns)
    assert exported["phase"].tolist() == ["after", "after"]  # refusal rate and KL
    assert exported["value"].tolist() == pytest.approx(
        frame.loc[frame.phase == "after", "value"].tolist()
    )
    target = tmp_path / "all.parquet"
    assert cli("results", "--output-dir", str(out), "--out", str(target)).returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(target), frame)


def test_sigkill_at_several_points_then_two_runners_resume_to_the_same_table(baseline, tmp_path):
    reference, _ = baseline
    out = tmp_path / "out"
    ordered, kinds = stages_by_kind()
    [train], [attack] = kinds["train"], kinds["attack"]
    generate_before = next(s for s in kinds["generate"] if "before" in s.label)
    stages_dir = out / "stages"

    # 1. during training: after its first optimiser step (of two)
    first = start(out, log=tmp_path / "1.log")
    wait_for(lambda: worker_log_says(out, "train", " 1/2 ["), "the first training step")
    assert first.poll() is None and not train.is_done(out)
    sigkill(first, out)
    assert list(stages_dir.glob(".tmp-train-*")) and not train.is_done(out)

    # 2. between stages: the runner finishes training, then finds both stages that training
    # unlocked held by "another runner" (this test) and waits with no stage process running
    locks = [
        FileLock(str(lock_path(out, s.kind, s.key)), thread_local=False)
        for s in (generate_before, attack)
    ]
    for lock in locks:
        lock.acquire()
    second = start(out, log=tmp_path / "2.log")
    wait_for(
        lambda: (tmp_path / "2.log").read_text().count("held by another runner") == 2,
        "the runner to wait between stages",
    )
    assert train.is_done(out) and not workers_of(out)
    assert not list(stages_dir.glob(".tmp-train-*"))  # the killed runner's leftovers are gone
    sigkill(second, out)
    for lock in locks:
        lock.release()
    trained = (train.folder(out) / "stage.json").read_text()

    # 3. during generation: once the policy is loaded
    third = start(out, log=tmp_path / "3.log")
    wait_for(lambda: worker_log_says(out, "generate", "Loading weights"), "generation to start")
    assert third.poll() is None and not generate_before.is_done(out)
    sigkill(third, out)
    assert "train grpo: re-used" in (tmp_path / "3.log").read_text()

    # 4. two runners at once finish the matrix, each stage computed by exactly one of them
    runners = [start(out, log=tmp_path / f"4{n}.log") for n in "ab"]
    for runner in runners:
        assert runner.wait(timeout=1200) == 0, runner.args
    logs = [(tmp_path / f"4{n}.log").read_text() for n in "ab"]
    computed = [{s.label for s in ordered if f"] {s.label}: done in" in text} for text in logs]
    assert not computed[0] & computed[1], computed
    assert computed[0] | computed[1] == {s.label for s in ordered} - {"train grpo"}
    for text in logs:
        assert "train grpo: re-used" in text

    assert (train.folder(out) / "stage.json").read_text() == trained  # never recomputed
    assert not list(stages_dir.glob(".tmp-*"))
    pd.testing.assert_frame_equal(table(out), table(reference))
    # the same responses, token for token (the recomputed policies are the same)
    assert generations(out) == generations(reference) and len(generations(out)) == 2


def test_ray_executor_on_a_local_cluster(baseline, tmp_path):
    """Each stage a Ray task on a local 2-CPU cluster: two attacks of one shared policy run at
    once, and the results equal the local executor's."""
    from conftest import require_or_skip

    require_or_skip(
        "ray",
        "FORGETBENCH_REQUIRE_RAY",
        "Ray is the `ray` extra: pip install -e "
        "'.[ray]' (CI sets FORGETBENCH_REQUIRE_RAY=1: a broken Ray fails there)",
    )
    reference, _ = baseline
    out = tmp_path / "out"
    _, kinds = stages_by_kind()
    for stage in (
        *kinds["train"],
        *[s for s in kinds["generate"] + kinds["judge"] if "before" in s.label],
    ):
        source = stage.folder(reference)
        shutil.copytree(source, out / source.relative_to(reference))
    spec = tmp_path / "matrix.yaml"
    spec.write_text(
        "preset: smoke\nmethods: [grpo]\n"
        "attacks: [alpaca, {label: alpaca-hot, plugin: alpaca, set: {learning_rate: 1.0e-4}}]\n"
        "set: [warmup.enabled=false, 'evals=[harmbench]', attack.checkpoint_every=0,\n"
        "      'attack.task_evals=[]']\n"
        "executor: {name: ray, num_cpus: 2}\n"
    )
    log = tmp_path / "ray.log"
    process = start(out, "matrix", str(spec), log=log)
    assert process.wait(timeout=1200) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "(ray (local cluster: 2 CPUs, 0 GPUs))" in text
    assert "12 stages: 3 re-used, 9 computed, 0 failed" in text
    frame = table(out)
    pd.testing.assert_frame_equal(
        frame[frame.attack == "alpaca"].reset_index(drop=True), table(reference)
    )
    hot = frame[frame.attack == "alpaca-hot"]
    assert len(hot) == 4 and set(hot["attack_plugin"]) == {"alpaca"}
    assert (
        hot["train_stage"].nunique() == 1
        and hot["train_stage"].iloc[0] == frame["train_stage"].iloc[0]
    )  # one policy, two attacks
    attacks = [json.loads(p.read_text()) for p in (out / "stages" / "attack").glob("*/stage.json")]
    assert len(attacks) == 2
    first, second = sorted(attacks, key=lambda meta: meta["started"])
    assert second["started"] < first["finished"], "the two attacks did not run at once"
