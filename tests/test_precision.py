"""Precision settings reach TRL and the generation back-ends; a device that cannot run the one
asked for is refused before any stage."""

import pytest

from forgetbench.errors import UsageError


@pytest.mark.parametrize(
    "setting, bf16, fp16", [("bf16", True, False), ("fp32", False, False), ("auto", False, False)]
)
def test_precision_reaches_trl_args(tmp_path, monkeypatch, setting, bf16, fp16):
    """bf16 is CPU autocast, which transformers accepts (on a CPU said to have bf16 in hardware:
    elsewhere it is refused, below); auto is fp32 on a CPU without it, which the suite pins
    (conftest.py; the detection is tested below)."""
    from trl import GRPOConfig, SFTConfig

    if setting == "bf16":
        monkeypatch.setenv("FORGETBENCH_CPU_BF16", "1")

    from forgetbench.training.common import OptimConfig, trainer_args

    args = trainer_args(OptimConfig(precision=setting), tmp_path, seed=0)
    for config in (SFTConfig(**args), GRPOConfig(**args)):
        assert (config.bf16, config.fp16) == (bf16, fp16)


def _fake_gpu(monkeypatch, bf16: bool, name: str = "Tesla V100-SXM2-32GB"):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)


def _fake_cpu(monkeypatch, avx512_bf16: bool, amx: bool = False):
    import torch

    monkeypatch.delenv("FORGETBENCH_CPU_BF16", raising=False)  # the flags decide (conftest.py)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


def test_auto_precision_follows_the_device(monkeypatch):
    from forgetbench.backends.base import resolve_dtype
    from forgetbench.training.common import resolve_precision

    _fake_cpu(monkeypatch, avx512_bf16=False)  # AVX2 or plain AVX-512: bf16 emulated, slower
    assert resolve_precision("auto") == "fp32" and resolve_dtype("auto") == "float32"
    for avx512_bf16, amx in ((True, False), (False, True)):
        _fake_cpu(monkeypatch, avx512_bf16, amx)
        assert resolve_precision("auto") == "bf16" and resolve_dtype("auto") == "bfloat16"
    assert resolve_precision("fp32") == "fp32" and resolve_dtype("float32") == "float32"
    for told, precision in (("0", "fp32"), ("1", "bf16")):  # the variable overrides the flags
        monkeypatch.setenv("FORGETBENCH_CPU_BF16", told)
        assert resolve_precision("auto") == precision
    _fake_gpu(monkeypatch, bf16=True, name="NVIDIA H100")
    assert resolve_precision("auto") == "bf16" and resolve_dtype("auto") == "bfloat16"
    _fake_gpu(monkeypatch, bf16=False)
    assert resolve_precision("auto") == "fp32" and resolve_dtype("auto") == "float32"


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    from forgetbench.backends.base import resolve_dtype
    from forgetbench.training.common import resolve_precision

    _fake_gpu(monkeypatch, bf16=False)
    with pytest.raises(
        UsageError,
        match=r"method.precision=bf16: this GPU \(Tesla V100.*\) has "
        "no bfloat16; set method.precision=fp16 or fp32",
    ):
        resolve_precision("bf16", "method.precision")
    with pytest.raises(UsageError, match="generation.dtype=bfloat16: this GPU"):
        resolve_dtype("bfloat16")
    assert resolve_precision("fp16") == "fp16"


def test_bf16_on_a_cpu_without_it_is_refused_unless_said_or_vllm(monkeypatch):
    """torch emulates bf16 on a CPU without AVX512-BF16 or AMX, ~90x slower than fp32: an explicit
    bf16 is refused there, naming the setting, the fix and the override; vLLM's CPU kernels run
    it (as fast as float32 here), so a vLLM generation dtype is let through."""
    from forgetbench.backends.base import resolve_dtype
    from forgetbench.training.common import resolve_precision

    _fake_cpu(monkeypatch, avx512_bf16=False)
    with pytest.raises(
        UsageError,
        match=r"^method.precision=bf16: this CPU has no bfloat16 arithmetic \(no AVX512-BF16 "
        r"or AMX\).*; set method.precision=fp32 or auto, or FORGETBENCH_CPU_BF16=1",
    ):
        resolve_precision("bf16", "method.precision")
    with pytest.raises(UsageError, match="generation.dtype=bfloat16: this CPU has no bfloat16"):
        resolve_dtype("bfloat16")
    assert resolve_dtype("bfloat16", backend="vllm") == "bfloat16"
    for avx512_bf16, amx in ((True, False), (False, True)):  # in hardware: accepted
        _fake_cpu(monkeypatch, avx512_bf16, amx)
        assert resolve_precision("bf16") == "bf16" and resolve_dtype("bfloat16") == "bfloat16"
    _fake_cpu(monkeypatch, avx512_bf16=False)
    monkeypatch.setenv("FORGETBENCH_CPU_BF16", "1")  # the override
    assert resolve_precision("bf16") == "bf16" and resolve_dtype("bfloat16") == "bfloat16"


def test_lora_loads_a_16_bit_base_full_fine_tuning_keeps_fp32_master_weights(monkeypatch):
    from forgetbench.training.common import OptimConfig, load_dtype

    monkeypatch.setenv("FORGETBENCH_CPU_BF16", "1")  # bf16 is refused where it is emulated

    assert load_dtype(OptimConfig(precision="bf16", lora_r=8)) == "bfloat16"
    assert load_dtype(OptimConfig(precision="bf16")) == "float32"
    assert load_dtype(OptimConfig(precision="fp32", lora_r=8)) == "float32"


@pytest.mark.parametrize(
    "setting, message",
    [
        ("method.precision=fp16", "method.precision=fp16 needs a CUDA GPU"),
        ("attack.precision=fp16", "attack.precision=fp16 needs a CUDA GPU"),
        ("generation.dtype=float16", "generation.dtype=float16 needs a CUDA GPU"),
        # conftest.py says the CPU has no bf16 (FORGETBENCH_CPU_BF16=0), whatever this one has
        ("warmup.precision=bf16", "warmup.precision=bf16: this CPU has no bfloat16"),
        ("generation.dtype=bfloat16", "generation.dtype=bfloat16: this CPU has no bfloat16"),
    ],
)
def test_16_bit_the_cpu_cannot_run_is_one_line_before_any_stage(cli, tmp_path, setting, message):
    out = tmp_path / "out"
    result = cli(
        "run", "--preset", "smoke", "--set", setting, "--output-dir", str(out), timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.rglob("*.json*"))  # no stage ran, none half-written


def test_precision_at_its_default_keeps_stage_keys_any_other_value_changes_them():
    from forgetbench.config import stable_hash

    before = {"learning_rate": 1e-5}  # a config written before `precision` existed
    assert stable_hash({**before, "precision": "auto"}) == stable_hash(before)
    assert stable_hash({**before, "precision": "bf16"}) != stable_hash(before)
    assert stable_hash({**before, "report_to": ["tensorboard"]}) == stable_hash(before)
