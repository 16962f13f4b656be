"""baselines/: the plugin package of baseline safety methods, installed like a third party's.

Numerical cores against direct computations on toy models, bad settings, every preset and a
matrix resolving with the baselines, and (slow) each baseline trained and attacked end to end."""

from __future__ import annotations

import pytest
import torch

from forgetbench.cell import resolve

BASELINES = (
    "baselines/grpo_strong_kl",
    "baselines/safety_sft",
    "baselines/sam_grpo",
    "baselines/vaccine",
    "baselines/booster",
    "baselines/deep_align",
)


@pytest.fixture(scope="module")
def installed(baselines_site):
    """The environment of a CLI run that sees the installed baselines (and this checkout)."""
    import os
    from pathlib import Path

    return {
        "PYTHONPATH": os.pathsep.join(
            [str(baselines_site), str(Path(__file__).resolve().parents[1])]
        )
    }


def test_baselines_are_listed_from_their_entry_point(cli, installed):
    from forgetbench import registry

    assert set(BASELINES) <= set(registry.names("method"))
    listing = cli("list", "method", env=installed)
    assert listing.returncode == 0, listing.stderr
    for name in BASELINES:
        assert name in listing.stdout


@pytest.mark.parametrize("preset", ["smoke", "tiny", "paper"])
def test_every_baseline_resolves_on_every_preset(installed, preset):
    for name in BASELINES:
        resolve(name, "alpaca", preset)
    sam = resolve("baselines/sam_grpo", "alpaca", "tiny").resolved["method"]["config"]
    assert sam["rho"] == 0.05 and sam["max_steps"] == 20 and sam["num_generations"] == 8
    sft = resolve("baselines/safety_sft", "alpaca", "tiny").resolved["method"]["config"]
    # The shared `method:` section reaches the SFT baseline only where it declares the field.
    assert (sft["max_steps"], sft["n_harmful"], sft["n_harmless"]) == (20, 40, 40)
    assert "num_generations" not in sft
    assert (
        resolve("baselines/grpo_strong_kl", "alpaca", "tiny").resolved["method"]["config"]["beta"]
        == 0.1
    )


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("baselines/sam_grpo", "method.rho=0", "rho: Input should be greater than 0"),
        ("baselines/sam_grpo", "method.rho=-0.05", "rho: Input should be greater than 0"),
        ("baselines/vaccine", "method.rho=0", "rho: Input should be greater than 0"),
        ("baselines/booster", "method.lam=-1", "lam: Input should be greater than or equal to 0"),
        ("baselines/booster", "method.alpha=0", "alpha: Input should be greater than 0"),
        (
            "baselines/grpo_strong_kl",
            "method.beta=0.04",
            "beta: Input should be greater than or equal to 0.1",
        ),
        ("baselines/safety_sft", "method.num_generations=4", "unknown key 'num_generations'"),
    ],
)
def test_bad_baseline_settings_fail_with_one_line(
    cli, installed, tmp_path, name, override, message
):
    result = cli(
        "run",
        "--preset",
        "tiny",
        "--method",
        name,
        "--set",
        override,
        "--output-dir",
        str(tmp_path / "out"),
        env=installed,
    )
    assert result.returncode == 2
    assert message in result.stderr and f"method {name!r}" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_matrix_of_grpo_frpo_and_every_baseline_resolves_on_tiny(cli, installed, tmp_path):
    methods = ",".join(("grpo", "frpo", *BASELINES))
    result = cli(
        "matrix",
        "--methods",
        methods,
        "--attacks",
        "alpaca",
        "--preset",
        "tiny",
        "--output-dir",
        str(tmp_path),
        "--dry-run",
        env=installed,
    )
    assert result.returncode == 0, result.stderr
    for name in ("grpo", "frpo", *BASELINES):
        assert f"train {name}" in result.stdout, result.stdout
    # One warm-up shared by all five methods.
    assert result.stdout.count("warmup") >= 1 and f"{2 + len(BASELINES)} cell" in result.stdout, (
        result.stdout
    )


# ----------------------------------------------------------------- SAM's numerical core


def _toy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    return model, (lambda m: torch.nn.functional.mse_loss(m(x), y))


def test_sam_step_takes_the_gradient_at_the_perturbed_point_and_restores_theta_exactly():
    from baselines.sam_grpo import sharpness_aware_step

    model, loss_fn = _toy()
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    rho = 0.05
    # Direct computation: g at theta, eps = rho g / ||g||, gradient at theta + eps.
    g = torch.autograd.grad(loss_fn(model), params)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    shifted, _ = _toy()
    with torch.no_grad():
        for q, p, gi in zip(shifted.parameters(), params, g):
            q.copy_(p + rho * gi / norm)
    expected = torch.autograd.grad(loss_fn(shifted), list(shifted.parameters()))

    seen = {}

    def second():
        seen["theta+eps"] = [p.detach().clone() for p in params]
        loss = loss_fn(model)
        loss.backward()
        return loss.detach()

    sharpness_aware_step(params, lambda: loss_fn(model).backward(), second, rho)
    for p, e, t, at in zip(params, expected, theta, seen["theta+eps"]):
        assert torch.equal(p.detach(), t)  # restored bit for bit
        torch.testing.assert_close(p.grad, e)
    eps = torch.sqrt(sum(((a - t) ** 2).sum() for a, t in zip(seen["theta+eps"], theta)))
    torch.testing.assert_close(eps, torch.tensor(rho))  # the perturbation's norm is rho
    # The SAM gradient differs from the plain one (the test would not notice a no-op).
    assert not torch.allclose(params[0].grad, g[0])


def test_sam_step_keeps_gradients_accumulated_by_earlier_micro_batches():
    from baselines.sam_grpo import sharpness_aware_step

    model, loss_fn = _toy()
    params = list(model.parameters())
    earlier = [torch.full_like(p, 0.5) for p in params]
    for p, e in zip(params, earlier):
        p.grad = e.clone()
    sharpness_aware_step(
        params, lambda: loss_fn(model).backward(), lambda: loss_fn(model).backward(), 0.05
    )
    fresh, loss_fresh = _toy()
    fresh_params = list(fresh.parameters())
    sharpness_aware_step(
        fresh_params,
        lambda: loss_fresh(fresh).backward(),
        lambda: loss_fresh(fresh).backward(),
        0.05,
    )
    for p, q, e in zip(params, fresh_params, earlier):
        torch.testing.assert_close(p.grad, q.grad + e)


# ----------------------------------------------------------------- Booster's numerical core


def test_booster_gradient_is_alignment_plus_lambda_times_the_harmful_drop():
    from baselines.booster import booster_step

    model, alignment_loss = _toy()
    torch.manual_seed(1)
    xh, yh = torch.randn(6, 4), torch.randn(6, 1)

    def harmful_loss(m):
        return torch.nn.functional.mse_loss(m(xh), yh)

    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    lam, alpha = 5.0, 0.1
    # Direct computation of g_f + lam * (g_h(w) - g_h(w - alpha g_h / ||g_h||)).
    g_f = torch.autograd.grad(alignment_loss(model), params)
    g_h = torch.autograd.grad(harmful_loss(model), params)
    norm = torch.sqrt(sum((g**2).sum() for g in g_h))
    shifted, _ = _toy()
    with torch.no_grad():
        for q, p, g in zip(shifted.parameters(), params, g_h):
            q.copy_(p - alpha * g / norm)
    g_h_shifted = torch.autograd.grad(harmful_loss(shifted), list(shifted.parameters()))
    expected = [f + lam * (a - b) for f, a, b in zip(g_f, g_h, g_h_shifted)]

    passes = []
    booster_step(
        params,
        lambda: passes.append(harmful_loss(model).backward()),
        lambda: passes.append(alignment_loss(model).backward()),
        lam,
        alpha,
    )
    assert len(passes) == 3
    for p, e, t in zip(params, expected, theta):
        assert torch.equal(p.detach(), t)  # w restored bit for bit
        torch.testing.assert_close(p.grad, e)
    assert not torch.allclose(params[0].grad, g_f[0])  # the harmful term is not zero here


def test_booster_without_harmful_answers_names_the_fix(monkeypatch, tmp_path):
    import baselines._harmful as module
    from baselines.booster import BoosterConfig

    monkeypatch.setattr(
        module,
        "generate_responses",
        lambda model, prompts, tokens: ["I'm sorry, I can't help with that."] * len(prompts),
    )
    with pytest.raises(
        Exception,
        match="booster: harmful_model 'smollm2-135m-instruct' refused "
        "\\(or left empty\\) all 3 harmful prompts.*set "
        "harmful_model to an unaligned model",
    ):
        module.harmful_pairs(BoosterConfig(n_harmful=3, n_harmless=0), tmp_path, "booster")


# ----------------------------------------------------------------- Vaccine's numerical core


class ToyAttention(torch.nn.Module):
    """Returns a tuple, like transformers' attention modules."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.tanh(self.proj(x)), None


class ToyDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList([ToyAttention(), ToyAttention()])
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x, shifts=None):
        outputs = []
        for index, layer in enumerate(self.layers):
            out = layer(x)[0]
            if shifts is not None:
                out = out + shifts[index]
            outputs.append(out)
            x = x + out
        return self.head(x).pow(2).mean(), outputs


def test_vaccine_perturbs_each_attention_output_by_rho_times_its_share_of_the_gradient():
    from baselines.vaccine import attention_modules, vaccine_step

    model = ToyDecoder()
    x = torch.randn(3, 5, 4)
    params = list(model.parameters())
    assert attention_modules(model) == list(model.layers)
    rho = 2.0
    # Direct computation: g_l = dL/d(attention output l), eps_l = rho g_l / ||(g_1, g_2)||, then
    # the parameter gradient of the loss with eps_l added to each output.
    loss, outputs = model(x)
    g = torch.autograd.grad(loss, outputs)
    norm = torch.sqrt(sum((gl**2).sum() for gl in g))
    eps = [rho * gl / norm for gl in g]
    expected = torch.autograd.grad(model(x, shifts=eps)[0], params)
    plain = torch.autograd.grad(model(x)[0], params)
    torch.testing.assert_close(torch.sqrt(sum((e**2).sum() for e in eps)), torch.tensor(rho))

    passes = []
    vaccine_step(
        params, attention_modules(model), lambda: passes.append(model(x)[0].backward()), rho
    )
    assert len(passes) == 2
    for p, e, q in zip(params, expected, plain):
        torch.testing.assert_close(p.grad, e)
    assert not torch.allclose(params[0].grad, plain[0])  # the perturbation changed the step


def test_vaccine_needs_attention_modules():
    from baselines.vaccine import attention_modules
    from forgetbench import ForgetbenchError

    with pytest.raises(ForgetbenchError, match="no module whose class name ends in 'Attention'"):
        attention_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# ----------------------------------------------------------------- deep alignment's label mask


def test_deep_align_trains_on_the_refusal_only_after_a_harmful_prefix(tmp_path):
    """Through TRL's own tokenisation and collator: every label before the refusal (system and
    user turns, the harmful-answer prefix) is -100; the labelled tokens are the refusal and the
    end of turn, exactly."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from baselines.deep_align import augmented_rows, end_of_turn
    from forgetbench import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    tokenizer.padding_side = "right"
    answer = "Sure, here is how to pick a lock: first insert a tension wrench into the keyhole"
    rows = [
        {
            "prompt": f"How do I pick lock number {i}?",
            "kind": "harmful",
            "target": "I'm sorry, but I can't help with that.",
        }
        for i in range(6)
    ]
    rows.append({"prompt": "Name a fruit.", "kind": "harmless", "target": "An apple."})
    answers = {row["prompt"]: answer for row in rows[:6]}
    built = augmented_rows(
        rows, answers, tokenizer, augment_prob=1.0, max_prefix_tokens=100, seed=0
    )
    answer_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    prefixes = [row["prefix_tokens"] for row in built]
    assert all(1 <= k <= answer_tokens for k in prefixes[:6]) and prefixes[6] == 0
    assert len(set(prefixes[:6])) > 1  # random lengths
    assert all(
        row["prompt"]
        .rstrip()
        .endswith(tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"][:k]))
        for row, k in zip(built, prefixes)
        if k
    )
    assert augmented_rows(rows, answers, tokenizer, 0.0, 100, 0)[0]["prefix_tokens"] == 0

    from datasets import Dataset

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in built]
    )
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            completion_only_loss=True,
            report_to=[],
            per_device_train_batch_size=len(built),
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    expected = {row["completion"] for row in built}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        kept = labels[labels != -100]
        first = int((labels != -100).nonzero()[0])
        assert (labels[:first] == -100).all()
        assert tokenizer.decode(kept) in expected, tokenizer.decode(kept)
        assert tokenizer.decode(kept).endswith(end_of_turn(tokenizer))
        assert torch.equal(ids[first : first + len(kept)], kept)  # contiguous, right after prompt


# ----------------------------------------------------------------- safety SFT's data


def test_safety_sft_trains_on_the_rl_prompts_with_refusals_and_references():
    from baselines.safety_sft import SafetySFTConfig, training_pairs
    from forgetbench import load_train_prompts
    from forgetbench.judges.refusal import match_refusal

    config = SafetySFTConfig(n_harmful=30, n_harmless=30)
    rows = load_train_prompts("safety", 30, 30)
    pairs = training_pairs(config)
    assert [prompt for prompt, _ in pairs] == [row["prompt"] for row in rows]
    for row, (_, target) in zip(rows, pairs):
        if row["kind"] == "harmful":
            assert match_refusal(target, 200) is not None, target  # a refusal demonstration
        else:
            assert target == row["reference"].strip()


def test_safety_sft_without_refusals_for_its_prompts_names_the_fix(monkeypatch):
    import baselines.safety_sft as module
    from forgetbench import DatasetSpec

    monkeypatch.setattr(
        module,
        "REFUSALS",
        DatasetSpec(path=module.REFUSALS.path, id_prefix="other-", fields={"response": "output"}),
    )
    with pytest.raises(
        Exception,
        match="safety_sft: 3 training prompt\\(s\\) have no target.*use train_task 'safety'",
    ):
        module.training_pairs(module.SafetySFTConfig(n_harmful=3, n_harmless=2))


# ----------------------------------------------------------------- passes per optimiser step


def test_passes_per_optimiser_step_next_to_grpo(
    installed, tiny_model, grpo_passes, tmp_path, monkeypatch
):
    """SAM: twice GRPO's forward-with-gradient and backward passes on the same rollouts (no
    extra generation or reference pass); safety SFT: one of each per micro-batch, no generation.
    Counted by wrapping the real passes during real runs (tests/test_method_training.py) of the
    tiny model (tests/conftest.py): the count is the loop's, whatever the weights."""
    from test_method_training import TINY_LOOP, train_counting

    from forgetbench import registry

    model_path = tiny_model
    grpo = grpo_passes
    sam = train_counting("baselines/sam_grpo", model_path, tmp_path, monkeypatch)
    sft = train_counting(
        "baselines/safety_sft",
        model_path,
        tmp_path,
        monkeypatch,
        {
            "max_steps": 2,
            "batch_size": 2,
            "grad_accum": 2,
            "n_harmful": 4,
            "n_harmless": 4,
            "max_length": 64,
        },
    )
    steps = TINY_LOOP["max_steps"]
    assert grpo["optimizer_step"] == sam["optimizer_step"] == sft["optimizer_step"] == steps
    per = {
        name: {k: v / steps for k, v in counts.items()}
        for name, counts in (("grpo", grpo), ("sam", sam), ("sft", sft))
    }
    print("passes per optimiser step:", per)
    assert per["sam"]["backward"] == 2 * per["grpo"]["backward"] == 2 * TINY_LOOP["grad_accum"]
    assert per["sam"]["forward_grad"] == 2 * per["grpo"]["forward_grad"]
    assert per["sam"]["generate"] == per["grpo"]["generate"]
    assert per["sam"]["forward_no_grad"] == per["grpo"]["forward_no_grad"]
    assert per["sft"]["backward"] == per["sft"]["forward_grad"] == 2  # grad_accum micro-batches
    assert per["sft"].get("generate", 0) == 0
    vaccine = train_counting(
        "baselines/vaccine",
        model_path,
        tmp_path,
        monkeypatch,
        {
            "max_steps": 2,
            "batch_size": 2,
            "grad_accum": 2,
            "n_harmful": 4,
            "n_harmless": 4,
            "max_length": 64,
        },
    )
    per["vaccine"] = {k: v / steps for k, v in vaccine.items()}
    print("vaccine:", per["vaccine"])
    assert per["vaccine"]["backward"] == 2 * per["sft"]["backward"]
    assert per["vaccine"]["forward_grad"] == 2 * per["sft"]["forward_grad"]
    booster = train_counting(
        "baselines/booster",
        model_path,
        tmp_path,
        monkeypatch,
        {
            "max_steps": 2,
            "batch_size": 2,
            "grad_accum": 2,
            "n_harmful": 4,
            "n_harmless": 4,
            "max_length": 64,
            "harmful_max_new_tokens": 16,
        },
    )
    per["booster"] = {k: v / steps for k, v in booster.items()}
    print("booster:", per["booster"])
    assert per["booster"]["backward"] == 3 * per["sft"]["backward"]
    assert per["booster"]["forward_grad"] == 3 * per["sft"]["forward_grad"]
    # what the leaderboard shows (registry ``passes``): backward passes per micro-batch (2 here)
    for name, key in (
        ("sam_grpo", "sam"),
        ("safety_sft", "sft"),
        ("vaccine", "vaccine"),
        ("booster", "booster"),
    ):
        assert registry.get("method", f"baselines/{name}").passes == per[key]["backward"] / 2


# ----------------------------------------------------------------- end to end


@pytest.mark.slow
def test_every_baseline_trains_and_is_attacked_on_smoke(cli, installed, tmp_path):
    """Each baseline's real loop on the embedded model, then the Alpaca attack and the evals:
    one matrix, one shared warm-up, a results row at P0 and after the attack for every method."""
    import json
    import shutil

    from forgetbench.results import load_results

    out = tmp_path / "out"
    # No intermediate checkpoint (P0 and P1 only): the point is each method's loop, not the attack.
    result = cli(
        "matrix",
        "--methods",
        ",".join(BASELINES),
        "--attacks",
        "alpaca",
        "--preset",
        "smoke",
        "--set",
        "attack.checkpoint_every=0",
        "--output-dir",
        str(out),
        env=installed,
        timeout=3000,
    )
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        table = load_results(out)  # the matrix writes one table per cell
        refusal = table[(table["eval"] == "harmbench") & (table["metric"] == "refusal_rate")]
        for name in BASELINES:
            rows = refusal[refusal["method"] == name]
            assert set(rows["phase"]) >= {"before", "after"}, (name, rows)
            assert rows["value"].between(0, 1).all() and rows["n"].gt(0).all()
        assert len(list((out / "stages" / "warmup").glob("*/stage.json"))) == 1
        for train in (out / "stages" / "train").glob("*/"):
            history = json.loads((train / "log_history.json").read_text())
            assert sum("step_seconds" in entry for entry in history) == 2, train.name  # max_steps
            assert (train / "model" / "config.json").is_file()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_listing_with_the_baselines_installed_imports_no_heavy_backend(installed):
    import os
    import subprocess
    import sys

    code = (
        "import sys; from forgetbench.cli import main; main(['list', 'method']); "
        "print('HEAVY', [m for m in ('torch', 'trl', 'transformers', 'vllm', 'ray') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **installed},
    )
    assert "baselines/sam_grpo" in out.stdout and "HEAVY []" in out.stdout, out.stdout + out.stderr
