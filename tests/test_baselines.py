"""baselines/: the plugin package of baseline safety methods, installed like a third party's.

Numerical cores against direct computations on toy models, bad settings, every preset and a
matrix resolving with the baselines, and (slow) each baseline trained and attacked end to end."""

from __future__ import annotations

import pytest
import torch

from forgetbench.errors import UsageError
from forgetbench.pipeline import resolve

BASELINES = ("baselines/grpo_strong_kl", "baselines/safety_sft", "baselines/sam_grpo")


@pytest.fixture(scope="module")
def installed(baselines_site):
    return {"PYTHONPATH": str(baselines_site)}


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
    assert resolve("baselines/grpo_strong_kl", "alpaca", "tiny").resolved["method"]["config"][
        "beta"] == 0.1


@pytest.mark.parametrize("name, override, message", [
    ("baselines/sam_grpo", "method.rho=0", "rho: Input should be greater than 0"),
    ("baselines/sam_grpo", "method.rho=-0.05", "rho: Input should be greater than 0"),
    ("baselines/grpo_strong_kl", "method.beta=0.04", "beta: Input should be greater than or "
                                                     "equal to 0.1"),
    ("baselines/safety_sft", "method.num_generations=4", "unknown key 'num_generations'"),
])
def test_bad_baseline_settings_fail_with_one_line(cli, installed, tmp_path, name, override,
                                                  message):
    result = cli("run", "--preset", "tiny", "--method", name, "--set", override,
                 "--output-dir", str(tmp_path / "out"), env=installed)
    assert result.returncode == 2
    assert message in result.stderr and f"method {name!r}" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_matrix_of_grpo_frpo_and_every_baseline_resolves_on_tiny(cli, installed, tmp_path):
    methods = ",".join(("grpo", "frpo", *BASELINES))
    result = cli("matrix", "--methods", methods, "--attacks", "alpaca", "--preset", "tiny",
                 "--output-dir", str(tmp_path), "--dry-run", env=installed)
    assert result.returncode == 0, result.stderr
    for name in ("grpo", "frpo", *BASELINES):
        assert f"train {name}" in result.stdout, result.stdout
    # One warm-up shared by all five methods.
    assert result.stdout.count("warmup") >= 1 and "5 cell" in result.stdout, result.stdout


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
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
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
    sharpness_aware_step(params, lambda: loss_fn(model).backward(),
                         lambda: loss_fn(model).backward(), 0.05)
    fresh, loss_fresh = _toy()
    fresh_params = list(fresh.parameters())
    sharpness_aware_step(fresh_params, lambda: loss_fresh(fresh).backward(),
                         lambda: loss_fresh(fresh).backward(), 0.05)
    for p, q, e in zip(params, fresh_params, earlier):
        torch.testing.assert_close(p.grad, q.grad + e)


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

    monkeypatch.setattr(module, "REFUSALS", DatasetSpec(path=module.REFUSALS.path,
                                                        id_prefix="other-", fields={
                                                            "response": "output"}))
    with pytest.raises(Exception, match="safety_sft: 3 training prompt\\(s\\) have no target.*"
                                        "use train_task 'safety'"):
        module.training_pairs(module.SafetySFTConfig(n_harmful=3, n_harmless=2))
