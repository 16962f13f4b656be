"""The resource plan: parameter counts and memory against published sizes, and the table that
`forgetbench run --print-config` prints."""

import json

import pytest

from forgetbench.resource_plan import (
    GB,
    ModelShape,
    generation_memory,
    model_shape,
    training_memory,
)


@pytest.mark.parametrize(
    "model, published",
    [
        ("mistralai/Mistral-7B-Instruct-v0.2", 7.24e9),  # Mistral's model card: 7.24B
        ("Qwen/Qwen2.5-7B-Instruct", 7.61e9),  # Qwen2.5 card: 7.61B
        ("Qwen/Qwen2.5-Math-7B", 7.61e9),
        ("meta-llama/Llama-3.1-8B-Instruct", 8.03e9),  # 8.03B
    ],
)
def test_parameter_counts_match_the_published_sizes(model, published):
    assert model_shape(model).parameters == pytest.approx(published, rel=0.003)


def test_embedded_model_is_read_from_its_own_config_json():
    # SmolLM2-135M: 134.5M parameters with tied embeddings (its model card says 135M).
    assert model_shape("smollm2-135m-instruct").parameters == pytest.approx(134.5e6, rel=0.003)


def test_a_local_folder_falls_back_to_its_config_json(tmp_path):
    shipped = json.loads((__import__("forgetbench").resource_plan.SHIPPED_CONFIGS).read_text())
    (tmp_path / "config.json").write_text(json.dumps(shipped["mistralai/Mistral-7B-Instruct-v0.1"]))
    assert model_shape(str(tmp_path)) == model_shape("mistralai/Mistral-7B-Instruct-v0.1")


def test_unknown_hub_model_is_one_line_naming_the_fix():
    from forgetbench.errors import UsageError

    with pytest.raises(UsageError, match="no config.json for 'org/unknown-70b'.*model_configs"):
        model_shape("org/unknown-70b")


def test_7b_weights_and_full_fine_tuning_bytes_per_parameter():
    shape = model_shape("mistralai/Mistral-7B-Instruct-v0.2")
    assert generation_memory(
        shape, dtype="bfloat16", sequences=0, tokens=0
    ).vllm / GB == pytest.approx(14.5, abs=0.05)
    # AdamW: 4 (weights) + 4 (grads) + 8 (m, v) bytes; bf16 autocast adds its 2-byte weight copies.
    for precision, per_parameter in (("fp32", 16), ("bf16", 18)):
        full = training_memory(shape, precision=precision, batch=0, tokens=0, checkpointing=True)
        assert (full.weights + full.gradients + full.optimiser) / shape.parameters == per_parameter


# Peak torch.cuda.max_memory_allocated on an NVIDIA H200 (torch 2.11, transformers 5.17, peft):
# a randomly initialised Llama (hidden 2048, 16 layers, intermediate 5632, vocab 32000, 16 heads,
# 4 kv heads; 1.1B), two AdamW steps under bf16 autocast, SDPA attention. (batch, tokens,
# checkpointing, LoRA rank) -> GB.
H200_PEAKS = {
    (4, 1024, True, 0): 17.12,
    (4, 1024, False, 0): 20.69,
    (4, 1024, True, 64): 4.11,
    (8, 2048, True, 64): 9.73,
    (8, 2048, False, 64): 34.08,
}


@pytest.mark.parametrize("run, measured", H200_PEAKS.items())
def test_estimate_is_within_ten_percent_of_the_measured_peak(run, measured):
    batch, tokens, checkpointing, rank = run
    shape = ModelShape(2048, 16, 5632, 32000, 16, 4)
    estimate = (
        training_memory(
            shape,
            precision="bf16",
            lora_r=rank,
            batch=batch,
            tokens=tokens,
            checkpointing=checkpointing,
        ).total
        / GB
    )
    assert estimate == pytest.approx(measured, rel=0.10)


def test_lora_trains_few_parameters_over_a_16_bit_base():
    shape = model_shape("mistralai/Mistral-7B-Instruct-v0.2")
    # r=64 on all seven projections of Mistral-7B: 167.8M adapter parameters (PEFT's count).
    assert shape.lora_parameters(64, list(shape.layer_matrices())) == 167_772_160
    lora = training_memory(
        shape, precision="bf16", lora_r=64, batch=0, tokens=0, checkpointing=True
    )
    assert lora.weights == shape.parameters * 2 + 167_772_160 * 4
    assert lora.optimiser == 167_772_160 * 8


def test_gradient_checkpointing_keeps_far_fewer_activations():
    shape = model_shape("mistralai/Mistral-7B-Instruct-v0.2")
    kept = {
        gc: training_memory(
            shape, precision="bf16", batch=4, tokens=2048, checkpointing=gc
        ).activations
        for gc in (True, False)
    }
    assert kept[False] > 5 * kept[True]  # full fine-tuning (no adapter inputs)
    assert kept[True] / GB == pytest.approx(
        4 * 2048 * (32 * 2 * 4096 + 2 * (6 * 4096 + 2 * 1024 + 4 * 14336) + 8 * 32000) / 1e9
    )


def test_zero_shards_what_each_stage_says():
    memory = training_memory(
        ModelShape(4096, 32, 14336, 32000, 32, 8),
        precision="bf16",
        batch=1,
        tokens=1,
        checkpointing=True,
    )
    for stage, sharded in (
        (1, {"optimiser"}),
        (2, {"optimiser", "gradients"}),
        (3, {"optimiser", "gradients", "weights"}),
    ):
        share = memory.sharded(8, stage)
        for part in ("weights", "gradients", "optimiser"):
            expected = getattr(memory, part) / (8 if part in sharded else 1)
            assert getattr(share, part) == pytest.approx(expected)
        assert share.activations == memory.activations


def test_tensor_parallel_splits_the_engine():
    shape = model_shape("mistralai/Mistral-7B-Instruct-v0.2")
    one = generation_memory(shape, dtype="bfloat16", sequences=256, tokens=1024)
    two = generation_memory(shape, dtype="bfloat16", sequences=256, tokens=1024, tensor_parallel=2)
    # KV cache: 2 (k, v) x 32 layers x 1024 (8 kv heads x 128) x 2 bytes = 128 KiB per token.
    assert one.vllm == shape.parameters * 2 + 256 * 1024 * 131072
    assert two.vllm == one.vllm / 2


def test_print_config_prints_the_plan_per_stage(cli, tmp_path):
    result = cli(
        "run", "--preset", "paper", "--print-config", "--output-dir", str(tmp_path), timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = result.stdout[result.stdout.index("estimated GPU memory per stage") :]
    rows = {line.split("  ")[0].strip(): line for line in table.splitlines()[2:]}
    assert {"train frpo", "attack frpo+alpaca", "kl"} <= set(rows)
    assert any(label.startswith("generate") for label in rows)
    assert "LoRA r=64" in rows["train frpo"] and "full" in rows["attack frpo+alpaca"]
