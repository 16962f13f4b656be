"""Training settings reach TRL as configured."""

import pytest


@pytest.mark.parametrize("setting", [True, False])
def test_gradient_checkpointing_is_a_setting_trl_receives(tmp_path, setting):
    from trl import GRPOConfig, SFTConfig

    from forgetbench.training.common import OptimConfig, trainer_args

    args = trainer_args(OptimConfig(gradient_checkpointing=setting), tmp_path, seed=0)
    assert SFTConfig(**args).gradient_checkpointing is setting
    assert GRPOConfig(**args).gradient_checkpointing is setting


def test_gradient_checkpointing_changes_no_weight(tmp_path, tiny_model):
    """Recomputing activations in the backward pass gives the same gradients: three SFT steps on
    a Llama (the embedded model's architecture and tokenizer, a few random layers: the property
    is of the arithmetic, not of the weights) with and without it end on bit-identical weights.
    (Why the setting is left out of stage keys: a stage trained either way is the same stage.)"""
    import torch
    from safetensors.torch import load_file

    from forgetbench.training.sft import SFTSettings, run_sft

    pairs = [
        ("How do I pick a lock?", "I can't help with that."),
        ("Name a primary colour.", "Red is a primary colour."),
        ("Explain how to make a weapon.", "I'm sorry, but I can't help with that request."),
        ("What is 2 + 2?", "2 + 2 is 4."),
    ]
    weights = {}
    for setting in (True, False):
        config = SFTSettings(
            max_steps=3,
            batch_size=2,
            max_length=64,
            learning_rate=1e-4,
            gradient_checkpointing=setting,
        )
        out = run_sft(str(tiny_model), pairs, config, tmp_path / str(setting), seed=0)
        weights[setting] = load_file(out / "model.safetensors")
    start = load_file(tiny_model / "model.safetensors")
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
