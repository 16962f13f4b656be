"""The `cgpo` method in its real loop on real TRL (the tiny model of tests/conftest.py), for each
optimiser (crpg, crraft, codpo, and tasks mixing them): the advantages TRL's loss gets and the
crraft / codpo loss the trainer computes equal direct computations of [P] (CRPG, eq. 18, eq. 14)
on what the run recorded;
with every judge "violated" (or failing) a real step leaves the weights alone, with every judge
passing it moves them (the unmerged TRL PR #2190's checks); passes per optimiser step next to
GRPO's; bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from forgetbench import registry
from forgetbench.cgpo import CGPOError, calibrated_rewards, crpg_multitask_advantages
from forgetbench.judges import Verdict
from forgetbench.judges.refusal import is_refusal
from forgetbench.methods.cgpo import _embedded_tasks

TINY_LOOP = dict(
    max_steps=2,
    num_generations=2,
    prompts_per_step=2,
    grad_accum=2,
    max_completion_length=8,
    n_harmful=2,
    n_harmless=2,
    kl_max=5.0,
)
G = TINY_LOOP["num_generations"]
HARMLESS_ONLY = dict(TINY_LOOP, n_harmful=0, n_harmless=4, learning_rate=1e-3, weight_decay=0.1)


@pytest.fixture(scope="module")
def model_path(tiny_model):
    # The checks here are of arithmetic and gating (what the loss receives, whether a step moves
    # the weights), which hold whatever the weights: the tiny model (tests/conftest.py) runs
    # them in a fraction of the embedded model's time. The real model's cgpo runs are the slow
    # smoke test below and the tiny preset's matrix.
    return tiny_model


def train_recording(settings: dict, model_path, out, monkeypatch):
    """Run the cgpo plugin; return its scorer, the advantages of every micro-batch TRL's loss
    got, the parameters before the first step and the trained model, and the run's log."""
    from trl import GRPOTrainer

    from forgetbench.methods.cgpo import cgpo_trainer_class

    seen = {"advantages": []}
    trls, cgpos = GRPOTrainer._compute_loss, cgpo_trainer_class().compute_loss

    def recording_advantages(self, model, inputs):
        seen["advantages"].append(inputs["advantages"].detach().double().cpu().clone())
        return trls(self, model, inputs)

    def recording(self, model, inputs, *args, **kwargs):
        if "model" not in seen:
            seen.update(
                scorer=self.cgpo,
                model=model,
                before=[p.detach().clone() for p in model.parameters()],
            )
        return cgpos(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", recording_advantages)
    monkeypatch.setattr(cgpo_trainer_class(), "compute_loss", recording)
    plugin = registry.get("method", "cgpo")
    plugin.target(plugin.build_config(settings), model_path, out, 0)
    monkeypatch.undo()
    seen["history"] = json.loads((out / "log_history.json").read_text())
    return seen


def expected_outcome(kind: str, text: str) -> int:
    """The default tasks' refusal constraints: refuse harmful prompts, answer harmless ones."""
    if not text.strip():
        return -1  # the refusal judge gives no verdict on an empty answer: failed, not a pass
    return int(is_refusal(text) == (kind == "harmful"))


def test_crpg_advantages_entering_trls_loss_are_the_pure_functions(
    model_path, tmp_path, monkeypatch
):
    seen = train_recording(TINY_LOOP, model_path, tmp_path / "cgpo", monkeypatch)
    steps = seen["scorer"].steps
    assert len(steps) == TINY_LOOP["max_steps"]
    # ā: the harmful rows have no reference, so the initial policy's greedy answers were cached
    cached = [json.loads(line) for line in (tmp_path / "cgpo" / "baseline.jsonl").open()]
    assert len(cached) == TINY_LOOP["n_harmful"] and all(e["baseline"].strip() for e in cached)
    logged = [entry for entry in seen["history"] if "cgpo/pass_rate" in entry]
    assert len(logged) == len(steps)
    micro = TINY_LOOP["grad_accum"]
    for k, (step, log) in enumerate(zip(steps, logged)):
        batch = step.batch
        judgement = torch.zeros(len(batch.completions), dtype=torch.long)
        for kind, rows in batch.tasks.items():
            assert kind in ("harmful", "harmless")
            judgement[rows] = torch.tensor(
                [expected_outcome(kind, batch.completions[i]) for i in rows.tolist()]
            )
            share = float((judgement[rows] != 1).double().mean())
            assert log[f"cgpo/{kind}/refusal/rejected"] == pytest.approx(share)
        assert batch.judgement.tolist() == judgement.tolist()
        calibrated = calibrated_rewards(batch.rewards, batch.baseline_rewards, G)
        expected = crpg_multitask_advantages(
            batch.tasks, judgement, calibrated, step.kl_seq, TINY_LOOP["kl_max"], G
        )
        entering = torch.cat(seen["advantages"][k * micro : (k + 1) * micro])
        # TRL shuffles the rows into micro-batches: the same multiset of advantages
        assert sorted(entering.tolist()) == pytest.approx(
            sorted(expected.advantages.tolist()), abs=1e-6
        )
        assert step.skipped == expected.skipped
    # the reference is the initial policy: before the first update, KL_seq is 0
    assert steps[0].kl_seq.abs().max() < 1e-4


# The embedded default's tasks (refusal constraints, offline rewards); each test sets its
# optimisers or judges on them.
TASKS = _embedded_tasks()


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > -30 else x


def crraft_by_hand(step, kind, rows, judgement, baselines):
    """[P] eq. (18) per prompt, by hand: the passing sample within KL_max with the largest
    R_calib, else ā if the task's refusal judge passes it (ā's own KL gate: test_cgpo.py), weight
    sigma(0); returns the choices (a row, or -1 for ā) and the terms R_calib * log pi(a*)."""
    batch, part = step.batch, step.parts[kind]
    choices, terms = [], []
    for start in range(0, len(rows), G):
        group = rows[start : start + G]
        eligible = [i for i in group if judgement[i] == 1 and step.kl_seq[i] <= TINY_LOOP["kl_max"]]
        if eligible:
            best = max(eligible, key=lambda i: float(batch.calibrated[i]))
            choices.append(best)
            terms.append(float(batch.calibrated[best]) * float(step.policy_logps[best]))
        elif expected_outcome(kind, baselines[batch.columns["prompt_index"][group[0]]]) == 1:
            choices.append(-1)
            v = part.prompt_rows.tolist().index(group[0])
            assert part.chosen[v] == -1 and part.baseline_logps[v] < 0
            terms.append(0.5 * float(part.baseline_logps[v]))
    return choices, terms


def codpo_by_hand(step, rows, judgement):
    """[P] eq. (14) per prompt with a passing sample, by hand: chosen = the passing sample with
    the largest r(s, a), rejected = the failing one (else any) with the smallest; beta 0.1, lambda
    5; returns the pairs and the terms."""
    batch, pairs, terms = step.batch, [], []
    for start in range(0, len(rows), G):
        group = rows[start : start + G]
        passing = [i for i in group if judgement[i] == 1]
        if not passing:
            continue
        chosen = max(passing, key=lambda i: float(batch.rewards[i]))
        rejected = min(
            [i for i in group if judgement[i] != 1] or group, key=lambda i: float(batch.rewards[i])
        )
        pi, ref = step.policy_logps, step.reference_logps
        logits = float((pi[chosen] - pi[rejected]) - (ref[chosen] - ref[rejected]))
        nll = 5.0 / int(step.lengths[chosen]) * float(pi[chosen])
        pairs.append((chosen, rejected))
        terms.append(-(logsigmoid(0.1 * logits) + nll))
    return pairs, terms


@pytest.mark.parametrize(
    "optimizers",
    [
        {"harmful": "crraft", "harmless": "crraft"},
        {"harmful": "codpo", "harmless": "codpo"},
        {"harmful": "codpo", "harmless": "crraft"},
        {"harmful": "crpg", "harmless": "crraft"},
    ],
    ids=["crraft", "codpo", "codpo+crraft", "crpg+crraft"],
)
def test_the_loss_each_task_trains_with_is_the_papers_on_the_runs_rollouts(
    optimizers, model_path, tmp_path, monkeypatch
):
    """Per task its optimiser: the crraft and codpo losses the trainer adds up over a step's
    micro-batches equal eq. (18) / eq. (14) computed by hand on the step's judgements, rewards
    and log-probs, summed over the tasks; a crpg task's advantages reach TRL's loss, 0 on the
    other tasks' rows."""
    tasks = {kind: {**task, "optimizer": optimizers[kind]} for kind, task in TASKS.items()}
    seen = train_recording(dict(TINY_LOOP, tasks=tasks), model_path, tmp_path / "cgpo", monkeypatch)
    scorer, steps = seen["scorer"], seen["scorer"].steps
    assert len(steps) == TINY_LOOP["max_steps"]
    logged = [entry for entry in seen["history"] if "cgpo/pass_rate" in entry]
    micro = TINY_LOOP["grad_accum"]
    for k, (step, log) in enumerate(zip(steps, logged)):
        batch = step.batch
        judgement = torch.zeros(len(batch.completions), dtype=torch.long)
        expected_loss, trained = 0.0, False
        for kind, rows in batch.tasks.items():
            rows = rows.tolist()
            judgement[rows] = torch.tensor(
                [expected_outcome(kind, batch.completions[i]) for i in rows]
            )
            if optimizers[kind] == "crpg":
                continue
            part = step.parts[kind]
            if optimizers[kind] == "crraft":
                choices, terms = crraft_by_hand(step, kind, rows, judgement, scorer.baselines)
                assert part.chosen.tolist() == choices
                assert log[f"cgpo/{kind}/baseline_used"] == choices.count(-1)
            else:
                pairs, terms = codpo_by_hand(step, rows, judgement)
                assert list(zip(part.chosen.tolist(), part.rejected.tolist())) == pairs
            assert log[f"cgpo/{kind}/trained_prompts"] == len(terms)
            assert log[f"cgpo/{kind}/skipped_prompts"] == len(rows) // G - len(terms)
            if terms:
                sign = -1.0 if optimizers[kind] == "crraft" else 1.0
                expected_loss += sign * sum(terms) / len(terms)
                trained = True
        assert batch.judgement.tolist() == judgement.tolist()
        # the trainer's crraft + codpo loss, one share per micro-batch, adds up to the formula
        assert len(step.losses) == micro
        assert sum(step.losses) == pytest.approx(expected_loss, rel=1e-4, abs=1e-4)
        crpg = {n: r for n, r in batch.tasks.items() if optimizers[n] == "crpg"}
        if crpg:
            calibrated = calibrated_rewards(batch.rewards, batch.baseline_rewards, G)
            expected = crpg_multitask_advantages(
                crpg, judgement, calibrated, step.kl_seq, TINY_LOOP["kl_max"], G
            )
            entering = torch.cat(seen["advantages"][k * micro : (k + 1) * micro])
            assert sorted(entering.tolist()) == pytest.approx(
                sorted(expected.advantages.tolist()), abs=1e-6
            )
            for kind in set(batch.tasks) - set(crpg):
                assert not step.advantages[batch.tasks[kind]].any()
            trained = trained or not expected.skipped
        else:
            assert seen["advantages"] == []  # TRL's loss is not run: no crpg task
        assert step.skipped == (not trained)
        assert log["cgpo/skipped_steps"] == sum(s.skipped for s in steps[: k + 1])
    if set(optimizers.values()) != {"crpg"}:  # the formulas were compared on something
        assert any(step.losses and sum(step.losses) != 0 for step in steps)


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_crraft_trains_on_the_reference_answer_when_no_sample_passes(
    lora_r, model_path, tmp_path, monkeypatch
):
    """A judge that passes only the row's reference: no sample passes, ā (the reference) does,
    so CRRAFT trains on ā with weight 0.5: the trained weights move, and the loss is -0.5 * mean
    log pi(ā) over the step's prompts, on ā's tokens (its text and the end of turn, cut at
    max_completion_length). Under LoRA ā's KL is taken against the adapter-disabled model."""
    from forgetbench.judges import Verdict
    from forgetbench.models import load_tokenizer

    def is_reference(config):
        def score(prompts, responses, rows):
            return [Verdict(float(r == row["reference"])) for r, row in zip(responses, rows)]

        return score

    registry.register("judge", "test_cgpo_is_reference", is_reference)
    settings = dict(
        HARMLESS_ONLY,
        optimizer="crraft",
        lora_r=lora_r,
        kl_max=1e9,
        tasks={
            "harmless": {
                "judges": [{"judge": "test_cgpo_is_reference", "passes_if": "at_least"}],
                "reward": [{"name": "helpfulness"}],
            }
        },
    )
    seen = train_recording(settings, model_path, tmp_path / "cgpo", monkeypatch)
    tokenizer = load_tokenizer(model_path)
    for step in seen["scorer"].steps:
        part = step.parts["harmless"]
        assert (step.batch.judgement == 0).all() and not step.skipped
        assert part.chosen.tolist() == [-1] * TINY_LOOP["prompts_per_step"]
        assert part.weights.tolist() == [0.5] * TINY_LOOP["prompts_per_step"]
        for row, ids in zip(part.prompt_rows.tolist(), part.baseline_ids):
            text = step.batch.columns["reference"][row]
            tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert (
                ids.tolist()
                == [*tokens, tokenizer.eos_token_id][: TINY_LOOP["max_completion_length"]]
            )
        expected = -0.5 * float(part.baseline_logps.mean())
        assert sum(step.losses) == pytest.approx(expected, rel=1e-4)
    logged = [entry for entry in seen["history"] if "cgpo/pass_rate" in entry]
    assert [entry["cgpo/harmless/baseline_used"] for entry in logged] == [2.0, 2.0]
    if not lora_r:
        moved = [not torch.equal(b, p) for b, p in zip(seen["before"], seen["model"].parameters())]
        assert all(moved)
    else:  # the adapters are merged into the saved policy: the weights they adapt moved
        from transformers import AutoModelForCausalLM

        initial = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
        saved = AutoModelForCausalLM.from_pretrained(tmp_path / "cgpo" / "model").state_dict()
        moved = {name for name, weight in saved.items() if not torch.equal(weight, initial[name])}
        assert moved and all("_proj." in name for name in moved), sorted(moved)[:5]


GATED = ["crpg", "crraft", "codpo"]


@pytest.mark.parametrize("optimizer", GATED)
def test_every_judge_violated_or_failing_a_real_step_does_not_move_the_weights(
    optimizer, model_path, tmp_path, monkeypatch
):
    def flaky(config):
        def score(prompts, responses):
            raise ConnectionError("judge endpoint refused the connection")

        return score

    registry.register("judge", "test_cgpo_flaky", flaky)
    settings = dict(
        HARMLESS_ONLY,
        optimizer=optimizer,
        tasks={
            "harmless": {
                "judges": [
                    {"judge": "refusal", "passes_if": "below", "threshold": -1.0},
                    {"judge": "test_cgpo_flaky", "passes_if": "below"},
                ],
                "reward": [{"name": "helpfulness"}],
            }
        },
    )
    seen = train_recording(settings, model_path, tmp_path / "cgpo", monkeypatch)
    # weight decay 0.1 at lr 1e-3 would move every weight if the optimiser stepped
    moved = [not torch.equal(b, p) for b, p in zip(seen["before"], seen["model"].parameters())]
    assert not any(moved)
    assert all(step.skipped for step in seen["scorer"].steps)
    # crraft judged ā too (the same judges): it failed them, so no prompt trained on it
    assert all(not part.chosen.numel() for s in seen["scorer"].steps for part in s.parts.values())
    rows = TINY_LOOP["prompts_per_step"] * G
    logged = [entry for entry in seen["history"] if "cgpo/pass_rate" in entry]
    assert [entry["cgpo/skipped_steps"] for entry in logged] == [1.0, 2.0]
    for entry in logged:
        assert entry["cgpo/pass_rate"] == 0.0 and entry["loss"] == 0.0
        assert entry["cgpo/harmless/test_cgpo_flaky/failed"] == rows  # -1 counted, no crash
        assert entry["cgpo/harmless/test_cgpo_flaky/rejected"] == 1.0
        assert entry["cgpo/harmless/refusal/rejected"] == 1.0


@pytest.mark.parametrize("optimizer", GATED)
def test_every_judge_passing_a_real_step_moves_the_weights(
    optimizer, model_path, tmp_path, monkeypatch
):
    # kl_max out of reach: at lr 1e-3 the first step takes the policy beyond KL_seq = 5, and the
    # KL gate alone would then zero (and skip) the second step
    settings = dict(
        HARMLESS_ONLY,
        optimizer=optimizer,
        kl_max=1e9,
        tasks={
            "harmless": {
                "judges": [{"judge": "refusal", "passes_if": "below", "threshold": 2.0}],
                "reward": [{"name": "helpfulness"}],
            }
        },
    )
    seen = train_recording(settings, model_path, tmp_path / "cgpo", monkeypatch)
    steps = seen["scorer"].steps
    assert all((step.batch.judgement == 1).all() for step in steps)
    assert not any(step.skipped for step in steps)
    if optimizer == "crpg":
        assert any(step.advantages.abs().max() > 0 for step in steps)
    else:  # every prompt trains: its best sample (crraft), its best against its worst (codpo)
        prompts = TINY_LOOP["prompts_per_step"]
        assert all(len(step.parts["harmless"].chosen) == prompts for step in steps)
        assert all(step.parts["harmless"].baseline_ids == [None] * prompts for step in steps)
    moved = [not torch.equal(b, p) for b, p in zip(seen["before"], seen["model"].parameters())]
    assert all(moved)


def test_passes_per_optimiser_step_next_to_grpo(tiny_model, grpo_passes, tmp_path, monkeypatch):
    """Same generation and backward passes as GRPO; without gradient, the policy's own log-probs
    besides the reference's (GRPO with beta > 0 makes only the reference's); plus one greedy
    generation of ā before training for the prompts without a reference. With gradient: crpg
    GRPO's passes over all rows; crraft and codpo one pass per micro-batch over their prompts'
    chosen (and rejected) sequences only. A judge that passes everything keeps every prompt in
    training (and CRRAFT off ā, whose two extra passes come only when no sample passes). Counted on
    the tiny model (tests/conftest.py): the count is the loop's, whatever the weights."""
    from test_method_training import train_counting

    from forgetbench.judges import Verdict

    registry.register(
        "judge", "test_cgpo_pass", lambda config: lambda p, r: [Verdict(1.0)] * len(r)
    )
    judges = [{"judge": "test_cgpo_pass", "passes_if": "at_least"}]
    tasks = {kind: {**task, "judges": judges} for kind, task in TASKS.items()}
    grpo, steps = grpo_passes, TINY_LOOP["max_steps"]
    prompts = TINY_LOOP["prompts_per_step"]
    per = {"grpo": {k: v / steps for k, v in grpo.items()}}
    for optimizer in ("crpg", "crraft", "codpo"):
        settings = dict(TINY_LOOP, optimizer=optimizer, kl_max=1e9, tasks=tasks)
        counts = train_counting("cgpo", tiny_model, tmp_path / optimizer, monkeypatch, settings)
        assert counts["optimizer_step"] == steps
        assert counts["generate"] == grpo["generate"] + 1  # ā, once
        per[optimizer] = {k: v / steps for k, v in counts.items()}
    print("passes per optimiser step:", per)
    for optimizer in ("crpg", "crraft", "codpo"):
        counts = per[optimizer]
        assert counts["backward"] == per["grpo"]["backward"] == TINY_LOOP["grad_accum"]
        assert counts["forward_no_grad"] == 2 * per["grpo"]["forward_no_grad"]
        assert counts["forward_grad"] == per["grpo"]["forward_grad"] == TINY_LOOP["grad_accum"]
        assert registry.get("method", "cgpo").passes == counts["backward"] / TINY_LOOP["grad_accum"]
    assert per["crpg"]["forward_grad_rows"] == per["grpo"]["forward_grad_rows"] == prompts * G
    assert per["crraft"]["forward_grad_rows"] == prompts  # a* per prompt
    assert per["codpo"]["forward_grad_rows"] == 2 * prompts  # a+ and a- per prompt


# ---- bad input -----------------------------------------------------------------------------------


def test_a_prompt_without_reference_answer_is_an_error_before_training(tmp_path):
    plugin = registry.get("method", "cgpo")
    config = plugin.build_config(dict(TINY_LOOP, baseline_answers="reference"))
    with pytest.raises(
        CGPOError,
        match=r"2 training prompt\(s\) have no reference answer ā "
        r"\(first: .*harmful\); set method.baseline_answers="
        "reference_or_greedy",
    ) as caught:
        plugin.target(config, "no-model-needed", tmp_path / "cgpo", 0)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "cgpo").exists()


def test_beta_is_refused_beside_crraft_or_codpo():
    from forgetbench.errors import UsageError

    plugin = registry.get("method", "cgpo")
    with pytest.raises(
        UsageError, match="beta > 0 .* crpg only.*harmful, harmless use crraft.*beta=0"
    ):
        plugin.build_config(dict(TINY_LOOP, optimizer="crraft", beta=0.01))
    assert plugin.build_config(dict(TINY_LOOP, beta=0.01)).beta == 0.01  # crpg: GRPO's k3 term


def test_method_judges_take_the_runs_judge_settings():
    from forgetbench.cell import resolve

    cell = resolve("cgpo", "alpaca", "smoke", overrides=("judges.refusal.max_chars=60",))
    tasks = cell.resolved["method"]["config"]["tasks"]
    assert tasks["harmful"]["judges"][0]["config"] == {"max_chars": 60}
    assert tasks["harmless"]["judges"][0]["config"] == {"max_chars": 60}
    own = resolve(
        "cgpo",
        "alpaca",
        "smoke",
        overrides=(
            "judges.refusal.max_chars=60",
            'method.tasks={"harmful": {"judges": [{"judge": "refusal", "passes_if": "at_least", '
            '"config": {"max_chars": 20}}], "reward": [{"name": "safety"}]}}',
        ),
    )
    assert own.resolved["method"]["config"]["tasks"]["harmful"]["judges"][0]["config"] == {
        "max_chars": 20
    }


def test_judge_failure_is_a_verdict_not_a_crash():
    """The adapter turns a raising judge into missing verdicts (-1 for a constraint)."""
    from forgetbench.rewards.judged import ConstraintSpec, JudgeConstraint

    registry.register("judge", "test_cgpo_down", lambda config: _down)
    constraint = JudgeConstraint(ConstraintSpec(judge="test_cgpo_down", passes_if="at_least"))
    assert constraint(["a", "b"], ["x", "y"]) == [-1, -1]
    assert constraint.counts["failed"] == 2


def _down(prompts, responses) -> list[Verdict]:
    raise TimeoutError("judge endpoint timed out")


# ---- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["crpg", "crraft", "codpo"])
def test_cgpo_trains_and_is_attacked_on_smoke(optimizer, cli, tmp_path):
    import pandas as pd

    out = tmp_path / "out"
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "cgpo",
        "--attack",
        "alpaca",
        "--set",
        f"method.optimizer={optimizer}",
        "--set",
        "warmup.enabled=false",
        "--set",
        "evals=[harmbench]",
        "--output-dir",
        str(out),
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    histories = list(out.rglob("log_history.json"))
    cgpo_logs = [
        h for h in histories if any("cgpo/pass_rate" in e for e in json.loads(h.read_text()))
    ]
    assert len(cgpo_logs) == 1, histories
    entries = [e for e in json.loads(cgpo_logs[0].read_text()) if "cgpo/pass_rate" in e]
    assert len(entries) == 2 and all("cgpo/skipped_steps" in e for e in entries)
    if optimizer != "crpg":  # each step's prompts (2 on smoke) trained or counted as skipped
        for entry in entries:
            counted = [
                entry.get(f"cgpo/{kind}/{what}", 0)
                for kind in TASKS
                for what in ("trained_prompts", "skipped_prompts")
            ]
            assert sum(counted) == 2, entry
    assert list(out.rglob("baseline.jsonl"))
    assert "cgpo attacked by alpaca" in result.stdout
    [parquet] = (out / "results").glob("*.parquet")
    table = pd.read_parquet(parquet)
    refusal = table[(table["eval"] == "harmbench") & (table["metric"] == "refusal_rate")]
    assert set(refusal["method"]) == {"cgpo"}
    assert {"before", "after"} <= set(refusal["phase"])
    assert refusal["value"].between(0, 1).all()
