"""Settings every TRL run here shares, and the final save."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from forgetbench.config import Field, StrictModel
from forgetbench.errors import UsageError
from forgetbench.training.distributed import (
    COLLECTIVE_TIMEOUT_SECONDS,
    Distributed,
    is_main,
    split_batch,
)

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class OptimConfig(StrictModel):
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW).")
    lr_scheduler: str = Field(
        "cosine",
        description="transformers scheduler name, e.g. cosine, constant_with_warmup, linear.",
    )
    warmup_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of steps spent warming up "
        "(passed as a fraction to transformers' warmup_steps).",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clipping threshold.")
    max_steps: int = Field(-1, description="Optimiser steps; -1 = run `epochs` epochs.")

    @field_validator("max_steps")
    @classmethod
    def _some_steps(cls, value: int) -> int:
        # 0 would train nothing and still save (and report) the input as a trained policy.
        if value == 0 or value < -1:
            raise ValueError(
                "must be a positive number of optimiser steps, or -1 to run `epochs` epochs"
            )
        return value

    epochs: float = Field(1.0, gt=0, description="Epochs when max_steps is -1.")
    batch_size: int = Field(8, ge=1, description="Per-device batch size (rows per micro-batch).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute activations in the backward pass instead of keeping them "
        "(TRL's default): needed for long sequences on a 7B model, pure extra compute where the "
        "activations fit in memory. Changes speed and memory, never the gradients.",
    )
    fused_lm_head: bool = Field(
        True,
        description="Score tokens through TRL's chunked LM head (its default), which never "
        "holds the full logits: needed for large vocabularies and long rows on a GPU. false = "
        "through the model's own head on the scored positions only: faster on CPU for the "
        "embedded model (README). Changes speed, memory and float rounding, never what is "
        "computed (forgetbench/training/lm_head.py).",
    )
    precision: Precision = Field(
        "auto",
        description="Training arithmetic: auto = bf16 mixed precision where the device has "
        "bfloat16 in hardware (a GPU from Ampere on; a CPU with AVX512-BF16 or AMX, where it is "
        "about 1.6x faster per step), fp32 elsewhere; bf16 / fp16 = mixed precision (fp32 "
        "master weights for full fine-tuning, a 16-bit frozen base under LoRA; bf16 is refused on "
        "a CPU without it in hardware, where torch emulates it ~90x slower); fp32 = none, "
        "the same arithmetic on every CPU.",
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="Experiment trackers TRL logs to (transformers' "
        "report_to: tensorboard, wandb, mlflow, ...); [] = none. Runs are named after the stage; "
        "TensorBoard writes under the stage's trainer/runs/.",
    )
    processes: int = Field(
        1,
        ge=1,
        description="Ranks training this stage together under `accelerate launch`: 1 = one "
        "process; N > 1 = data parallel over N GPUs (N CPU processes, gloo, on a CPU machine). "
        "batch_size x grad_accum stays the rows per optimiser step, shared by the ranks, so the "
        "step is the same as on one process (forgetbench/training/distributed.py).",
    )
    distributed: Distributed = Field(
        "ddp",
        description="How N > 1 ranks share the model: ddp = a full copy each; fsdp = weights, "
        "gradients and optimiser state sharded (GPU); deepspeed-zero2 = gradients and optimiser "
        "state sharded (GPU, needs deepspeed); deepspeed-zero3 = the weights too. The accelerate "
        "configs are shipped in forgetbench/launch_configs/.",
    )
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 trains all parameters.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_targets: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Modules LoRA adapts.",
    )

    def rows_per_micro_batch(self) -> int | None:
        """The global rows of one micro-batch (what the ranks share); None where this config's
        trainer does not use ``batch_size`` (a subclass says)."""
        return self.batch_size

    @model_validator(mode="after")
    def _ranks_share_each_step(self):
        # Checked with the config, so an indivisible batch fails before any stage starts.
        rows = self.rows_per_micro_batch()
        if rows is not None:
            split_batch(rows, self.grad_accum, self.processes)
        return self


def trainer_args(config: OptimConfig, out_dir: Path, seed: int, run_name: str = "") -> dict:
    """Keyword arguments shared by TRL's SFTConfig and GRPOConfig. ``run_name`` names the run in
    the trackers of ``report_to`` (default: the stage folder's name). Under ``processes`` > 1 the
    batch and accumulation are each rank's share of the step (``distributed.split_batch``)."""
    precision = resolve_precision(config.precision)
    rows = config.rows_per_micro_batch() or config.batch_size
    batch, accumulation = split_batch(rows, config.grad_accum, config.processes)
    return dict(
        output_dir=str(out_dir / "trainer"),
        seed=seed,
        data_seed=seed,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        max_steps=config.max_steps,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        ddp_timeout=COLLECTIVE_TIMEOUT_SECONDS,
        gradient_checkpointing=config.gradient_checkpointing,
        use_cpu=_use_cpu(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=list(config.report_to),
        run_name=run_name or stage_run_name(out_dir),
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def stage_run_name(out_dir: Path) -> str:
    """The tracker run name of the stage computing in ``out_dir``: its label and key (``train-frpo-
    3f2a...``), so a run in W&B or TensorBoard leads back to its stage folder; the folder's name
    outside a stage."""
    import json
    import re

    request = out_dir / "request.json"  # written by the runner (stages/worker.py REQUEST_FILE)
    label = json.loads(request.read_text()).get("label", "") if request.is_file() else ""
    key = re.fullmatch(r"\.tmp-[a-z_]+-([0-9a-f]+)-\d+", out_dir.name)
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-") or out_dir.name
    return f"{name}-{key.group(1)}" if key else name


def _use_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def resolve_precision(setting: str, name: str = "precision") -> str:
    """``fp32``, ``bf16`` or ``fp16`` for the device this process trains on; a setting the device
    cannot run is a UsageError naming ``name`` (the config field) and the fix."""
    import torch

    from forgetbench.devices import check_cpu_bf16, native_bf16

    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "bf16" if native_bf16() else "fp32"
    if setting == "bf16":
        check_cpu_bf16(name, setting, "fp32 or auto")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    if setting == "fp16" and not cuda:
        raise UsageError(
            f"{name}=fp16 needs a CUDA GPU (no fp16 mixed precision on CPU); set "
            f"{name}=auto, fp32 or bf16"
        )
    if setting == "bf16" and cuda and not bf16:
        raise UsageError(
            f"{name}=bf16: this GPU ({torch.cuda.get_device_name()}) has no "
            f"bfloat16; set {name}=fp16 or fp32 (auto picks fp32 here)"
        )
    return setting


def load_dtype(config: OptimConfig) -> str:
    """The dtype the trained model is loaded in: under LoRA the base is frozen, so a 16-bit run
    keeps it in 16 bits (PEFT keeps the adapters in fp32); full fine-tuning keeps fp32 master
    weights and lets autocast run the matmuls in 16 bits."""
    precision = resolve_precision(config.precision)
    if config.lora_r and precision != "fp32":
        return {"bf16": "bfloat16", "fp16": "float16"}[precision]
    return "float32"


def peft_config(config: OptimConfig):
    if not config.lora_r:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
        task_type="CAUSAL_LM",
    )


def save_policy(model, tokenizer, out_dir: Path) -> Path:
    """Save a full model folder; a LoRA policy is merged so every later stage loads one format.
    In a multi-process stage only rank 0 writes (every rank holds the whole model under DDP and
    ZeRO-2; FSDP and ZeRO-3 go through ``train_and_save``'s gather); all ranks get the folder."""
    from forgetbench.timing import timed

    target = out_dir / "model"
    if not is_main():
        return target
    with timed("save"):
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return target


def _save_gathered(trainer, tokenizer, out_dir: Path) -> Path:
    """FSDP / ZeRO-3: each rank holds a shard, so transformers' ``save_model`` gathers the full
    weights (a collective: every rank calls it) and rank 0 writes them; a LoRA run's adapter is
    then merged into its base on rank 0, as ``save_policy`` merges it."""
    from forgetbench.timing import timed

    target = out_dir / "model"
    with timed("save"):
        trainer.save_model(str(target))
        if is_main():
            tokenizer.save_pretrained(target)
            if (target / "adapter_config.json").is_file():
                from peft import AutoPeftModelForCausalLM

                merged = AutoPeftModelForCausalLM.from_pretrained(target).merge_and_unload()
                for adapter in target.glob("adapter_*"):
                    adapter.unlink()
                merged.save_pretrained(target)
    return target


def step_timer():
    """A TrainerCallback adding ``step_seconds`` to each optimiser step's log entry: the wall time
    from the step's start to its end (rollouts, scoring, every forward/backward, the update). Every
    loop here installs one, so ``log_history.json`` carries each method's cost per step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        begin = seconds = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.begin

        def on_log(self, args, state, control, **kwargs):
            # transformers appends the step's entry before calling on_log, after on_step_end.
            if self.seconds is not None and state.log_history and "loss" in state.log_history[-1]:
                state.log_history[-1]["step_seconds"] = round(self.seconds, 4)
                self.seconds = None

    return StepTimer()


def train_and_save(trainer, tokenizer, out_dir: Path) -> Path:
    """Run ``trainer``, write ``log_history.json`` (failing on a diverged run), save the policy
    to ``out_dir/model`` and return that folder: the end of every loop here."""
    from forgetbench.timing import timed

    ranks = trainer.accelerator.state
    if ranks.num_processes > 1:  # in the stage's log: every rank trains, in one process group
        print(
            f"forgetbench: rank {ranks.process_index} of {ranks.num_processes} trains "
            f"({ranks.distributed_type.value}, backend {ranks.backend})",
            flush=True,
        )
    with timed("train"):
        trainer.train()
    write_log_history(trainer, out_dir)
    write_precision(trainer.args, out_dir)
    tokenizer.padding_side = "left"  # SFT trains right-padded; the saved policy generates
    if ranks.num_processes > 1 and (trainer.is_fsdp_enabled or _zero3(trainer)):
        return _save_gathered(trainer, tokenizer, out_dir)
    return save_policy(trainer.model, tokenizer, out_dir)


# The stage's file saying which arithmetic its matmuls ran in: `precision: auto` resolves per
# machine (bf16 where the device has it in hardware), so the config alone does not say.
PRECISION_FILE = "training.json"


def write_precision(args, out_dir: Path) -> None:
    """``training.json``: the resolved precision (``fp32``, ``bf16`` or ``fp16``) of TRL's args."""
    import json

    if is_main():
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
        (out_dir / PRECISION_FILE).write_text(json.dumps({"precision": precision}))


def trained_precision(policy_folder: Path) -> str | None:
    """The precision a training stage recorded; None for a stage from before it was recorded."""
    import json

    path = policy_folder / PRECISION_FILE
    return json.loads(path.read_text())["precision"] if path.is_file() else None


def _zero3(trainer) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def write_log_history(trainer, out_dir: Path) -> None:
    """Rank 0 writes the log; every rank checks it (the logged loss and gradient norm are reduced
    over the ranks, so all of them see a divergence and fail together)."""
    import json

    if is_main():
        (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    # A diverged run's weights are NaN after the step whose gradient norm was NaN or inf, even
    # when the loss logged at that step (computed before the update) is still finite.
    for entry in trainer.state.log_history:
        for key in ("loss", "grad_norm"):
            value = entry.get(key)
            if value is not None and not math.isfinite(value):
                from forgetbench.errors import ForgetbenchError

                raise ForgetbenchError(
                    f"training diverged: {key} is {value} (NaN or inf) at step "
                    f"{entry.get('step')}; lower the learning rate"
                )
    _warn_if_nothing_was_learned(trainer.state.log_history)


def _warn_if_nothing_was_learned(history: list[dict]) -> None:
    """A GRPO-family run whose every group had one reward for all its completions had zero
    advantages at every step: the policy moved only by the KL term, whatever the method. It is not
    an error (a task can be too hard for the model: the tiny math run), but the stage's log says
    so rather than reporting a normal success. TRL logs the share as ``frac_reward_zero_std``."""
    shares = [e["frac_reward_zero_std"] for e in history if "frac_reward_zero_std" in e]
    if shares and is_main() and min(shares) >= 1.0:
        print(
            f"forgetbench: warning: every group had the same reward for all its completions in "
            f"all {len(shares)} logged steps, so every advantage was 0 and the method learned "
            "nothing from its reward; check the reward and the training task (a task too hard "
            "for the model scores 0 everywhere)",
            file=sys.stderr,
            flush=True,
        )
