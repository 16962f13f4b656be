"""CGPO's numerical core (forgetbench.cgpo) against hand computations of the formulas in
docs/methods.md §3 / docs/leaderboards-and-baselines.md §D, and the unmerged TRL PR #2190's
own trainer checks (all judges violated: the parameters do not move; all pass: they do) on a tiny
torch policy. Pure torch, no model or data: a few seconds."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from forgetbench.cgpo import (
    CGPOError,
    codpo_loss,
    codpo_pairs,
    calibrated_rewards,
    crpg_advantages,
    crpg_loss,
    crpg_multitask_advantages,
    crpg_rewards,
    crraft_loss,
    crraft_select,
    mixture_of_judges,
    multitask_loss,
    passes,
    sequence_logps,
    stratify,
)
from forgetbench.config import validate
from forgetbench.errors import UsageError
from forgetbench.methods.cgpo import CGPOConfig


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ---- mixture of judges ---------------------------------------------------------------------------


def test_mixture_of_judges_has_trl_all_true_semantics():
    # columns: all pass; one violated; one failed; violated+failed -> failed wins (TRL checks -1
    # first); all violated; pass+failed
    table = [[1, 1, 1, 0, 0, 1], [1, 0, -1, -1, 0, -1]]
    assert mixture_of_judges(table).tolist() == [1, 0, -1, -1, 0, -1]
    assert mixture_of_judges([[1, 0, -1]]).tolist() == [1, 0, -1]


def test_mixture_of_judges_rejects_other_values_and_no_judges():
    with pytest.raises(CGPOError, match="must be 1, 0 or -1, got \\[0, 1, 2\\]"):
        mixture_of_judges([[1, 2, 0]])
    with pytest.raises(CGPOError, match="at least one judge"):
        mixture_of_judges(torch.zeros(0, 4))


def test_a_failed_judge_is_not_a_pass():
    judgement = torch.tensor([1, 0, -1])
    assert passes(judgement).tolist() == [True, False, False]
    # TRL's PR multiplies the reward by the raw judgement, so -1 would flip its sign; here -1 gets 0
    rewards = crpg_rewards(judgement, torch.tensor([0.7, 0.7, 0.7]), torch.zeros(3), kl_max=1.0)
    assert rewards.tolist() == pytest.approx([0.7, 0.0, 0.0])


# ---- calibrated reward and CRPG ------------------------------------------------------------------


def test_calibrated_reward_is_sigmoid_of_the_reward_minus_the_baselines():
    got = calibrated_rewards(torch.tensor([2.0, 3.0, 0.5, 1.0]), torch.tensor([1.0, 0.0]), 2)
    assert got.tolist() == pytest.approx([sigmoid(1.0), sigmoid(2.0), sigmoid(0.5), sigmoid(1.0)])
    per_row = calibrated_rewards(torch.tensor([2.0, 3.0]), torch.tensor([2.5, 1.0]), 2)
    assert per_row.tolist() == pytest.approx([sigmoid(-0.5), sigmoid(2.0)])
    with pytest.raises(CGPOError, match="3 values for 4 rows"):
        calibrated_rewards(torch.zeros(4), torch.zeros(3), 2)


def test_crpg_advantage_equals_the_hand_computation():
    judgement = torch.tensor([1, 0, 1, -1, 1, 1])
    rewards = torch.tensor([2.0, 3.0, 0.5, 1.0, 0.0, 1.0])
    baseline = torch.tensor([1.0, 0.0, 0.5])  # r(s, ā) per prompt
    kl = torch.tensor([1.0, 0.5, 6.0, 0.0, 2.5, -1.0])
    calib = calibrated_rewards(rewards, baseline, 2)
    result = crpg_advantages(judgement, calib, kl, kl_max=5.0, num_generations=2)
    # R~ = 1[pass] * sigma(r - r_base) * max(0, 1 - KL/5)
    r = [
        sigmoid(1.0) * 0.8,
        0.0,  # violated -> 0
        0.0,
        0.0,  # KL 6 > 5 -> 0; judge failed -> 0
        sigmoid(-0.5) * 0.5,
        sigmoid(0.5) * 1.2,
    ]  # a negative KL estimate raises the factor
    assert result.constrained_rewards.tolist() == pytest.approx(r)
    advantages = []
    for g in range(3):
        mean = (r[2 * g] + r[2 * g + 1]) / 2
        advantages += [r[2 * g] - mean, r[2 * g + 1] - mean]
    assert result.advantages.tolist() == pytest.approx(advantages)
    assert (result.zero_groups, result.skipped) == (1, False)


def test_crpg_loss_is_reinforce_with_the_advantages():
    token_logps = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.2, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([0.3, -0.3])
    assert sequence_logps(token_logps, mask).tolist() == pytest.approx([-3.5, -0.3])
    expected = -((-3.5) * 0.3 + (-0.3) * (-0.3)) / 2
    assert crpg_loss(token_logps, mask, advantages).item() == pytest.approx(expected)


def test_a_whole_batch_failing_is_a_logged_skip_with_zero_advantages(caplog):
    with caplog.at_level(logging.WARNING, logger="forgetbench"):
        result = crpg_advantages(
            torch.tensor([0, -1, 0, 0]),
            torch.full((4,), 0.6),
            torch.zeros(4),
            kl_max=1.0,
            num_generations=2,
        )
    assert result.skipped and result.zero_groups == 2
    assert result.advantages.tolist() == [0.0] * 4
    assert "no sample of the batch passed the judges" in caplog.text


def test_kl_max_must_be_positive_and_inputs_finite():
    with pytest.raises(CGPOError, match="kl_max must be > 0, got 0"):
        crpg_advantages(torch.ones(2), torch.ones(2), torch.zeros(2), kl_max=0.0, num_generations=2)
    with pytest.raises(CGPOError, match="KL_seq has NaN"):
        crpg_advantages(torch.ones(2), torch.ones(2), torch.tensor([0.0, math.nan]), 1.0, 2)


# ---- CRRAFT --------------------------------------------------------------------------------------


def test_crraft_selects_the_best_eligible_sample_and_falls_back_to_the_reference():
    judgement = torch.tensor(
        [
            1,
            1,
            1,  # prompt 0: all pass, the best one is over KL_max
            0,
            -1,
            0,  # prompt 1: nothing passes, ā passes -> ā, weight 0.5
            0,
            0,
            1,  # prompt 2: only row 8 passes (KL 4 <= 5): it wins
            0,
            0,
            0,
        ]
    )  # prompt 3: nothing passes, ā fails -> skipped
    calib = torch.tensor([0.6, 0.9, 0.7, 0.95, 0.99, 0.9, 0.8, 0.8, 0.2, 0.5, 0.5, 0.5])
    kl = torch.tensor([1.0, 9.0, 2.0, 0, 0, 0, 0, 0, 4.0, 0, 0, 0])
    selection = crraft_select(
        judgement,
        calib,
        kl,
        kl_max=5.0,
        num_generations=3,
        baseline_judgement=torch.tensor([1, 1, 1, 0]),
        baseline_kl=torch.tensor([0.0, 1.0, 0.0, 0.0]),
    )
    assert selection.rows.tolist() == [2, -1, 8, -1]
    assert selection.use_baseline.tolist() == [False, True, False, False]
    assert selection.weights.tolist() == pytest.approx([0.7, 0.5, 0.2, 0.0])
    assert selection.valid.tolist() == [True, True, True, False]

    # eq. (18): -sum_valid w * log pi(a*) / #valid, from per-token log-probs of each choice
    token_logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-3.0, -1.0], [-7.0, -7.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
    loss = crraft_loss(token_logps, mask, selection)
    expected = -(0.7 * -3.0 + 0.5 * -0.5 + 0.2 * -4.0) / 3
    assert loss.loss.item() == pytest.approx(expected)
    assert (loss.used, loss.skipped) == (3, False)


def test_crraft_reference_over_kl_max_is_not_used():
    selection = crraft_select(
        torch.tensor([0, 0]),
        torch.tensor([0.9, 0.9]),
        torch.zeros(2),
        1.0,
        2,
        baseline_judgement=torch.tensor([1]),
        baseline_kl=torch.tensor([2.0]),
    )
    assert selection.valid.tolist() == [False]
    failed = crraft_select(
        torch.tensor([0, 0]),
        torch.tensor([0.9, 0.9]),
        torch.zeros(2),
        1.0,
        2,
        baseline_judgement=torch.tensor([-1]),
    )
    assert failed.valid.tolist() == [False]  # a reference the judge failed on is not a pass


# ---- CODPO ---------------------------------------------------------------------------------------


def test_codpo_pairs_and_loss_equal_the_hand_computation():
    judgement = torch.tensor(
        [
            1,
            0,
            1,  # chosen: best passing (row 2); rejected: the failing row 1
            1,
            1,
            1,  # all pass: rejected = worst overall (row 4)
            -1,
            0,
            0,
        ]
    )  # no pass (a failed judge is not one): skipped
    rewards = torch.tensor([0.2, 0.9, 0.7, 0.3, 0.1, 0.5, 0.9, 0.1, 0.0])
    pairs = codpo_pairs(judgement, rewards, 3)
    assert pairs.chosen[:2].tolist() == [2, 5] and pairs.rejected[:2].tolist() == [1, 4]
    assert pairs.valid.tolist() == [True, True, False]

    pc = torch.tensor([-4.0, -6.0, 0.0], requires_grad=True)
    pr = torch.tensor([-5.0, -3.0, 0.0])
    rc = torch.tensor([-4.5, -6.5, 0.0])
    rr = torch.tensor([-4.0, -3.5, 0.0])
    lengths = torch.tensor([4, 3, 0])  # the skipped prompt's "chosen" is an empty placeholder
    loss = codpo_loss(pc, pr, rc, rr, lengths, pairs.valid, beta=0.1, nll_weight=5.0)
    loss.loss.backward()
    assert torch.isfinite(pc.grad).all() and pc.grad[2] == 0
    per_pair = []
    for i in range(2):
        logits = (pc[i] - pr[i]).item() - (rc[i] - rr[i]).item()
        per_pair.append(-(logsigmoid(0.1 * logits) + 5.0 / lengths[i].item() * pc[i].item()))
    assert loss.loss.item() == pytest.approx(sum(per_pair) / 2)
    assert (loss.used, loss.skipped) == (2, False)


# ---- the TRL PR's trainer checks on a tiny policy ------------------------------------------------


class ToyPolicy(torch.nn.Module):
    """A bigram language model: the next token's logits from the previous token."""

    def __init__(self, vocab: int = 7, hidden: int = 5):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.out = torch.nn.Linear(hidden, vocab)

    def token_logps(self, prompt: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        previous = torch.cat([prompt[:, -1:], completion[:, :-1]], dim=1)
        logps = self.out(self.embed(previous)).log_softmax(-1)
        return logps.gather(-1, completion[..., None]).squeeze(-1)


G, PROMPTS, LENGTH = 4, 2, 5


def rollout(seed: int = 0):
    torch.manual_seed(seed)
    policy = ToyPolicy()
    reference = copy.deepcopy(policy).requires_grad_(False)
    prompts = torch.randint(0, 7, (PROMPTS, 3)).repeat_interleave(G, dim=0)
    completions = torch.randint(0, 7, (PROMPTS * G, LENGTH))
    mask = torch.ones(PROMPTS * G, LENGTH)
    mask[1, 3:] = 0  # a shorter completion
    return policy, reference, prompts, completions, mask


def step(policy, loss) -> bool:
    """One SGD step (no weight decay); whether any parameter moved."""
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))


def optimiser_loss(optimizer: str, judge_value: int, policy, reference, prompts, completions, mask):
    judgement = torch.full((PROMPTS * G,), judge_value)
    rewards = torch.linspace(-1.0, 1.0, PROMPTS * G)
    calib = calibrated_rewards(rewards, torch.zeros(PROMPTS), G)
    token_logps = policy.token_logps(prompts, completions)
    with torch.no_grad():
        kl = sequence_logps(token_logps - reference.token_logps(prompts, completions), mask)
    if optimizer == "crpg":
        advantages = crpg_advantages(judgement, calib, kl, 5.0, G).advantages
        return crpg_loss(token_logps, mask, advantages)
    if optimizer == "crraft":
        selection = crraft_select(
            judgement, calib, kl, 5.0, G, baseline_judgement=torch.full((PROMPTS,), judge_value)
        )
        rows = selection.rows.clamp(min=0)  # ā is not in this toy batch: it fails with the samples
        return crraft_loss(token_logps[rows], mask[rows], selection).loss
    pairs = codpo_pairs(judgement, rewards, G)
    logps = sequence_logps(token_logps, mask)
    with torch.no_grad():
        ref = sequence_logps(reference.token_logps(prompts, completions), mask)
    return codpo_loss(
        logps[pairs.chosen],
        logps[pairs.rejected],
        ref[pairs.chosen],
        ref[pairs.rejected],
        mask[pairs.chosen].sum(-1),
        pairs.valid,
    ).loss


@pytest.mark.parametrize("optimizer", ["crpg", "crraft", "codpo"])
def test_all_judges_violated_parameters_do_not_move(optimizer):
    policy, reference, prompts, completions, mask = rollout()
    loss = optimiser_loss(optimizer, 0, policy, reference, prompts, completions, mask)
    assert torch.isfinite(loss)
    assert not step(policy, loss)
    assert all(p.grad is None or not p.grad.any() for p in policy.parameters())


@pytest.mark.parametrize("optimizer", ["crpg", "crraft", "codpo"])
def test_all_judges_failing_with_minus_one_parameters_do_not_move(optimizer):
    policy, reference, prompts, completions, mask = rollout(1)
    loss = optimiser_loss(optimizer, -1, policy, reference, prompts, completions, mask)
    assert torch.isfinite(loss) and not step(policy, loss)


@pytest.mark.parametrize("optimizer", ["crpg", "crraft", "codpo"])
def test_all_judges_passing_parameters_move(optimizer):
    policy, reference, prompts, completions, mask = rollout(2)
    loss = optimiser_loss(optimizer, 1, policy, reference, prompts, completions, mask)
    assert step(policy, loss)


# ---- multi-task ----------------------------------------------------------------------------------


def test_stratify_keeps_groups_and_names_unknown_tasks():
    kinds = ["harmful"] * 2 + ["harmless"] * 2 + ["harmful"] * 2
    split = stratify(kinds, 2, known=["harmful", "harmless"])
    assert split["harmful"].tolist() == [0, 1, 4, 5] and split["harmless"].tolist() == [2, 3]
    with pytest.raises(CGPOError, match="group 1 mixes tasks"):
        stratify(["harmful", "harmful", "harmful", "harmless"], 2)
    with pytest.raises(CGPOError, match="kind 'math' have no cgpo task; add tasks.math"):
        stratify(["math", "math"], 2, known=["harmful"])


def test_multitask_loss_sums_the_task_gradients():
    policy, reference, prompts, completions, mask = rollout(3)
    tasks = stratify(["harmful"] * G + ["harmless"] * G, G)
    token_logps = policy.token_logps(prompts, completions)
    judgement = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1])
    calib = torch.linspace(0.1, 0.9, 8)
    kl = torch.zeros(8)
    losses = {}
    for name, rows in tasks.items():
        advantages = crpg_advantages(judgement[rows], calib[rows], kl[rows], 5.0, G).advantages
        losses[name] = crpg_loss(token_logps[rows], mask[rows], advantages)
    grads = [
        torch.autograd.grad(loss, policy.out.weight, retain_graph=True)[0]
        for loss in losses.values()
    ]
    from forgetbench.cgpo import Loss

    total = multitask_loss({name: Loss(loss, 1, False) for name, loss in losses.items()})
    summed = torch.autograd.grad(total.loss, policy.out.weight)[0]
    assert torch.allclose(summed, grads[0] + grads[1])
    assert not total.skipped


def test_crpg_advantages_of_a_crpg_task_beside_another_optimisers_task():
    """A crpg task beside a crraft / codpo one: its advantages are scaled by N / N_t as when it
    is alone in a batch of N rows, the other task's rows get 0 (TRL's loss averages over all N
    rows, so they add nothing), and the skip only looks at the crpg task."""
    judgement = torch.tensor([1, 0, 1, 1, 1, 0, 0, 0])
    calib = torch.tensor([0.8, 0.4, 0.6, 0.2, 0.9, 0.9, 0.9, 0.9])
    kl = torch.zeros(8)
    harmful = torch.tensor([0, 1, 2, 3])
    result = crpg_multitask_advantages({"harmful": harmful}, judgement, calib, kl, 5.0, 2)
    # by hand: R~ = [0.8, 0, 0.6, 0.2]; minus the group means 0.4 and 0.4; times N / N_t = 2
    assert result.advantages.tolist() == pytest.approx([0.8, -0.8, 0.4, -0.4, 0, 0, 0, 0])
    assert not result.skipped and result.zero_groups == 0
    idle = crpg_multitask_advantages(
        {"harmless": torch.tensor([4, 5, 6, 7])}, torch.zeros(8), calib, kl, 5.0, 2
    )
    assert idle.skipped and not idle.advantages.any()
    with pytest.raises(CGPOError, match="task 'b' shares rows of the batch with another task"):
        crpg_multitask_advantages({"a": harmful, "b": harmful}, judgement, calib, kl, 5.0, 2)


# ---- config --------------------------------------------------------------------------------------


def test_cgpo_config_defaults_and_one_line_errors():
    config = validate(CGPOConfig, {"kl_max": 5.0}, "method 'cgpo'")
    assert config.optimizer == "crpg" and config.beta == 0.0
    assert config.dpo_beta == 0.1 and config.nll_weight == 5.0
    assert [j.judge for j in config.tasks["harmful"].judges] == ["refusal"]
    assert config.tasks["harmless"].judges[0].passes_if == "below"
    cases = {
        "kl_max: Input should be greater than 0": {"kl_max": 0},
        "kl_max: Field required": {},
        "needs at least one task": {"kl_max": 1, "tasks": {}},
        "needs at least one constraint judge": {
            "kl_max": 1,
            "tasks": {"harmful": {"judges": [], "reward": [{"name": "safety"}]}},
        },
        "needs a reward": {
            "kl_max": 1,
            "tasks": {
                "harmful": {"judges": [{"judge": "refusal", "passes_if": "at_least"}], "reward": []}
            },
        },
        "takes its rewards per task": {"kl_max": 1, "reward": "helpfulness"},
        "beta > 0 .* works with optimizer crpg only": {
            "kl_max": 1,
            "optimizer": "codpo",
            "beta": 0.1,
        },
        "codpo needs num_generations >= 2": {
            "kl_max": 1,
            "optimizer": "codpo",
            "num_generations": 1,
        },
        "unknown judge 'refusl'": {
            "kl_max": 1,
            "tasks": {
                "harmful": {
                    "judges": [{"judge": "refusl", "passes_if": "at_least"}],
                    "reward": [{"name": "safety"}],
                }
            },
        },
    }
    for message, values in cases.items():
        with pytest.raises(UsageError, match=message) as caught:
            validate(CGPOConfig, values, "method 'cgpo'")
        assert "\n" not in str(caught.value)
