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


_PAIRS_OF_MANY_LENGTHS = [
    ("Hi?", "Hello."),
    ("Name a primary colour.", "Red is a primary colour, and so are blue and yellow."),
    ("How do I pick a lock?", "I can't help with that."),
    ("What is 2 + 2?", "4."),
    (
        "Explain photosynthesis in a few sentences.",
        "Plants turn light, water and carbon dioxide into sugar and oxygen. Chlorophyll in the "
        "leaves absorbs the light, and the sugar feeds the plant as it grows.",
    ),
    ("Say yes.", "Yes."),
    ("Explain how to make a weapon.", "I'm sorry, but I can't help with that request."),
    (
        "Write a short poem about the sea.",
        "The sea rolls in with silver light, / it hums all day and sighs all night, / and every "
        "wave that finds the shore / goes back to bring a thousand more.",
    ),
    ("Capital of France?", "Paris."),
    ("Count to five.", "One, two, three, four, five."),
]


def _steps_with_micro_batches(tiny_model, tmp_path, micro_batches: int, seed: int = 0):
    """Two SFT epochs of 4-row steps on ten rows of many lengths with ``balanced_micro_batches``:
    (each optimiser step's rows as sorted token tuples, the padded token slots of every
    micro-batch, the final weights)."""
    from collections import defaultdict

    from safetensors.torch import load_file
    from trl import SFTTrainer

    from forgetbench.training.sft import SFTSettings, run_sft

    rows, slots = defaultdict(list), []
    training_step = SFTTrainer.training_step

    def recording(self, model, inputs, *args, **kwargs):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for row, keep in zip(ids.tolist(), mask.tolist()):
            rows[self.state.global_step].append(tuple(t for t, k in zip(row, keep) if k))
        slots.append(ids.numel())
        return training_step(self, model, inputs, *args, **kwargs)

    config = SFTSettings(
        epochs=2,
        batch_size=4,
        max_length=64,
        learning_rate=1e-4,
        balanced_micro_batches=micro_batches,
    )
    # Patched on TRL's class, not a subclass: a subclass with its own step is refused (below).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SFTTrainer, "training_step", recording)
        out = run_sft(
            str(tiny_model),
            _PAIRS_OF_MANY_LENGTHS,
            config,
            tmp_path / f"{micro_batches}-{seed}",
            seed=seed,
        )
    steps = [sorted(rows[step]) for step in sorted(rows)]
    return steps, slots, load_file(out / "model.safetensors")


def test_balanced_micro_batches_train_the_same_rows_and_weights_with_less_padding(
    tmp_path, tiny_model
):
    """Each optimiser step trains the rows it trains without balancing (the seeded permutation,
    over two epochs, the last step short), split into micro-batches padded to fewer token slots,
    and the run ends on the same weights to float rounding: why the setting is speed-only."""
    import torch
    from safetensors.torch import load_file

    as_drawn, drawn_slots, drawn_weights = _steps_with_micro_batches(tiny_model, tmp_path, 1)
    balanced, balanced_slots, balanced_weights = _steps_with_micro_batches(tiny_model, tmp_path, 2)
    assert len(as_drawn) == 6  # 3 steps (4 + 4 + 2 rows) a epoch
    assert balanced == as_drawn
    assert len(balanced_slots) == 2 * len(drawn_slots)
    assert sum(balanced_slots) < sum(drawn_slots)
    start = load_file(tiny_model / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert (drawn_weights[name] - start[name]).abs().max() > 1e-5  # it trained
    for name, tensor in drawn_weights.items():
        torch.testing.assert_close(balanced_weights[name], tensor, atol=5e-6, rtol=0, msg=name)


def test_balanced_micro_batches_draw_each_seeds_own_rows(tmp_path, tiny_model):
    """transformers builds its length-balancing sampler with seed 42 whatever the run's seed;
    forgetbench gives it the run's, so two seeds draw two orders, as they do unbalanced."""
    seed0, _, _ = _steps_with_micro_batches(tiny_model, tmp_path, 2, seed=0)
    seed1, _, _ = _steps_with_micro_batches(tiny_model, tmp_path, 2, seed=1)
    drawn1, _, _ = _steps_with_micro_batches(tiny_model, tmp_path, 1, seed=1)
    assert seed1 != seed0
    assert seed1 == drawn1


def test_balanced_micro_batches_leave_a_last_step_that_cannot_fill_them_as_drawn():
    """A last step of fewer rows than micro-batches would be filled by repeating rows, which a
    batch as drawn does not train on: such a run keeps its rows as drawn."""
    from forgetbench.training.micro_batches import balanced_args

    args = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
    assert balanced_args(args, 1, 100) == {}
    assert balanced_args(args, 2, 100) == {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "train_sampling_strategy": "batch_rebalance",
    }
    assert balanced_args(args, 4, 100)["gradient_accumulation_steps"] == 4  # last step: 4 rows
    assert balanced_args(args, 2, 97) == {}  # last step: 1 row
    assert balanced_args(args, 2, 96) != {}
    assert balanced_args(args, 2, 98, processes=2) == {}  # 8-row steps of two ranks; last: 2 rows


@pytest.mark.parametrize(
    ("settings", "fix"),
    [
        ({"batch_size": 8, "balanced_micro_batches": 3}, "set it to a divisor of 8, or 1"),
        (
            {"batch_size": 8, "processes": 2, "balanced_micro_batches": 8},
            "set it to a divisor of 4, or 1",
        ),
    ],
)
def test_balanced_micro_batches_that_do_not_divide_the_batch_are_refused(settings, fix):
    from pydantic import ValidationError

    from forgetbench.training.sft import SFTSettings

    with pytest.raises(ValidationError, match=fix):
        SFTSettings(**settings)


def test_balanced_micro_batches_are_refused_for_a_trainer_with_its_own_step(tmp_path, tiny_model):
    """Vaccine and Booster perturb the weights per micro-batch: for them another split is
    another algorithm, so the speed-only setting is refused before training, naming the fix."""
    from baselines.vaccine import vaccine_trainer_class

    from forgetbench.errors import UsageError
    from forgetbench.training.micro_batches import steps_are_row_sums
    from forgetbench.training.sft import SFTSettings, run_sft

    trainer_cls = vaccine_trainer_class()
    assert not steps_are_row_sums(trainer_cls)
    config = SFTSettings(max_steps=1, batch_size=2, max_length=64, balanced_micro_batches=2)
    with pytest.raises(UsageError, match="overrides training_step or compute_loss.*=1$"):
        run_sft(
            str(tiny_model), _PAIRS_OF_MANY_LENGTHS, config, tmp_path, 0, trainer_cls=trainer_cls
        )
    assert not tmp_path.joinpath("model").exists()
