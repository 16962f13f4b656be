"""The GRPO-family loop on real TRL: compute parity (passes through the network per optimiser step,
counted on the tiny model of tests/conftest.py: the count is the loop's, whatever the weights) and
bad rewards (on the real embedded model)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from forgetbench import registry
from forgetbench.models import resolve_model
from forgetbench.training.grpo import (
    AdvantageCheckError,
    GRPOFamilyConfig,
    RewardFunctionError,
    run_grpo,
)

TINY_LOOP = dict(
    max_steps=2,
    num_generations=2,
    prompts_per_step=2,
    grad_accum=2,
    max_completion_length=8,
    n_harmful=2,
    n_harmless=2,
)


class PassCounter:
    """Counts passes through the policy's network (policy and reference copies alike: every pass
    crosses the token embedding once), split into generation / no-grad / with-grad (and the
    sequences in those: ``*_rows``), plus backward passes and optimiser steps, by wrapping the
    real methods during a real run."""

    def __init__(self, monkeypatch, vocab_size: int):
        from transformers import GenerationMixin

        self.counts = Counter()
        self._generating = False
        generate, backward, embed = (
            GenerationMixin.generate,
            torch.Tensor.backward,
            torch.nn.Embedding.forward,
        )
        counter = self

        def counted_generate(model, *args, **kwargs):
            counter.counts["generate"] += 1
            counter._generating = True
            try:
                return generate(model, *args, **kwargs)
            finally:
                counter._generating = False

        def counted_backward(tensor, *args, **kwargs):
            counter.counts["backward"] += 1
            return backward(tensor, *args, **kwargs)

        def counted_embed(module, *args, **kwargs):
            # The reward's MiniLM has other embeddings (another vocabulary): not counted.
            if module.num_embeddings == vocab_size and not counter._generating:
                kind = "forward_grad" if torch.is_grad_enabled() else "forward_no_grad"
                counter.counts[kind] += 1
                counter.counts[f"{kind}_rows"] += len(args[0])  # sequences in the pass
            return embed(module, *args, **kwargs)

        monkeypatch.setattr(GenerationMixin, "generate", counted_generate)
        monkeypatch.setattr(torch.Tensor, "backward", counted_backward)
        monkeypatch.setattr(torch.nn.Embedding, "forward", counted_embed)


def train_counting(method: str, model_path, tmp_path, monkeypatch, settings=None) -> Counter:
    """Passes of ``method`` (any method plugin) on ``settings`` (default: the tiny GRPO loop)."""
    from forgetbench.methods.rl import train_with_advantage  # noqa: F401  (import before patching)

    plugin = registry.get("method", method)
    config = plugin.build_config(TINY_LOOP if settings is None else settings)
    from transformers import AutoConfig

    counter = PassCounter(monkeypatch, AutoConfig.from_pretrained(model_path).vocab_size)
    out = tmp_path / method.replace("/", "-")
    plugin.target(config, model_path, out, 0)
    monkeypatch.undo()
    # Optimiser steps from the run's own log: every method's loop logs each step with its time.
    history = json.loads((out / "log_history.json").read_text())
    counter.counts["optimizer_step"] = sum("step_seconds" in entry for entry in history)
    return counter.counts


def test_frpo_and_grpo_run_the_same_passes_per_optimiser_step(
    tiny_model, grpo_passes, tmp_path, monkeypatch
):
    frpo = train_counting("frpo", tiny_model, tmp_path, monkeypatch)
    grpo = grpo_passes
    steps = TINY_LOOP["max_steps"]
    assert frpo["optimizer_step"] == grpo["optimizer_step"] == steps
    per_step = {
        name: {k: v / steps for k, v in counts.items()}
        for name, counts in (("frpo", frpo), ("grpo", grpo))
    }
    assert per_step["frpo"] == per_step["grpo"], per_step
    # One backward per micro-batch, one generation batch per optimiser step, and the reference
    # policy (beta > 0 in both) adds forward passes without gradient but no backward.
    counts = per_step["frpo"]
    assert counts["backward"] == TINY_LOOP["grad_accum"], counts
    assert counts.get("forward_grad") == TINY_LOOP["grad_accum"], counts
    assert counts.get("generate", 0) >= 1, counts
    assert counts.get("forward_no_grad", 0) >= 1, counts
    # what the leaderboard shows (registry ``passes``): backward passes per micro-batch
    for name in ("frpo", "grpo"):
        assert registry.get("method", name).passes == counts["backward"] / TINY_LOOP["grad_accum"]


def _dataset():
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": text}], "prompt_index": i}
            for i, text in enumerate(["Name a colour.", "Name a fruit."])
        ]
    )


def _loop(tmp_path, reward_fn):
    from forgetbench.advantages import frpo_advantages

    config = GRPOFamilyConfig(
        max_steps=1, num_generations=2, prompts_per_step=2, max_completion_length=4
    )
    return run_grpo(
        resolve_model("smollm2-135m-instruct"),
        _dataset(),
        [reward_fn],
        lambda r, g: frpo_advantages(r, g, lam=0.5),
        config,
        tmp_path,
        0,
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_non_finite_reward_stops_with_a_clear_error(tmp_path, bad):
    def reward(prompts, completions, **_):
        return [1.0] * (len(completions) - 1) + [bad]

    with pytest.raises(AdvantageCheckError, match="None, NaN or inf for 1 completion"):
        _loop(tmp_path, reward)
    assert not (tmp_path / "model").exists()


def test_reward_function_that_raises_is_named(tmp_path):
    def flaky_judge(prompts, completions, **_):
        raise ConnectionError("judge endpoint refused the connection")

    with pytest.raises(
        RewardFunctionError,
        match=r"reward function \(flaky_judge\) raised "
        "ConnectionError: judge endpoint refused",
    ):
        _loop(tmp_path, flaky_judge)
