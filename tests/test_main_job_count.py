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
