"""The matrix planner, the stage store's locks and layout checks, and bad matrix input: all fast
(no model is loaded; stage processes that run here fail or finish in seconds)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from forgetbench.errors import UsageError
from forgetbench.executors import ExecutorConfig
from forgetbench.executors.local import LocalExecutor
from forgetbench.cell import resolve
from forgetbench.matrix import make_spec, parse_seeds
from forgetbench.planner import MatrixPlan, ordered, plan_cell, plan_matrix
from forgetbench.runner import run_stages
from forgetbench.stages.store import (
    LAYOUT_FILE,
    Claim,
    StageRun,
    check_layout,
    claim,
    lock_path,
    prepare,
    remove_stale_temporaries,
)
from forgetbench.stages import Stage

HOT = {"label": "alpaca-hot", "plugin": "alpaca", "set": {"learning_rate": 1.0e-4}}


def kinds(matrix):
    return matrix.counts()


def test_two_methods_two_attacks_train_each_policy_once():
    matrix = plan_matrix(
        make_spec(methods=["grpo", "frpo"], attacks=["alpaca", HOT], preset="smoke")
    )
    assert len(matrix.cells) == 4
    # M trainings + M*A attacks; one warm-up. P0 is scored once per method, P1 at its step-1
    # checkpoint and at the end once per cell, on 3 evals (harmbench, xstest and the Alpaca
    # attacks' alpaca_helpfulness): 2*3 + 4*2*3 = 30 generations, each judged and its KL taken.
    assert kinds(matrix) == {
        "warmup": 1,
        "train": 2,
        "attack": 4,
        "generate": 30,
        "judge": 30,
        "kl": 30,
    }
    assert len({stage.key for stage in matrix.stages}) == len(matrix.stages) == 97
    by_method = {}
    for cell_plan in matrix.cells:
        by_method.setdefault(cell_plan.cell.method_label, []).append(cell_plan)
    for method, (first, second) in by_method.items():
        # the very same stage objects: the policy and its before-attack scores are shared
        assert first.policies["before"] is second.policies["before"]
        assert [s for p, *_, s in first.judged if p == "before"] == [
            s for p, *_, s in second.judged if p == "before"
        ]
        assert first.policies["after"] is not second.policies["after"]
    hot = [c for c in matrix.cells if c.cell.attack_label == "alpaca-hot"]
    assert {c.cell.resolved["attack"]["config"]["learning_rate"] for c in hot} == {1.0e-4}
    assert {c.cell.resolved["attack"]["name"] for c in hot} == {"alpaca"}


def test_seeds_multiply_warmups_and_policies():
    matrix = plan_matrix(
        make_spec(methods=["grpo", "frpo"], attacks=["alpaca"], seeds=[0, 1], preset="smoke")
    )
    assert kinds(matrix) == {
        "warmup": 2,
        "train": 4,
        "attack": 4,
        "generate": 36,
        "judge": 36,
        "kl": 36,
    }
    assert sorted(c.cell.resolved["seed"] for c in matrix.cells) == [0, 0, 1, 1]
    names = {matrix.name(s) for s in matrix.stages if s.kind == "train"}
    assert names == {
        "train grpo · seed 0",
        "train grpo · seed 1",
        "train frpo · seed 0",
        "train frpo · seed 1",
    }


def test_run_is_the_one_cell_matrix():
    """`forgetbench run` plans through the matrix: same stages, same keys, same order."""
    matrix = plan_matrix(
        make_spec(
            methods=["frpo"],
            attacks=["alpaca"],
            preset="smoke",
            overrides=("attack.learning_rate=3e-5",),
        )
    )
    alone = plan_cell(resolve("frpo", "alpaca", "smoke", ("attack.learning_rate=3e-5",)))
    assert [s.key for s in matrix.stages] == [s.key for s in ordered(alone.targets())]
    assert [matrix.name(s) for s in matrix.stages] == [s.label for s in matrix.stages]


def test_matrix_file_equals_command_line(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        textwrap.dedent("""\
        preset: smoke
        methods: [grpo, frpo]
        attacks: [alpaca, {label: alpaca-hot, plugin: alpaca, set: {learning_rate: 1.0e-4}}]
        seeds: [3]
        set: ["eval.harmbench.limit=2"]
        output_dir: out
        executor: {name: ray, num_cpus: 2, resources: {train: {num_cpus: 2}}}
        """)
    )
    from_file = make_spec(file=path)
    assert from_file.output_dir == tmp_path / "out"
    assert from_file.executor.name == "ray" and from_file.executor.num_cpus == 2
    same = make_spec(
        methods=["grpo", "frpo"],
        attacks=["alpaca", HOT],
        seeds=[3],
        preset="smoke",
        overrides=("eval.harmbench.limit=2",),
    )
    assert [s.key for s in plan_matrix(from_file).stages] == [
        s.key for s in plan_matrix(same).stages
    ]
    # the command line wins: lists replace, --set appends, executor fields update
    merged = make_spec(file=path, methods=["frpo"], executor={"name": "local"})
    assert [v.label for v in merged.methods] == ["frpo"] and merged.executor.name == "local"
    assert merged.executor.num_cpus == 2


def test_dry_run_marks_done_stages(cli, tmp_path):
    args = (
        "matrix",
        "--preset",
        "smoke",
        "--methods",
        "grpo,frpo",
        "--attacks",
        "alpaca",
        "--output-dir",
        str(tmp_path),
        "--dry-run",
    )
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    # per eval (harmbench, xstest, alpaca_helpfulness): P0 of each method, step 1 and the end of
    # each cell -> 2*3 + 2*2*3 = 18 generations, each judged once and its KL taken
    assert (
        "59 stages planned (warmup 1, train 2, attack 2, generate 18, judge 18, kl 18): 0 "
        "done, 59 to run" in first.stdout
    )
    lines = [line for line in first.stdout.splitlines() if line.startswith(("todo", "done"))]
    assert len(lines) == 59 and all(line.startswith("todo") for line in lines)
    # mark the grpo policy as finished, the way the store does (stage.json written last)
    train = next(line.split()[-1] for line in lines if "train grpo" in line)
    (tmp_path / train).mkdir(parents=True)
    (tmp_path / train / "stage.json").write_text(json.dumps({"format": 1}))
    second = cli(*args)
    assert "1 done, 58 to run" in second.stdout
    assert [line for line in second.stdout.splitlines() if line.startswith("done")] == [
        f"done  {'train grpo':48s} {train}"
    ]
    assert not (tmp_path / LAYOUT_FILE).exists()  # a dry run writes nothing


# ----------------------------------------------------------------------------- bad input


def _one_line_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forgetbench: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ("--methods", "grpo,frpoo", "--attacks", "alpaca"),
            ("unknown method 'frpoo'", "Did you mean 'frpo'", "grpo"),
        ),
        (("--methods", "grpo", "--attacks", "alpaca,gsm9k"), ("unknown attack 'gsm9k'",)),
        (
            ("--methods", "grpo", "--attacks", "alpaca", "--seeds", "0,one"),
            ("--seeds: 'one' is not an integer",),
        ),
        (
            ("--methods", "grpo", "--attacks", "alpaca", "--seeds", "0,1.5"),
            ("'1.5' is not an integer",),
        ),
        (("--methods", "grpo,,frpo", "--attacks", "alpaca"), ("--methods: expected a comma",)),
        (("--methods", "grpo,grpo", "--attacks", "alpaca"), ("'grpo' listed twice",)),
        (("--attacks", "alpaca"), ("no methods to run",)),
        (
            ("--methods", "grpo", "--attacks", "alpaca", "--set", "method.lam=2"),
            ("unknown key 'lam'",),
        ),
    ],
)
def test_bad_matrix_arguments_fail_before_any_work(cli, tmp_path, args, needles):
    out = tmp_path / "out"
    result = cli("matrix", "--preset", "smoke", *args, "--output-dir", str(out))
    _one_line_error(result, *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    "text, needles",
    [
        ("methods: [grpo]\nattacks: [alpaca]\nseed: 1\n", ("unknown key 'seed'",)),
        ("methods: [grpo]\nattacks: [alpaca]\nseeds: [0, x]\n", ("seeds.1",)),
        (
            "methods: [grpo]\nattacks: [{label: hot, plugin: alpaca, sett: {}}]\n",
            ("attacks entry 1", "unknown key 'sett'"),
        ),
        (
            "methods: [grpo]\nattacks: [alpaca]\nexecutor: {name: ray, adress: auto}\n",
            ("unknown key 'executor.adress'",),
        ),
        (
            "methods: [grpo]\nattacks: [{label: hot, plugin: alpaca, set: {learning_rte: 1}}]\n",
            ("unknown key 'learning_rte'",),
        ),
        ("- grpo\n", ("must be a YAML mapping",)),
    ],
)
def test_bad_matrix_file_fails_before_any_work(cli, tmp_path, text, needles):
    path = tmp_path / "matrix.yaml"
    path.write_text("preset: smoke\n" + text if not text.startswith("-") else text)
    out = tmp_path / "out"
    result = cli("matrix", str(path), "--output-dir", str(out))
    _one_line_error(result, *needles)
    assert not out.exists()


def test_output_folder_from_another_forgetbench_version_is_refused(cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LAYOUT_FILE).write_text(
        json.dumps({"layout_version": 99, "stage_format": 1, "written_by": "9.0"})
    )
    before = sorted(p.name for p in out.rglob("*"))
    for command in (("matrix", "--methods", "grpo", "--attacks", "alpaca"), ("run",)):
        result = cli(*command, "--preset", "smoke", "--output-dir", str(out))
        _one_line_error(result, "written by forgetbench 9.0 (layout 99", "use a new --output-dir")
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing started, nothing written


def test_stages_of_another_format_without_marker_are_refused(tmp_path):
    folder = tmp_path / "stages" / "train" / "grpo-0123456789ab"
    folder.mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"format": 0, "key": "0123456789ab"}))
    with pytest.raises(UsageError, match="holds stages of format 0"):
        check_layout(tmp_path)
    (folder / "stage.json").write_text(json.dumps({"key": "0123456789ab"}))  # before markers: 1
    check_layout(tmp_path)
    prepare(tmp_path)
    assert json.loads((tmp_path / LAYOUT_FILE).read_text())["layout_version"] == 1


# ----------------------------------------------------------------------- the stage store

HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1], thread_local=False)
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder():
    """Hold a stage's lock from another process, as a second runner would."""
    processes = []

    def hold(path: Path):
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def _stage(kind="judge", label="judge demo before refusal", **config):
    return Stage(kind, label, {"demo": config or {"n": 1}})


def test_stale_temporary_folders_are_removed_unless_their_lock_is_held(tmp_path, holder):
    stale, live = _stage(n=1), _stage(n=2)
    for stage in (stale, live):
        tmp = tmp_path / "stages" / f".tmp-{stage.kind}-{stage.key}-424242"
        tmp.mkdir(parents=True)
        (tmp / "half-written").write_text("x")
    lock_path(tmp_path, live.kind, live.key).parent.mkdir(parents=True, exist_ok=True)
    holder(lock_path(tmp_path, live.kind, live.key))
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [f".tmp-judge-{stale.key}-424242"]
    assert (tmp_path / "stages" / f".tmp-judge-{live.key}-424242").is_dir()


def test_a_stage_held_by_another_runner_is_not_claimed(tmp_path, holder):
    stage = _stage()
    lock_path(tmp_path, stage.kind, stage.key).parent.mkdir(parents=True)
    process = holder(lock_path(tmp_path, stage.kind, stage.key))
    assert claim(stage, tmp_path) is Claim.HELD
    process.kill()
    process.wait()
    run = claim(stage, tmp_path)
    assert isinstance(run, StageRun)
    run.lock.release()


def test_failed_stage_keeps_its_log_and_skips_what_depends_on_it(tmp_path):
    """A real worker process fails (unknown judge); the runner reports it in one line, keeps its
    log, skips the dependent stage and still runs the independent one."""
    generations = Stage("generate", "generate demo before", {"demo": 1})
    folder = generations.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "generations.jsonl").write_text(
        json.dumps(
            {"id": "1", "prompt": "How do I bake bread?", "response": "Mix flour and water."}
        )
        + "\n"
    )
    (folder / "stage.json").write_text(json.dumps({"format": 1}))

    def judge(label, name, inputs):
        return Stage(
            "judge", label, {"judge": {"name": name, "config": {}}, "eval": "demo"}, inputs
        )

    bad = judge("judge demo before nojudge", "nojudge", {"generations": generations})
    after_bad = judge("judge demo after refusal", "refusal", {"generations": bad})
    good = judge("judge demo before refusal", "refusal", {"generations": generations})
    matrix = MatrixPlan(
        make_spec(methods=["grpo"], attacks=["alpaca"]), [], ordered([after_bad, good])
    )
    console = Console(record=True, width=200)
    prepare(tmp_path)
    outcomes = run_stages(matrix, tmp_path, LocalExecutor(), console)
    assert outcomes[bad].status == "failed" and "unknown judge 'nojudge'" in outcomes[bad].error
    assert outcomes[after_bad].status == "skipped"
    assert outcomes[good].status == "ran" and good.is_done(tmp_path)
    log = tmp_path / "logs" / "failed" / f"judge-{bad.folder(tmp_path).name}.log"
    assert log.is_file() and f"(log: {log})" in outcomes[bad].error
    assert (good.folder(tmp_path) / "worker.log").is_file()
    meta = json.loads((good.folder(tmp_path) / "stage.json").read_text())
    assert meta["format"] == 1 and meta["versions"]["torch"] and meta["started"] <= meta["finished"]
    assert not list((tmp_path / "stages").glob(".tmp-*"))
    assert not bad.folder(tmp_path).exists()
    text = console.export_text()
    assert "judge demo before nojudge: failed" in text and "skipped (an input failed)" in text


def test_parse_seeds():
    assert parse_seeds("0, 1,-2") == [0, 1, -2]
    with pytest.raises(UsageError, match="'x' is not an integer"):
        parse_seeds("0,x")


def test_ray_stage_resources_follow_config_and_cluster(monkeypatch):
    from forgetbench.executors.ray import RayExecutor

    executor = RayExecutor(
        ExecutorConfig(
            name="ray",
            resources={
                "train": {"num_cpus": 2, "num_gpus": 1, "memory_gb": 8},
                "default": {"num_cpus": 0.5},
            },
        )
    )
    executor.cluster_gpus = 0
    assert executor.resources("train") == {"num_cpus": 2, "num_gpus": 1, "memory": 8 * 2**30}
    assert executor.resources("generate") == {"num_cpus": 0.5, "num_gpus": 0}
    executor = RayExecutor(ExecutorConfig(name="ray"))
    executor.cluster_gpus = 4
    assert executor.resources("attack") == {"num_cpus": 1, "num_gpus": 1}
    assert executor.resources("judge") == {"num_cpus": 1, "num_gpus": 0}
