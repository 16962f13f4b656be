"""The advantage estimators against hand-computed values, their defining identities, and the
gradient of the FRPO objective (docs/methods.md §1.2-1.3)."""

import math

import pytest
import torch

from forgetbench.advantages import AdvantageError, frpo_advantages, frpo_prefactor, grpo_advantages

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)


def test_grpo_hand_computed():
    # group 1: mean 0.425; group 2: mean 0.25
    expected_centred = [0.575, -0.425, 0.075, -0.225, -0.25, -0.25, -0.25, 0.75]
    assert grpo_advantages(REWARDS, 4, scale="none").tolist() == pytest.approx(expected_centred)
    std1 = torch.tensor([1.0, 0.0, 0.5, 0.2]).std().item()  # unbiased, as TRL
    assert grpo_advantages(REWARDS, 4, scale="group")[0].item() == pytest.approx(
        0.575 / (std1 + 1e-4)
    )


def test_frpo_plain_hand_computed():
    # lam = 2: w = exp(-A/2); adv = lam * (1 - w / mean(w)) because lam > 1
    a = [0.575, -0.425, 0.075, -0.225]
    w = [math.exp(-x / 2) for x in a]
    u = sum(w) / 4
    expected = [2 * (1 - wi / u) for wi in w]
    got = frpo_advantages(REWARDS[:4], 4, lam=2.0, jackknife=False)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("jackknife", [False, True])
@pytest.mark.parametrize("lam", [0.1, 0.5, 2.0, 5.0])
def test_frpo_zero_sum_within_groups(lam, jackknife):
    advantages = frpo_advantages(REWARDS, 4, lam=lam, jackknife=jackknife).view(-1, 4)
    assert advantages.sum(dim=1).abs().max().item() < 1e-9


def test_frpo_prefactor_rule():
    assert frpo_prefactor(0.5) == 1.0 and frpo_prefactor(1.0) == 1.0 and frpo_prefactor(2.0) == 2.0


def test_jackknife_equals_direct_leave_one_out():
    """Closed form vs the gradient of G log u - (G-1) mean_k log u_(-k), computed by autograd."""
    torch.manual_seed(0)
    for group in (2, 3, 8):
        rewards = torch.rand(group, dtype=torch.float64)
        lam = 0.3
        weights = torch.exp(-(rewards - rewards.mean()) / lam)
        b = torch.ones(group, dtype=torch.float64, requires_grad=True)
        s = weights * b
        loo = torch.stack([(s.sum() - s[k]) / (group - 1) for k in range(group)])
        log_partition = group * torch.log(s.mean()) - (group - 1) * torch.log(loo).mean()
        (log_partition - b.mean()).backward()
        direct = -b.grad * group  # the advantage is minus the per-sample gradient, times G
        closed = frpo_advantages(rewards, group, lam=lam, jackknife=True)
        assert closed.tolist() == pytest.approx(direct.tolist(), abs=1e-10)


def test_large_lambda_limit_is_centred_reward():
    """lam (1 - w/u) -> r - mean(r): within 1e-4 at lam = 1e3, and the error shrinks as 1/lam."""
    centred = grpo_advantages(REWARDS, 4, scale="none")

    def error(lam):
        return (frpo_advantages(REWARDS, 4, lam=lam, jackknife=False) - centred).abs()

    assert error(1e3)[:4].max().item() < 1e-4  # rewards spread over [0, 1]
    assert error(1e4).max().item() < 1e-4  # the skewed group 0,0,0,1 needs a larger lam
    assert 9 < error(1e3).max().item() / error(1e4).max().item() < 11


def test_without_baseline_drops_the_one():
    with_baseline = frpo_advantages(REWARDS, 4, lam=0.5)
    without = frpo_advantages(REWARDS, 4, lam=0.5, baseline=False)
    assert (with_baseline - without).tolist() == pytest.approx([1.0] * 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lam=0.0), "lambda > 0"),
        (dict(lam=-1.0), "lambda > 0"),
    ],
)
def test_bad_lambda(kwargs, message):
    with pytest.raises(AdvantageError, match=message):
        frpo_advantages(REWARDS, 4, **kwargs)


def test_jackknife_needs_two():
    with pytest.raises(AdvantageError, match="num_generations >= 2"):
        frpo_advantages(REWARDS, 1, lam=0.5)
    assert frpo_advantages(REWARDS, 1, lam=0.5, jackknife=False).abs().max() < 1e-12


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rewards_are_an_error(bad):
    rewards = REWARDS.clone()
    rewards[3] = bad
    with pytest.raises(AdvantageError, match=r"rows \[3\] are NaN or infinite"):
        frpo_advantages(rewards, 4, lam=0.5)
    with pytest.raises(AdvantageError, match="NaN or infinite"):
        grpo_advantages(rewards, 4)


def test_empty_and_split_groups_are_errors():
    with pytest.raises(AdvantageError, match="empty"):
        frpo_advantages(torch.tensor([]), 4, lam=0.5)
    with pytest.raises(AdvantageError, match="do not split into groups"):
        frpo_advantages(REWARDS[:6], 4, lam=0.5)


@pytest.mark.parametrize("jackknife", [False, True])
@pytest.mark.parametrize("lam", [0.2, 2.0])
def test_surrogate_gradient_matches_finite_difference_of_frpo_objective(lam, jackknife):
    """A toy categorical policy over 6 answers; 3 prompts with their own logits, G=4 samples each.

    The FRPO objective as the reference code writes it (docs/methods.md §1.3):
        L = c_lam * mean_g [ logZ_g(s) - mean_i b_i ],  s_i = w_i * b_i,  b_i = pi(y_i) / pi_old(y_i)
    with logZ the plain or jackknife log-mean. Our implementation instead hands frpo_advantages to
    GRPO's clipped surrogate -mean_i min(rho_i A_i, clip(rho_i) A_i). At pi_old = pi (one step per
    generation batch) both must have the same gradient; the FRPO one is taken by central finite
    differences.
    """
    torch.manual_seed(1)
    prompts, group, answers = 3, 4, 6
    theta0 = torch.randn(prompts, answers, dtype=torch.float64)
    samples = torch.randint(0, answers, (prompts, group))
    reward_table = torch.rand(prompts, answers, dtype=torch.float64)
    rewards = torch.gather(reward_table, 1, samples).flatten()
    old_logp = torch.log_softmax(theta0, dim=1).gather(1, samples).flatten()

    def frpo_objective(theta):
        ratio = torch.exp(torch.log_softmax(theta, dim=1).gather(1, samples).flatten() - old_logp)
        weights = torch.exp(
            -(rewards.view(prompts, group) - rewards.view(prompts, group).mean(dim=1, keepdim=True))
            / lam
        )
        s = weights * ratio.view(prompts, group)
        if jackknife:
            loo = (s.sum(dim=1, keepdim=True) - s) / (group - 1)
            log_z = group * torch.log(s.mean(dim=1)) - (group - 1) * torch.log(loo).mean(dim=1)
        else:
            log_z = torch.log(s.mean(dim=1))
        return frpo_prefactor(lam) * (log_z - ratio.view(prompts, group).mean(dim=1)).mean()

    theta = theta0.clone().requires_grad_(True)
    advantages = frpo_advantages(rewards, group, lam=lam, jackknife=jackknife)
    ratio = torch.exp(torch.log_softmax(theta, dim=1).gather(1, samples).flatten() - old_logp)
    clipped = torch.clamp(ratio, 0.8, 1.2)
    surrogate = -torch.min(ratio * advantages, clipped * advantages).mean()
    surrogate.backward()

    step = 1e-6
    finite_difference = torch.zeros_like(theta0)
    for index in range(theta0.numel()):
        delta = torch.zeros(theta0.numel(), dtype=torch.float64)
        delta[index] = step
        delta = delta.view_as(theta0)
        finite_difference.view(-1)[index] = (
            frpo_objective(theta0 + delta) - frpo_objective(theta0 - delta)
        ) / (2 * step)
    assert theta.grad.abs().max() > 1e-3  # the test is not vacuous
    assert torch.allclose(theta.grad, finite_difference, atol=1e-7, rtol=1e-6)


def test_population_gradient_is_the_entropic_risk_gradient():
    """The advantage's population form lam(1 - w/Z) is the gradient of J = -lam log E exp(-r/lam)."""
    torch.manual_seed(2)
    answers, lam = 7, 0.4
    theta0 = torch.randn(answers, dtype=torch.float64)
    reward = torch.rand(answers, dtype=torch.float64)

    def entropic(theta):
        return -lam * torch.log((torch.softmax(theta, 0) * torch.exp(-reward / lam)).sum())

    probs = torch.softmax(theta0, 0)
    w = torch.exp(-reward / lam)
    advantage = lam * (1 - w / (probs * w).sum())
    score = torch.eye(answers, dtype=torch.float64) - probs  # d log pi(y) / d theta, rows = y
    analytic = (probs[:, None] * advantage[:, None] * score).sum(0)
    step = 1e-6
    numeric = torch.stack(
        [
            (entropic(theta0 + step * e) - entropic(theta0 - step * e)) / (2 * step)
            for e in torch.eye(answers, dtype=torch.float64)
        ]
    )
    assert torch.allclose(analytic, numeric, atol=1e-8)
