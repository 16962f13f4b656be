"""Training settings reach TRL as configured."""

import pytest


@pytest.mark.parametrize("setting", [True, False])
def test_gradient_checkpointing_is_a_setting_trl_receives(tmp_path, setting):
    from trl import GRPOConfig, SFTConfig

    from forgetbench.training.common import OptimConfig, trainer_args

    args = trainer_args(OptimConfig(gradient_checkpointing=setting), tmp_path, seed=0)
    assert SFTConfig(**args).gradient_checkpointing is setting
    assert GRPOConfig(**args).gradient_checkpointing is setting


def _three_sft_steps(tiny_model, tmp_path, setting: str):
    """Three SFT steps on four pairs with ``setting`` true and false: ({value: weights}, the
    weights they started from)."""
    from safetensors.torch import load_file

    from forgetbench.training.sft import SFTSettings, run_sft

    pairs = [
        ("How do I pick a lock?", "I can't help with that."),
        ("Name a primary colour.", "Red is a primary colour."),
        ("Explain how to make a weapon.", "I'm sorry, but I can't help with that request."),
        ("What is 2 + 2?", "2 + 2 is 4."),
    ]
    weights = {}
    for value in (True, False):
        config = SFTSettings(
            max_steps=3, batch_size=2, max_length=64, learning_rate=1e-4, **{setting: value}
        )
        out = run_sft(str(tiny_model), pairs, config, tmp_path / str(value), seed=0)
        weights[value] = load_file(out / "model.safetensors")
    return weights, load_file(tiny_model / "model.safetensors")


def test_gradient_checkpointing_changes_no_weight(tmp_path, tiny_model):
    """Recomputing activations in the backward pass gives the same gradients: three SFT steps on
    a Llama (the embedded model's architecture and tokenizer, a few random layers: the property
    is of the arithmetic, not of the weights) with and without it end on bit-identical weights.
    (Why the setting is left out of stage keys: a stage trained either way is the same stage.)"""
    import torch

    weights, start = _three_sft_steps(tiny_model, tmp_path, "gradient_checkpointing")
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(weights[True][name], start[name])  # it trained: a test that can fail
    for name, tensor in weights[True].items():
        assert torch.equal(tensor, weights[False][name]), name


def test_report_to_tensorboard_writes_events_named_after_the_stage(tmp_path, tiny_model):
    """report_to reaches TRL: a 2-step SFT (on the tests' tiny Llama: plumbing) writes
    TensorBoard event files with the training loss at each step, in a run named after the stage
    (label and key)."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from forgetbench.training.sft import SFTSettings, run_sft

    stage = tmp_path / ".tmp-attack-0123abcd4567-99"  # how the runner names a computing stage
    stage.mkdir()
    (stage / "request.json").write_text(json.dumps({"kind": "attack", "label": "attack alpaca"}))
    pairs = [("Name a primary colour.", "Red."), ("What is 2 + 2?", "4.")]
    config = SFTSettings(
        max_steps=2,
        batch_size=2,
        max_length=128,
        report_to=["tensorboard"],
        gradient_checkpointing=False,
    )
    run_sft(str(tiny_model), pairs, config, stage, seed=0)
    events = list((stage / "trainer" / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    assert [event.step for event in accumulator.Scalars("train/loss")] == [1, 2]
    assert b"attack-alpaca-0123abcd4567" in events[0].read_bytes()  # the run name, in the args


def test_no_tracker_by_default(tmp_path):
    from forgetbench.training.common import OptimConfig, stage_run_name, trainer_args

    args = trainer_args(OptimConfig(), tmp_path / ".tmp-train-00ff-12", seed=0)
    assert args["report_to"] == []
    assert stage_run_name(tmp_path / "somewhere") == "somewhere"  # outside a stage


@pytest.mark.parametrize(
    "shares, warned",
    [([1.0, 1.0, 1.0], True), ([1.0, 0.5, 1.0], False), ([], False)],
)
def test_a_run_whose_every_group_had_one_reward_says_it_learned_nothing(capsys, shares, warned):
    """The tiny math run: math_boxed scored 0 for every completion, FRPO's loss was 0 at every
    step and the stage reported a plain success. Now its log says why nothing was learned."""
    from forgetbench.training.common import _warn_if_nothing_was_learned

    history = [
        {"step": i + 1, "loss": 0.0, "frac_reward_zero_std": s} for i, s in enumerate(shares)
    ]
    _warn_if_nothing_was_learned(history + [{"train_runtime": 1.0}])
    err = capsys.readouterr().err
    assert ("every advantage was 0" in err) is warned, err
    if warned:
        assert f"all {len(shares)} logged steps" in err


def _fused_and_own(tiny_model, temperature=1.0, outputs=("log_probs", "entropy", "is_top1")):
    """The tiny model twice with TRL's fused head as its trainers install it (SFT's outputs, or
    GRPO's at its sampling temperature), one of them answering it through the model's own head;
    and a batch of two right-padded rows whose labels skip the prompt and the padding, the first
    row labelled with the model's own greedy picks (top-1 hits)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from forgetbench.training.lm_head import own_lm_head

    models = []
    for own in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        add_fused_lm_head(model, temperature=temperature, outputs=outputs)
        if own:
            assert own_lm_head(model, temperature)
        models.append(model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, models[0].config.vocab_size, (2, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    greedy = models[0].generate(
        ids[:1, :6],
        attention_mask=mask[:1, :6],
        max_new_tokens=18,
        min_new_tokens=18,
        do_sample=False,
    )
    ids[0] = greedy[0]
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100  # the prompt
    return models, dict(input_ids=ids, attention_mask=mask, labels=labels)


def test_the_own_head_gives_trls_fused_outputs_and_gradients(tiny_model):
    """What SFTTrainer reads from TRL's chunked head (trl.trainer.utils.add_fused_lm_head: the
    loss, per-token log-probabilities, entropy, top-1 hits, the label mask) and the gradients of
    the loss agree to float rounding when the model's own head computes them
    (`fused_lm_head: false`, why the setting is left out of stage keys)."""
    import torch

    (fused, own), batch = _fused_and_own(tiny_model)
    outputs = [model(**batch, fused_lm_head=True, num_items_in_batch=20) for model in (fused, own)]
    assert torch.equal(outputs[0].label_mask, outputs[1].label_mask)
    assert outputs[0].label_mask.sum() == 18 + 11
    hits = outputs[0].is_top1
    assert hits[0].sum() >= 12 and torch.equal(hits, outputs[1].is_top1)  # a test that can fail
    for name, atol in (("log_probs", 1e-5), ("entropy", 1e-4), ("loss", 1e-5)):
        torch.testing.assert_close(
            getattr(outputs[1], name), getattr(outputs[0], name), atol=atol, rtol=1e-6
        )
    assert outputs[0].loss.item() == pytest.approx(-outputs[0].log_probs.sum().item() / 20)
    for output in outputs:
        output.loss.backward()
    for (name, a), b in zip(fused.named_parameters(), own.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4, msg=name)
    # without the flag, the model's own forward: the same logits as a model never patched
    plain = own(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(
        plain, fused(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    )


def test_the_own_head_gives_grpos_tempered_log_probs_and_entropy_gradient(tiny_model):
    """GRPO's call (TRL's GRPOTrainer: the sampling temperature divides the logits; the entropy
    bonus differentiates the entropy): the own head's log-probabilities, entropy and the
    gradients of a loss built from both agree with TRL's kernel to float rounding."""
    import torch

    (fused, own), batch = _fused_and_own(tiny_model, 0.7, outputs=("log_probs", "entropy"))
    outputs = [model(**batch, fused_lm_head=True) for model in (fused, own)]
    for name in ("log_probs", "entropy"):
        torch.testing.assert_close(
            getattr(outputs[1], name), getattr(outputs[0], name), atol=1e-4, rtol=1e-6
        )
    # the temperature reaches the head: at 1.0 the log-probabilities are others
    (_, untempered), _ = _fused_and_own(tiny_model, 1.0, outputs=("log_probs", "entropy"))
    other = untempered(**batch, fused_lm_head=True).log_probs
    assert (other - outputs[1].log_probs).abs().max() > 1e-3
    for output in outputs:
        (output.log_probs.sum() + 3.0 * output.entropy.sum()).backward()
    for (name, a), b in zip(fused.named_parameters(), own.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert own.model.embed_tokens.weight.grad.abs().max() > 0  # the entropy term has a gradient


def test_grpo_through_the_own_head_ends_where_the_fused_head_does(
    tmp_path, tiny_model, monkeypatch
):
    """Two GRPO steps (TRL's own trainer and loss, an entropy bonus, temperature 0.7) with
    `fused_lm_head` true and false sample the same completions (generation never crosses the
    head) and end on the same weights to float rounding, after moving them."""
    import torch
    from safetensors.torch import load_file

    from forgetbench.advantages import frpo_advantages
    from forgetbench.training import lm_head
    from forgetbench.training.grpo import GRPOFamilyConfig, run_grpo
    from test_method_training import _dataset

    def longer_is_better(prompts, completions, **_):
        return [float(len(str(completion))) for completion in completions]

    replaced, own_lm_head = [], lm_head.own_lm_head
    monkeypatch.setattr(
        lm_head,
        "own_lm_head",
        lambda model, t: replaced.append((type(model).__name__, t)) or own_lm_head(model, t),
    )
    weights = {}
    for fused in (True, False):
        config = GRPOFamilyConfig(
            max_steps=2,
            num_generations=4,
            prompts_per_step=2,
            max_completion_length=8,
            temperature=0.7,
            learning_rate=1e-4,
            fused_lm_head=fused,
        )
        out = run_grpo(
            str(tiny_model),
            _dataset(),
            [longer_is_better],
            lambda r, g: frpo_advantages(r, g, lam=0.5),
            config,
            tmp_path / str(fused),
            0,
            args_kwargs={"entropy_coef": 0.01},
        )
        weights[fused] = load_file(out / "model.safetensors")
    # the policy's head only (beta = 0: no reference model), at the sampling temperature
    assert replaced == [("LlamaForCausalLM", 0.7)]
    start = load_file(tiny_model / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert (weights[True][name] - start[name]).abs().max() > 1e-5  # it trained
    for name, tensor in weights[True].items():
        torch.testing.assert_close(weights[False][name], tensor, atol=5e-6, rtol=0, msg=name)


def test_sft_through_the_own_head_ends_where_the_fused_head_does(tmp_path, tiny_model):
    """Three SFT steps with `fused_lm_head` true and false (TRL's own trainer, loss and logging)
    end on the same weights to float rounding (Adam's step divides by the gradient's size, so
    rounding in a small gradient shows more than in the loss), after moving them."""
    import torch

    weights, start = _three_sft_steps(tiny_model, tmp_path, "fused_lm_head")
    name = "model.layers.0.mlp.down_proj.weight"
    assert (weights[True][name] - start[name]).abs().max() > 1e-5  # it trained
    for name, tensor in weights[True].items():
        # Adam moves each weight by about the learning rate a step (2e-4 after these three); the
        # two heads' weights agree to a fortieth of that
        torch.testing.assert_close(weights[False][name], tensor, atol=5e-6, rtol=0, msg=name)
