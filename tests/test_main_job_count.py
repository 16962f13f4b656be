"""benchmarks/main_job.py counts each training stage's arithmetic by its trainer: the bound every
ratio in the README is taken against."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from main_job import Model, stage_gflop  # noqa: E402

# The embedded model's shape (SmolLM2-135M's config.json).
MODEL = Model(
    {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
    }
)


def _stage(tmp_path, name: str, steps: int, tokens: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    history = [{"step": step, "num_tokens": tokens * step // steps} for step in range(1, steps + 1)]
    (folder / "log_history.json").write_text(json.dumps(history))
    return folder


@pytest.mark.parametrize(
    ("kind", "settings", "forwards"),
    [
        # an SFT attack: its config carries `rl: {}` too, and is one forward and a backward
        ("attack", {"trainer": "sft", "rl": {}, "batch_size": 8, "grad_accum": 1}, 3),
        ("warmup", {"batch_size": 8, "grad_accum": 1}, 3),
        # GRPO family: rollouts generated (1), trained on (3)
        ("train", {"num_generations": 8, "prompts_per_step": 2, "beta": 0.0}, 4),
        ("attack", {"trainer": "grpo", "rl": {"num_generations": 8, "prompts_per_step": 2}}, 4),
    ],
)
def test_a_stage_is_counted_by_its_trainer(tmp_path, kind, settings, forwards):
    section = {"warmup": "warmup", "train": "method", "attack": "attack"}[kind]
    folder = _stage(tmp_path, kind, steps=10, tokens=20_000)
    request = {"config": {section: {"config": settings} if kind == "attack" else settings}}
    one_forward = MODEL.forward(20_000, _context(kind, settings)) / 1e9
    assert stage_gflop(kind, folder, request, MODEL) == pytest.approx(forwards * one_forward)


def _context(kind: str, settings: dict) -> float:
    """Half the mean row length: 20,000 tokens over the rows of 10 steps."""
    rl = settings.get("rl") or settings
    if "num_generations" in rl:
        return 20_000 / (10 * rl["prompts_per_step"] * rl["num_generations"]) / 2
    return 20_000 / (10 * settings["batch_size"] * settings["grad_accum"]) / 2


def test_a_kl_stage_counts_the_policy_only_where_it_ran(tmp_path):
    """P0 runs over every rollout; the policy only over those whose log-probs generation did not
    record (a stage written before they were recorded ran it over all: 2 forwards)."""
    generations = tmp_path / "generations"
    generations.mkdir()
    records = [{"prompt_tokens": 40, "num_tokens": 20}, {"prompt_tokens": 60, "num_tokens": 40}]
    (generations / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    request = {
        "config": {},
        "inputs": {"reference": "train/p0", "policy": "attack/p1", "generations": str(generations)},
    }
    one_forward = MODEL.forward(160, 40) / 1e9  # 160 tokens, mean context 80 / 2

    def counted(rows: list[dict]) -> float:
        folder = tmp_path / "kl"
        folder.mkdir(exist_ok=True)
        (folder / "kl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return stage_gflop("kl", folder, request, MODEL)

    before = [{"value": 1.0}, {"value": 2.0}]
    assert counted(before) == pytest.approx(2 * one_forward)
    mixed = [
        {"value": 1.0, "policy_logprobs": "recorded"},
        {"value": 2.0, "policy_logprobs": "computed"},
    ]
    assert counted(mixed) == pytest.approx(one_forward + MODEL.forward(100, 40) / 1e9)
    recorded = [{**row, "policy_logprobs": "recorded"} for row in before]
    assert counted(recorded) == pytest.approx(one_forward)
    request["inputs"]["policy"] = "train/p0"  # P0 from itself: written as 0, nothing run
    assert counted([{"value": 0.0}, {"value": 0.0}]) == 0.0
