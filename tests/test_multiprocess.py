"""Multi-process stages (issue 19): a training config's ``processes: N`` runs its stage's worker on
N ranks under ``accelerate launch`` (forgetbench/stages/ranks.py), here N CPU processes joined by
gloo. The real runs (marked slow: each starts ranks that import torch and TRL) train the tiny
model of tests/conftest.py; the others check the settings, the launch and the scheduling."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from forgetbench.errors import UsageError
from forgetbench.stages import Stage
from forgetbench.training.distributed import split_batch

TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- the settings


def test_the_ranks_share_each_step_and_keep_its_rows():
    assert split_batch(8, 4, 1) == (8, 4)
    assert split_batch(4, 8, 8) == (4, 1)  # the paper's Alpaca attack: 4 rows on each of 8 GPUs
    assert split_batch(8, 1, 2) == (4, 1)  # no accumulation to share: the micro-batch is split
    assert split_batch(16, 8, 8) == (16, 1)  # the paper's FRPO: 16 completions per GPU
    with pytest.raises(ValueError, match=r"processes=3 must divide grad_accum \(1\) or the rows"):
        split_batch(8, 1, 3)


def test_processes_reach_trl_as_each_ranks_share(tmp_path):
    from forgetbench.training.common import OptimConfig, trainer_args
    from forgetbench.training.grpo_inputs import GRPOSettings

    args = trainer_args(OptimConfig(batch_size=4, grad_accum=8, processes=8), tmp_path, 0)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (4, 1)
    rl = GRPOSettings(prompts_per_step=1, num_generations=8, grad_accum=1, processes=2)
    args = trainer_args(rl, tmp_path, 0)  # one group of 8 completions over two ranks
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (4, 1)


def test_processes_and_strategy_leave_stage_keys_unchanged():
    """The step's rows and loss do not depend on the ranks (training/distributed.py), so a run on
    8 GPUs re-uses the stages of a run on 1 and shares its track."""
    from forgetbench.config import stable_hash

    before = {"learning_rate": 1e-5, "batch_size": 8}
    assert stable_hash({**before, "processes": 8, "distributed": "deepspeed-zero2"}) == (
        stable_hash(before)
    )


@pytest.mark.parametrize(
    "method, setting, message",
    [
        ("frpo", "method.processes=3", "processes=3 must divide grad_accum (1) or the rows"),
        ("frpo", "method.processes=0", "processes: Input should be greater than or equal to 1"),
        ("frpo", "method.distributed=zero2", "distributed: Input should be 'ddp', 'fsdp'"),
        ("cgpo", "method.processes=2", "cgpo trains on one process"),
    ],
)
def test_bad_settings_are_refused_when_the_config_resolves(method, setting, message):
    from forgetbench.matrix import make_spec
    from forgetbench.planner import plan_matrix

    with pytest.raises(UsageError) as error:
        plan_matrix(make_spec(methods=[method], attacks=["alpaca"], overrides=(setting,)))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_checkpoints_need_whole_weights_on_each_rank():
    from forgetbench.matrix import make_spec
    from forgetbench.planner import plan_matrix

    sharded = ("attack.processes=2", "attack.distributed=deepspeed-zero3")
    with pytest.raises(UsageError, match="checkpoint_every=13 needs every rank to hold the whole"):
        plan_matrix(make_spec(methods=["grpo"], attacks=["alpaca"], overrides=sharded))
    plan_matrix(  # without checkpoints it is accepted (and then needs GPUs, checked before a run)
        make_spec(
            methods=["grpo"], attacks=["alpaca"], overrides=(*sharded, "attack.checkpoint_every=0")
        )
    )


def test_the_paper_preset_trains_on_8_gpus_with_zero2_and_cgpo_on_one():
    from forgetbench.cell import resolve

    cell = resolve("frpo", "alpaca", "paper").resolved
    for section in (cell["method"]["config"], cell["attack"]["config"]):
        assert (section["processes"], section["distributed"]) == (8, "deepspeed-zero2")
    assert resolve("cgpo", "alpaca", "paper").resolved["method"]["config"]["processes"] == 1
    tiny = resolve("frpo", "alpaca", "tiny").resolved
    assert tiny["method"]["config"]["processes"] == tiny["attack"]["config"]["processes"] == 1


# ----------------------------------------------------------------------------- this machine


def _gpus(monkeypatch, count: int):
    from forgetbench import devices

    monkeypatch.setattr(devices, "visible_gpus", lambda: count)


@pytest.mark.parametrize(
    "gpus, processes, distributed, message",
    [
        (0, 3, "ddp", "attack.processes=3 is more than this machine's 2 cores"),
        (0, 2, "fsdp", "attack.distributed=fsdp shards the model over GPUs and no CUDA GPU"),
        (0, 2, "deepspeed-zero2", "set attack.distributed=ddp (gloo ranks on CPU)"),
        (2, 4, "ddp", "attack.processes=4 but 2 GPU(s) are visible"),
        (8, 8, "deepspeed-zero3", "needs DeepSpeed, which does not import"),
    ],
)
def test_more_ranks_than_the_machine_has_is_one_line(
    monkeypatch, gpus, processes, distributed, message
):
    from forgetbench import environment
    from forgetbench.devices import check_processes

    if distributed.startswith("deepspeed") and gpus:
        try:
            import deepspeed  # noqa: F401

            pytest.skip("deepspeed is installed here")
        except ImportError:
            pass
    monkeypatch.setattr(environment, "cores", lambda: 2)
    _gpus(monkeypatch, gpus)
    with pytest.raises(UsageError) as error:
        check_processes(processes, distributed, "attack")
    assert message in str(error.value) and "\n" not in str(error.value)
    check_processes(1, distributed, "attack")  # one process: nothing to check


def test_cli_refuses_more_ranks_than_cores_before_any_stage(cli, tmp_path):
    out = tmp_path / "out"
    cores = len(os.sched_getaffinity(0))
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--set",
        f"attack.processes={2 * cores}",
        "--set",
        f"attack.batch_size={2 * cores}",
        "--output-dir",
        str(out),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"attack.processes={2 * cores} is more than this machine's {cores} cores" in (
        result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.rglob("*.json*"))  # no stage ran, none half-written


# ----------------------------------------------------------------------------- the launch


def test_the_shipped_launch_configs_are_accelerate_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    from forgetbench.stages.ranks import CONFIG_FILES, launch_config

    expected = {
        "ddp": "MULTI_GPU",
        "fsdp": "FSDP",
        "deepspeed-zero2": "DEEPSPEED",
        "deepspeed-zero3": "DEEPSPEED",
    }
    for strategy in CONFIG_FILES:
        config = load_config_from_file(str(launch_config(strategy)))
        assert config.distributed_type.value == expected[strategy]
        assert not config.use_cpu and config.mixed_precision == "no"
        if strategy.startswith("deepspeed"):
            assert config.deepspeed_config["zero_stage"] == int(strategy[-1])
            # transformers fills these from the training config ("auto"): never fixed here
            assert "gradient_accumulation_steps" not in config.deepspeed_config


def test_the_launch_command_and_each_ranks_threads(tmp_path):
    from forgetbench.stages.ranks import accelerate_command, ranks_environment

    command = accelerate_command(2, "ddp", [str(tmp_path)])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--main_process_port") + 1] == "0"  # a free port
    assert command[-3:] == ["-m", "forgetbench.stages.worker", str(tmp_path)]
    assert Path(command[command.index("--config_file") + 1]).name == "ddp.yaml"
    env = ranks_environment({"FORGETBENCH_THREADS": "4"}, 2, gpus=0)
    assert env["FORGETBENCH_THREADS"] == env["OMP_NUM_THREADS"] == "2"
    assert env["ACCELERATE_USE_CPU"] == "true"
    assert "ACCELERATE_USE_CPU" not in ranks_environment({"FORGETBENCH_THREADS": "8"}, 8, gpus=8)


def _stage(label: str, processes: int = 1) -> Stage:
    return Stage(
        "attack", label, {"attack": {"name": "alpaca", "config": {"processes": processes}}}
    )


def test_the_local_executor_gives_a_stage_its_ranks_slots_and_threads():
    from forgetbench.executors.local import LocalExecutor

    executor = LocalExecutor(jobs=2, threads=1)
    small, wide, later = _stage("a"), _stage("b", processes=2), _stage("c")
    executor.running[small] = None  # one slot busy
    assert not executor.has_capacity(wide)  # needs both slots
    assert not executor.has_capacity(later)  # held back so the wide stage is not starved
    del executor.running[small]
    assert executor.has_capacity(wide)
    assert executor._env(wide)["FORGETBENCH_THREADS"] == "2"  # two slots' threads
    assert executor._env(small) == executor.env
    executor.running[wide] = None
    assert not executor.has_capacity(later)
    alone = LocalExecutor(jobs=1)
    assert alone.has_capacity(_stage("d", processes=2))  # more ranks than jobs: runs alone


def test_ray_declares_a_cpu_and_a_gpu_per_rank():
    from forgetbench.executors import ExecutorConfig
    from forgetbench.executors.ray import RayExecutor

    executor = RayExecutor(ExecutorConfig(name="ray"))
    executor.cluster_gpus = 8
    assert executor.resources("attack", 8) == {"num_cpus": 8, "num_gpus": 8}
    executor.cluster_gpus = 0
    assert executor.resources("train", 2) == {"num_cpus": 2, "num_gpus": 0}


def test_the_resource_plan_shards_as_each_stage_is_set():
    from forgetbench.resource_plan import Memory, StageEstimate, format_plan

    memory = Memory(weights=8e9, gradients=8e9, optimiser=16e9, activations=4e9)
    zero2 = StageEstimate("attack", 1, memory, "", ranks=8, distributed="deepspeed-zero2")
    assert zero2.per_gpu.total == pytest.approx(8e9 + 1e9 + 2e9 + 4e9)
    assert StageEstimate("attack", 1, memory, "", ranks=8).per_gpu.total == memory.total  # DDP
    table = format_plan([zero2])
    assert "as set" in table and table.splitlines()[-1].split()[-2:] == ["15.0", "8"]


# ----------------------------------------------------------------------------- real ranks


def _attack_stage(tiny_model, root: Path, processes: int, *overrides: str) -> Stage:
    """The smoke preset's Alpaca attack of the tiny model (4 rows a step, 4 steps, a checkpoint
    every step, unless ``overrides`` say otherwise), its input policy stage faked as done: only
    the attack runs."""
    from forgetbench.matrix import make_spec
    from forgetbench.planner import plan_matrix
    from forgetbench.stages.store import prepare

    spec = make_spec(
        methods=["grpo"],
        attacks=["alpaca"],
        preset="smoke",
        overrides=(
            f"model={tiny_model}",
            "warmup.enabled=false",
            f"attack.processes={processes}",
            "attack.max_steps=4",
            *overrides,
        ),
    )
    attack = next(s for s in plan_matrix(spec).stages if s.kind == "attack")
    prepare(root)
    policy = attack.inputs["policy"].folder(root)
    policy.mkdir(parents=True)
    (policy / "model").symlink_to(tiny_model)
    (policy / "stage.json").write_text("{}")
    return attack


def _run(stage: Stage, root: Path):
    from rich.console import Console

    from forgetbench.executors.local import LocalExecutor
    from forgetbench.planner import MatrixPlan, ordered
    from forgetbench.runner import run_stages

    plan = MatrixPlan(None, [], ordered([stage]))
    return run_stages(plan, root, LocalExecutor(), Console(record=True, width=200))[stage]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model" / "model.safetensors")


@pytest.mark.slow
def test_an_sft_attack_trains_on_two_gloo_ranks_as_on_one_process(tiny_model, tmp_path):
    two = _attack_stage(tiny_model, tmp_path / "two", processes=2)
    outcome = _run(two, tmp_path / "two")
    folder = two.folder(tmp_path / "two")
    assert outcome.status == "ran", outcome.error
    log = (folder / "worker.log").read_text()
    for rank in (0, 1):  # both ranks trained, in one gloo process group on CPU
        assert f"forgetbench: rank {rank} of 2 trains (MULTI_CPU, backend gloo)" in log
    assert json.loads((folder / "timings.json").read_text())["ranks"] == 2
    # one policy, written once: the model, the checkpoints at steps 1-3, the log of 4 steps
    assert (folder / "model" / "config.json").is_file()
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "step-1",
        "step-2",
        "step-3",
    ]
    steps = [e for e in json.loads((folder / "log_history.json").read_text()) if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]

    one = _attack_stage(tiny_model, tmp_path / "one", processes=1)
    assert one.key == two.key  # the same stage: processes is not part of its key
    assert _run(one, tmp_path / "one").status == "ran"
    single = one.folder(tmp_path / "one")
    # The same rows per step and the same loss normalisation: the weights agree to float
    # rounding (all-reduce order), far inside what the 4 steps moved them.
    start, a, b = _weights(tiny_model.parent), _weights(single), _weights(folder)
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    apart = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-5 and apart < moved / 50, (moved, apart)
    losses = [
        e["loss"] for e in json.loads((single / "log_history.json").read_text()) if "loss" in e
    ]
    assert losses == pytest.approx([e["loss"] for e in steps], rel=1e-5)


def _ranks_run(out: Path, method: str, model: Path, settings: dict, processes: int, replay=None):
    import subprocess

    from forgetbench.stages.ranks import accelerate_command, ranks_environment

    arguments = [str(out), method, str(model), json.dumps({**settings, "processes": processes})]
    if replay:
        arguments.append(str(replay))
    env = ranks_environment({**os.environ, "FORGETBENCH_THREADS": "2"}, processes, gpus=0)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if processes > 1:
        command = accelerate_command(processes, "ddp", arguments, module="rank_advantages")
    else:
        command = [sys.executable, "-m", "rank_advantages", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [
        json.loads((out / f"rank-{rank}.json").read_text())
        for rank in range(processes)
        if (out / f"rank-{rank}.json").is_file()
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, settings, local",
    [
        # two prompts x 4 completions, accumulation 2 shared: each rank takes one whole group
        ("frpo", dict(lam=0.5, prompts_per_step=2, num_generations=4, grad_accum=2), 4),
        # one prompt x 8 completions: the group is split, 4 completions on each rank
        ("grpo", dict(adv_norm="group", prompts_per_step=1, num_generations=8, n_harmful=0), 4),
    ],
    ids=["frpo-whole-groups", "grpo-split-group"],
)
def test_two_ranks_compute_the_advantages_one_process_computes(
    tiny_model, tmp_path, method, settings, local
):
    import torch

    from forgetbench.advantages import frpo_advantages, grpo_advantages

    base = {"max_steps": 1, "max_completion_length": 6, "n_harmful": 1, "n_harmless": 1, **settings}
    ranks = _ranks_run(tmp_path / "two", method, tiny_model, base, processes=2)
    assert [r["world_size"] for r in ranks] == [2, 2]
    gathered = torch.tensor(ranks[0]["rewards"][0], dtype=torch.double)
    assert ranks[1]["rewards"][0] == ranks[0]["rewards"][0]  # both ranks hold every reward
    group = base["num_generations"]
    if method == "frpo":
        expected = frpo_advantages(gathered, group, lam=0.5)
    else:
        expected = grpo_advantages(gathered, group, scale="group")
    used = []
    for rank, record in enumerate(ranks):
        (step,) = record["loss"]  # one micro-batch on each rank
        assert len(step["advantages"]) == local
        used += step["advantages"]
        torch.testing.assert_close(  # this rank's slice of the pooled groups' advantages
            torch.tensor(step["advantages"], dtype=torch.double),
            expected[rank * local : (rank + 1) * local],
            rtol=1e-5,
            atol=1e-6,
        )
    if local < group:  # a group split across ranks is pooled before its advantage, never split
        assert gathered.std() > 0, gathered
        halves = torch.cat(
            [grpo_advantages(half, local, scale="group") for half in gathered.split(local)]
        )
        assert not torch.allclose(halves, expected, atol=1e-4)

    # One process given the same rollouts' rewards: the same prompts, the same advantages.
    replay = tmp_path / "rewards.json"
    replay.write_text(json.dumps([[[r] for r in ranks[0]["rewards"][0]]]))
    (one,) = _ranks_run(tmp_path / "one", method, tiny_model, base, 1, replay)
    assert one["world_size"] == 1
    assert one["loss"][0]["prompt_index"] == ranks[0]["loss"][0]["prompt_index"]
    alone = [a for step in one["loss"] for a in step["advantages"]]
    torch.testing.assert_close(
        torch.tensor(alone, dtype=torch.double),
        torch.tensor(used, dtype=torch.double),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.slow
def test_a_rank_that_dies_fails_its_stage_alone_and_a_rerun_computes_it(tiny_model, tmp_path):
    import psutil

    from forgetbench.stages.store import claim

    # long enough to be killed while it trains, short enough to re-run; no checkpoints to write
    stage = _attack_stage(
        tiny_model, tmp_path, 2, "attack.max_steps=40", "attack.checkpoint_every=0"
    )
    run = claim(stage, tmp_path)
    run.start()
    launcher = psutil.Process(run.worker.process.pid)
    log = run.tmp / "worker.log"
    deadline = time.monotonic() + 300
    while "rank 1 of 2 trains" not in (log.read_text() if log.is_file() else ""):
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the ranks never started training"
        time.sleep(0.5)
    ranks = [
        p for p in launcher.children(recursive=True) if "forgetbench.stages.worker" in p.cmdline()
    ]
    victim = next(p for p in ranks if p.environ().get("RANK") == "1")
    os.kill(victim.pid, signal.SIGKILL)
    started = time.monotonic()
    while (outcome := run.poll()) is None:
        assert time.monotonic() - started < 120, "the stage hung after a rank died"
        time.sleep(0.2)
    print(f"\nthe stage failed {time.monotonic() - started:.1f} s after rank 1 was killed")
    assert outcome.status == "failed" and outcome.exit_code != 0
    assert not any(_alive(p) for p in ranks)  # no rank left behind
    assert not stage.is_done(tmp_path) and not run.tmp.exists()  # nothing published
    rerun = _run(stage, tmp_path)  # and the lock is free: the same stage runs to the end
    assert rerun.status == "ran", rerun.error
    assert (stage.folder(tmp_path) / "model" / "config.json").is_file()


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
