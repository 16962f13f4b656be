"""Estimated GPU memory of each stage, from the model's config.json fields: a pure function.

The estimate follows the usual accounting (ZeRO paper, Rajbhandari et al. 2020; activation
memory, Korthikanti et al. 2022), for the Llama/Mistral/Qwen2 decoder these presets train:

- weights: every parameter at the dtype it is loaded in (fp32 master weights for full fine-tuning
  under mixed precision, as ``training.common.load_dtype`` loads them, plus the 16-bit copies
  autocast caches; a 16-bit frozen base under LoRA; the generation dtype for inference);
- gradients: fp32, one per trainable parameter;
- optimiser state: AdamW's m and v in fp32, 8 bytes per trainable parameter (so full fine-tuning
  costs 16 bytes per parameter before activations in fp32, 18 under bf16 autocast);
- activations of one micro-batch (batch x tokens): per layer and token the tensors the backward
  pass keeps (norm inputs and outputs, q/k/v, the attention output, the MLP's gate, up and
  product; SDPA/flash attention keeps no score matrix), or with gradient checkpointing only each
  layer's input plus one layer recomputed; plus the fp32 logits and their gradient;
- ZeRO over N GPUs: stage 1 shards the optimiser state, 2 also the gradients, 3 also the weights;
- vLLM: the 16-bit weights plus the KV cache of the sequences decoded at once (vLLM itself
  reserves ``gpu_memory_utilization`` of the GPU whatever it needs).

Checked against torch.cuda.max_memory_allocated on an H200 (a randomly initialised 1.1B Llama,
AdamW, bf16 autocast, two steps; README "Running at paper scale"): within 5% for full
fine-tuning and LoRA with and without checkpointing. The CUDA context (~0.5-1 GB) and allocator
fragmentation come on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from forgetbench.errors import UsageError
from forgetbench.training.distributed import split_batch

SHIPPED_CONFIGS = Path(__file__).with_name("model_configs.json")
BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
GB = 1e9
VLLM_DEFAULT_MAX_NUM_SEQS = 256  # vLLM's default max_num_seqs on GPU


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool = False
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        config = config.get("text_config", config)
        try:
            return cls(
                hidden=config["hidden_size"],
                layers=config["num_hidden_layers"],
                intermediate=config["intermediate_size"],
                vocab=config["vocab_size"],
                heads=config["num_attention_heads"],
                kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                tied=bool(config.get("tie_word_embeddings", False)),
                attention_bias=bool(config.get("attention_bias", False)),
            )
        except KeyError as missing:
            raise UsageError(
                f"the model's config.json lacks {missing}; the resource plan reads "
                "Llama-style configs (hidden_size, num_hidden_layers, ...)"
            ) from None

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def layer_matrices(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer, by LoRA target name."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.layer_matrices().values()) + 2 * self.hidden
        if self.attention_bias:
            per_layer += self.hidden + 2 * self.kv_dim
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_layer + embeddings + self.hidden

    def lora_parameters(self, rank: int, targets: list[str]) -> int:
        return self.layers * sum(
            rank * (a + b) for name, (a, b) in self.layer_matrices().items() if name in targets
        )

    def activation_bytes_per_token(self, checkpointing: bool, width: int = 2) -> float:
        """Bytes kept for the backward pass per token of a micro-batch (``width``: bytes per
        activation, 2 under mixed precision, 4 in fp32)."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        per_layer = width * (6 * h + 2 * kv + 4 * i)
        logits = 2 * 4 * self.vocab  # fp32 logits and their gradient
        if checkpointing:  # each layer's input, and one layer's activations while recomputing
            return self.layers * width * h + per_layer + logits
        return self.layers * per_layer + logits

    def kv_cache_bytes_per_token(self, width: int = 2) -> int:
        return 2 * self.layers * self.kv_dim * width


def model_shape(model: str) -> ModelShape:
    """The shape of ``model``: a hub id shipped in model_configs.json (no network), a local folder
    (its config.json), or the embedded model (its converted folder)."""
    shipped = json.loads(SHIPPED_CONFIGS.read_text())
    if model in shipped:
        return ModelShape.from_config(shipped[model])
    from forgetbench.models import EMBEDDED_MODELS, resolve_model

    folder = Path(resolve_model(model)) if model in EMBEDDED_MODELS else Path(model)
    if (folder / "config.json").is_file():
        return ModelShape.from_config(json.loads((folder / "config.json").read_text()))
    known = ", ".join(k for k in shipped if not k.startswith("_"))
    raise UsageError(
        f"no config.json for {model!r} here: the resource plan knows {known}, local "
        "folders and the embedded model; download the model or add its config.json "
        f"fields to {SHIPPED_CONFIGS}"
    )


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU, by what holds them."""

    weights: float = 0
    gradients: float = 0
    optimiser: float = 0
    activations: float = 0
    vllm: float = 0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimiser + self.activations + self.vllm

    def sharded(self, gpus: int, zero_stage: int) -> "Memory":
        """The per-GPU share under DeepSpeed ZeRO ``zero_stage`` over ``gpus`` data-parallel
        ranks (activations are per rank already; vLLM is not sharded by ZeRO)."""

        def part(value, from_stage):
            return value / gpus if zero_stage >= from_stage else value

        return Memory(
            weights=part(self.weights, 3),
            gradients=part(self.gradients, 2),
            optimiser=part(self.optimiser, 1),
            activations=self.activations,
            vllm=self.vllm,
        )


def training_memory(
    shape: ModelShape,
    *,
    precision: str,
    lora_r: int = 0,
    lora_targets: Optional[list[str]] = None,
    batch: int,
    tokens: int,
    checkpointing: bool,
    reference_model: bool = False,
    vllm_share: float = 0,
) -> Memory:
    """One training process: ``batch`` sequences of ``tokens`` per micro-batch; ``precision``
    fp32 / bf16 / fp16 (resolved, not auto); ``reference_model``: a frozen copy for a KL term
    (full fine-tuning with beta > 0; under LoRA the reference is the base with adapters off)."""
    params = shape.parameters
    half = precision != "fp32"
    width = 2 if half else 4
    per_token = shape.activation_bytes_per_token(checkpointing, width)
    if lora_r:
        trainable = shape.lora_parameters(lora_r, lora_targets or list(shape.layer_matrices()))
        weights = params * (2 if half else 4) + trainable * 4
        # Each adapter keeps its own copy of its input (q/k/v, o, gate/up, down), in every layer
        # without checkpointing, in the recomputed one with it (measured on an H200, 1.1B model).
        per_token += (
            width * (6 * shape.hidden + shape.intermediate) * (1 if checkpointing else shape.layers)
        )
    else:
        trainable = params
        # fp32 master weights, plus the 16-bit copies autocast caches for the forward and
        # backward pass (2 bytes per parameter, measured on an H200; none in fp32).
        weights = params * (6 if half else 4)
        if reference_model:
            weights += params * (2 if half else 4)
    return Memory(
        weights=weights,
        gradients=trainable * 4,
        optimiser=trainable * 8,
        activations=batch * tokens * per_token,
        vllm=vllm_share,
    )


def generation_memory(
    shape: ModelShape, *, dtype: str, sequences: int, tokens: int, tensor_parallel: int = 1
) -> Memory:
    """A vLLM engine: 16-bit (or ``dtype``) weights and the KV cache of ``sequences`` decoded at
    once of up to ``tokens`` each, split over ``tensor_parallel`` GPUs."""
    width = BYTES[dtype]
    engine = shape.parameters * width + sequences * tokens * shape.kv_cache_bytes_per_token(width)
    return Memory(vllm=engine / tensor_parallel)


# ------------------------------------------------------------------------------------------------
# Per stage of a planned matrix.

PROMPT_TOKENS_ASSUMED = 512  # prompt length where a config sets none (generation, rollouts)


# How much of the model state each distributed strategy shards over its ranks, as a ZeRO stage
# (FSDP's full sharding is ZeRO-3's: weights, gradients and optimiser state).
ZERO_STAGE = {"ddp": 0, "deepspeed-zero2": 2, "deepspeed-zero3": 3, "fsdp": 3}


@dataclass(frozen=True)
class StageEstimate:
    label: str
    count: int  # stages of this kind sharing the estimate (e.g. one generate stage per eval)
    memory: Memory  # one rank's, before sharding
    note: str = ""
    ranks: int = 1  # a training stage's processes (one GPU each)
    distributed: str = "ddp"

    @property
    def per_gpu(self) -> Memory:
        """What each of the stage's GPUs holds, sharded as its ``distributed`` setting says."""
        return self.memory.sharded(self.ranks, ZERO_STAGE[self.distributed])


def _training(shape: ModelShape, fields: dict, gpu_gib: float) -> tuple[Memory, str]:
    precision = _precision_on_gpu(fields.get("precision", "auto"))
    lora = dict(lora_r=fields.get("lora_r", 0), lora_targets=fields.get("lora_targets"))
    checkpointing = fields.get("gradient_checkpointing", True)
    accumulation, ranks = fields.get("grad_accum", 1), fields.get("processes", 1)
    if "num_generations" in fields:  # the GRPO family: the micro-batch is completions
        completions = fields["prompts_per_step"] * fields["num_generations"]
        batch = split_batch(completions // accumulation, accumulation, ranks)[0]  # one rank's
        prompt = fields.get("max_prompt_length") or PROMPT_TOKENS_ASSUMED
        tokens = prompt + fields["max_completion_length"]
        rollouts = fields.get("rollouts", "hf")
        share = (
            fields.get("vllm_gpu_memory_utilization", 0.3) * gpu_gib * GB
            if rollouts == "vllm-colocate"
            else 0
        )
        memory = training_memory(
            shape,
            precision=precision,
            batch=batch,
            tokens=tokens,
            checkpointing=checkpointing,
            vllm_share=share,
            reference_model=fields.get("beta", 0) > 0,
            **lora,
        )
        return memory, (
            f"{precision}, {batch} x {tokens} tok, rollouts {rollouts}"
            f"{', GC' if checkpointing else ''}{_lora_note(fields)}"
        )
    batch = split_batch(fields.get("batch_size", 8), accumulation, ranks)[0]
    tokens = fields.get("max_length", 512)
    memory = training_memory(
        shape, precision=precision, batch=batch, tokens=tokens, checkpointing=checkpointing, **lora
    )
    return memory, (
        f"{precision}, {batch} x {tokens} tok{', GC' if checkpointing else ''}{_lora_note(fields)}"
    )


def _lora_note(fields: dict) -> str:
    return f", LoRA r={fields['lora_r']}" if fields.get("lora_r") else ", full"


def _precision_on_gpu(setting: str) -> str:
    """auto as it resolves on a bf16 GPU: the plan is for the GPU machine, not this one."""
    return "bf16" if setting == "auto" else setting


def _generation(shape: ModelShape, backend: str, config: dict) -> tuple[Memory, str]:
    dtype = config.get("dtype", "float32")
    dtype = "bfloat16" if dtype == "auto" else dtype
    tokens = config.get("max_model_len") or PROMPT_TOKENS_ASSUMED + config["max_new_tokens"]
    if backend == "hf":
        sequences = config.get("batch_size", 16)
        width = BYTES[dtype]
        return (
            Memory(
                weights=shape.parameters * width,
                activations=sequences * tokens * shape.kv_cache_bytes_per_token(width),
            ),
            f"hf {dtype}, {sequences} x {tokens} tok",
        )
    sequences = config.get("max_num_seqs") or VLLM_DEFAULT_MAX_NUM_SEQS
    tp = config.get("tensor_parallel_size", 1)
    return (
        generation_memory(
            shape, dtype=dtype, sequences=sequences, tokens=tokens, tensor_parallel=tp
        ),
        f"vLLM {dtype}, {sequences} x {tokens} tok, tp={tp}",
    )


def _kl(shape: ModelShape, tokens: int) -> tuple[Memory, str]:
    from forgetbench.stages import kl

    batch = getattr(kl, "BATCH_SIZE", 8)
    weights = 2 * shape.parameters * 4  # the policy and P0, fp32 (stages/kl.py)
    return (
        Memory(weights=weights, activations=2 * batch * tokens * shape.vocab * 8),
        f"2 fp32 models, {batch} x {tokens} tok",
    )


def estimate_stages(matrix, gpu_gib: float = 80) -> list[StageEstimate]:
    """One estimate per kind of stage of a planned matrix (``forgetbench.matrix.plan_matrix``);
    stages whose estimate is the same (every generate stage of a back-end) are counted together.
    Judge stages run their own judge models and are not estimated."""
    from forgetbench.attacks import AttackTask, grpo_settings
    from forgetbench.config import dump

    estimates: dict[tuple, StageEstimate] = {}
    for stage in matrix.stages:
        config = stage.config
        shape = None
        if stage.kind == "warmup":
            shape = model_shape(config["model"])
            memory, note = _training(shape, config["warmup"], gpu_gib)
            label = "warmup"
        elif stage.kind == "train":
            shape = model_shape(config["model"])
            memory, note = _training(shape, config["method"]["config"], gpu_gib)
            label = stage.label
        elif stage.kind == "attack":
            shape = model_shape(_base_model(stage))
            fields = config["attack"]["config"]
            if fields.get("trainer") == "grpo":
                fields = dump(grpo_settings(AttackTask.model_validate(fields)))
            memory, note = _training(shape, fields, gpu_gib)
            label = stage.label
        elif stage.kind == "generate":
            shape = model_shape(_base_model(stage))
            backend = config["backend"]
            memory, note = _generation(shape, backend["name"], backend["config"])
            label = f"generate ({backend['name']})"
        elif stage.kind == "kl":
            shape = model_shape(_base_model(stage))
            generation = stage.inputs["generations"].config["backend"]["config"]
            memory, note = _kl(shape, PROMPT_TOKENS_ASSUMED + generation["max_new_tokens"])
            label = "kl"
        else:
            continue
        ranks, distributed = stage.processes, stage.distributed
        if ranks > 1:
            note += f", {ranks} x {distributed}"
        key = (label, note)
        known = estimates.get(key)
        count = (known.count if known else 0) + 1
        estimates[key] = StageEstimate(label, count, memory, note, ranks, distributed)
    return list(estimates.values())


def _base_model(stage) -> str:
    """The model a stage's policy descends from (the train stage's ``model``)."""
    while "model" not in stage.config:
        stage = (
            stage.inputs.get("policy")
            or stage.inputs.get("reference")
            or next(iter(stage.inputs.values()))
        )
    return stage.config["model"]


def format_plan(estimates: list[StageEstimate]) -> str:
    """A text table: GB by part for one process, its total on one GPU, and what each GPU of the
    stage holds as configured (its ``processes`` and ``distributed``: ZeRO / FSDP sharding)."""
    header = (
        f"{'stage':34s} {'n':>3s} {'weights':>8s} {'grads':>7s} {'optim':>7s} "
        f"{'activ':>7s} {'vLLM':>7s} {'1 GPU':>7s} {'as set':>7s} {'GPUs':>4s}  setting"
    )
    lines = ["estimated GPU memory per stage, GB per GPU (forgetbench/resource_plan.py):", header]
    for item in estimates:
        m = item.memory
        lines.append(
            f"{item.label[:34]:34s} {item.count:3d} {m.weights / GB:8.1f} {m.gradients / GB:7.1f} "
            f"{m.optimiser / GB:7.1f} {m.activations / GB:7.1f} {m.vllm / GB:7.1f} "
            f"{m.total / GB:7.1f} {item.per_gpu.total / GB:7.1f} {item.ranks:4d}  {item.note}"
        )
    return "\n".join(lines)
