"""The advantage TRL's loss actually consumes, on real GRPO / FRPO steps.

test_advantages.py checks the pure functions; this checks the wiring: the rows that enter TRL's
``GRPOTrainer._compute_loss`` carry ``frpo_advantages`` / ``grpo_advantages`` of the rewards TRL
gathered (sign, order and this process's slice of the gathered batch), and a positive advantage
makes the optimiser raise the log-probability of the sampled completions. Everything is recorded
from outside, by wrapping TRL's methods, so a TRL change that ignored forgetbench's override, or
an override that sliced the wrong rows, fails here. Which rows enter the loss is the loop's
doing, whatever the weights: those checks run on the tiny model of tests/conftest.py; the
optimiser's effect on the sampled completions is measured on the embedded model.
"""

from __future__ import annotations

import pytest
import torch

from forgetbench import registry
from forgetbench.advantages import frpo_advantages, grpo_advantages
from forgetbench.models import load_model, resolve_model
from forgetbench.training.grpo import GRPOFamilyConfig, run_grpo

# Two prompts (one harmful, one harmless: the safety reward varies within a group) x 4 completions
# of 6 tokens, one optimiser step over two micro-batches.
TINY = dict(
    max_steps=1,
    num_generations=4,
    prompts_per_step=2,
    grad_accum=2,
    max_completion_length=6,
    n_harmful=1,
    n_harmless=1,
    learning_rate=1e-5,
)


@pytest.fixture(scope="module")
def model_path():
    return resolve_model("smollm2-135m-instruct")


class Recorder:
    """Wraps TRL's reward gathering and loss entry point; optionally makes this process rank 1
    of two, the first rank's rows being ``other_rewards`` (so the per-process slice matters)."""

    def __init__(self, monkeypatch, other_rewards: torch.Tensor | None = None):
        import accelerate.utils
        import trl.trainer.grpo_trainer as grpo_module
        from accelerate import Accelerator
        from trl import GRPOTrainer

        self.rewards, self.loss_inputs = [], []
        self.rank_one = False
        calculate, compute_loss, prepare = (
            GRPOTrainer._calculate_rewards,
            GRPOTrainer._compute_loss,
            GRPOTrainer._prepare_inputs,
        )
        gather_object, process_index = accelerate.utils.gather_object, Accelerator.process_index
        recorder = self

        def recorded_rewards(trainer, inputs, *args):
            rewards = calculate(trainer, inputs, *args)
            if other_rewards is not None:  # rank 0's rows come first in the gathered batch
                rewards = torch.cat([other_rewards.view(-1, 1).to(rewards), rewards])
            recorder.rewards.append(rewards.clone())
            return rewards

        def recorded_loss(trainer, model, inputs):
            recorder.loss_inputs.append(
                {k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            )
            return compute_loss(trainer, model, inputs)

        def as_rank_one(trainer, *args, **kwargs):
            recorder.rank_one = other_rewards is not None
            try:
                return prepare(trainer, *args, **kwargs)
            finally:
                recorder.rank_one = False

        def gathered(values):
            if recorder.rank_one and values and isinstance(values[0], int):  # prompt indices
                group = TINY["num_generations"]
                return [10_000 + i // group for i in range(len(other_rewards))] + list(values)
            return gather_object(values)

        monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", recorded_rewards)
        monkeypatch.setattr(GRPOTrainer, "_compute_loss", recorded_loss)
        monkeypatch.setattr(GRPOTrainer, "_prepare_inputs", as_rank_one)
        monkeypatch.setattr(accelerate.utils, "gather_object", gathered)
        monkeypatch.setattr(
            Accelerator,
            "process_index",
            property(lambda acc: 1 if recorder.rank_one else process_index.fget(acc)),
        )
        # TRL shuffles the generation batch before cutting it into micro-batches; without the
        # shuffle the loss rows line up with the gathered rewards (the shuffle is not under test).
        monkeypatch.setattr(grpo_module, "shuffle_sequence_dict", lambda batch: batch)

    def loss_advantages(self) -> torch.Tensor:
        return torch.cat([inputs["advantages"] for inputs in self.loss_inputs]).double()


def train(method: str, model_path, out_dir, **settings):
    plugin = registry.get("method", method)
    return plugin.target(plugin.build_config({**TINY, **settings}), model_path, out_dir, 0)


@pytest.mark.parametrize("other", [False, True], ids=["one-process", "rank-1-of-2"])
def test_frpo_loss_consumes_frpo_advantages_of_the_gathered_rewards(
    tiny_model, tmp_path, monkeypatch, other
):
    # A made-up first rank whose rewards differ from ours: reading its slice would be caught.
    others = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.9, 0.1, 0.5, 0.3]) if other else None
    recorder = Recorder(monkeypatch, others)
    train("frpo", tiny_model, tmp_path, lam=0.5)
    rewards = recorder.rewards[0].sum(dim=1)  # one reward function, weight 1
    local = len(rewards) - (0 if others is None else len(others))
    expected = frpo_advantages(rewards.double(), TINY["num_generations"], lam=0.5)[-local:]
    used = recorder.loss_advantages()
    assert len(recorder.loss_inputs) == TINY["grad_accum"]
    assert len(used) == local == TINY["prompts_per_step"] * TINY["num_generations"]
    assert rewards.view(-1, TINY["num_generations"])[-2:].std(dim=1).max() > 0, rewards  # varies
    torch.testing.assert_close(used, expected, rtol=1e-5, atol=1e-6)
    # FRPO is not TRL's own r - mean: had the override been ignored this would differ.
    grouped = rewards.double().view(-1, TINY["num_generations"])
    trl_own = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()[-local:]
    assert not torch.allclose(used, trl_own, atol=1e-4)


def test_grpo_loss_consumes_group_normalised_advantages(tiny_model, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    train("grpo", tiny_model, tmp_path, adv_norm="group")
    rewards = recorder.rewards[0].sum(dim=1).double()
    expected = grpo_advantages(rewards, TINY["num_generations"], scale="group")
    torch.testing.assert_close(recorder.loss_advantages(), expected, rtol=1e-5, atol=1e-6)


def sequence_logprobs(model, rows: list[dict]) -> torch.Tensor:
    """Sum of log p(completion token) per row, the rows as they entered TRL's loss."""
    totals = []
    with torch.no_grad():
        for inputs in rows:
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            width = inputs["completion_ids"].shape[1]
            totals.append((logp[:, -width:] * inputs["completion_mask"]).sum(dim=1))
    return torch.cat(totals)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_constant_advantage_moves_the_sampled_completions_log_probability(
    model_path, tmp_path, monkeypatch, sign
):
    recorder = Recorder(monkeypatch)
    config = GRPOFamilyConfig(
        **{k: v for k, v in TINY.items() if k not in ("n_harmful", "n_harmless")}
    )
    from datasets import Dataset

    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": text}], "prompt_index": i}
            for i, text in enumerate(["Name a colour.", "Name a fruit."])
        ]
    )
    trained = run_grpo(
        model_path,
        dataset,
        [lambda completions, **_: [0.0] * len(completions)],
        lambda rewards, group: torch.full_like(rewards, sign),
        config,
        tmp_path,
        0,
    )
    before = sequence_logprobs(load_model(model_path).eval(), recorder.loss_inputs)
    after = sequence_logprobs(load_model(str(trained)).eval(), recorder.loss_inputs)
    assert torch.equal(recorder.loss_advantages(), torch.full((8,), sign, dtype=torch.double))
    change = after - before
    # Every sampled completion moves the advantage's way (one Adam step of lr 1e-5).
    assert (sign * change > 0).all(), change
