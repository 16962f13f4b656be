"""The `cgpo` method (CRPG) on the real embedded model and real TRL: the advantages TRL's loss gets
are forgetbench.cgpo's pure functions of what the run recorded; with every judge "violated" (or
failing) a real step leaves the weights alone, with every judge passing it moves them (the
unmerged TRL PR #2190's checks); passes per optimiser step next to GRPO's; bad input."""

from __future__ import annotations

import json

import pytest
import torch

from forgetbench import registry
from forgetbench.cgpo import CGPOError, calibrated_rewards, crpg_multitask_advantages
from forgetbench.judges import Verdict
from forgetbench.judges.refusal import is_refusal
from forgetbench.models import resolve_model

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
def model_path():
    return resolve_model("smollm2-135m-instruct")


def train_recording(settings: dict, model_path, out, monkeypatch):
    """Run the cgpo plugin; return its scorer, the advantages of every micro-batch TRL's loss
    got, the parameters before the first step and the trained model, and the run's log."""
    from trl import GRPOTrainer

    seen = {"advantages": []}
    compute = GRPOTrainer._compute_loss

    def recording(self, model, inputs):
        if "model" not in seen:
            seen.update(
                scorer=self.cgpo,
                model=model,
                before=[p.detach().clone() for p in model.parameters()],
            )
        seen["advantages"].append(inputs["advantages"].detach().double().cpu().clone())
        return compute(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", recording)
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


def test_every_judge_violated_or_failing_a_real_step_does_not_move_the_weights(
    model_path, tmp_path, monkeypatch
):
    def flaky(config):
        def score(prompts, responses):
            raise ConnectionError("judge endpoint refused the connection")

        return score

    registry.register("judge", "test_cgpo_flaky", flaky)
    settings = dict(
        HARMLESS_ONLY,
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
    rows = TINY_LOOP["prompts_per_step"] * G
    logged = [entry for entry in seen["history"] if "cgpo/pass_rate" in entry]
    assert [entry["cgpo/skipped_steps"] for entry in logged] == [1.0, 2.0]
    for entry in logged:
        assert entry["cgpo/pass_rate"] == 0.0 and entry["loss"] == 0.0
        assert entry["cgpo/harmless/test_cgpo_flaky/failed"] == rows  # -1 counted, no crash
        assert entry["cgpo/harmless/test_cgpo_flaky/rejected"] == 1.0
        assert entry["cgpo/harmless/refusal/rejected"] == 1.0


def test_every_judge_passing_a_real_step_moves_the_weights(model_path, tmp_path, monkeypatch):
    # kl_max out of reach: at lr 1e-3 the first step takes the policy beyond KL_seq = 5, and the
    # KL gate alone would then zero (and skip) the second step
    settings = dict(
        HARMLESS_ONLY,
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
    assert any(step.advantages.abs().max() > 0 for step in steps)
    moved = [not torch.equal(b, p) for b, p in zip(seen["before"], seen["model"].parameters())]
    assert all(moved)


def test_passes_per_optimiser_step_next_to_grpo(tiny_model, grpo_passes, tmp_path, monkeypatch):
    """Same generation and backward passes as GRPO; without gradient, the policy's own log-probs
    besides the reference's (GRPO with beta > 0 makes only the reference's); plus one greedy
    generation of ā before training for the prompts without a reference. Counted on the tiny
    model (tests/conftest.py): the count is the loop's, whatever the weights."""
    from test_method_training import train_counting

    grpo = grpo_passes
    cgpo = train_counting("cgpo", tiny_model, tmp_path, monkeypatch, TINY_LOOP)
    steps = TINY_LOOP["max_steps"]
    assert grpo["optimizer_step"] == cgpo["optimizer_step"] == steps
    per = {
        name: {k: v / steps for k, v in counts.items()}
        for name, counts in (("grpo", grpo), ("cgpo", cgpo))
    }
    print("passes per optimiser step:", per)
    assert per["cgpo"]["backward"] == per["grpo"]["backward"] == TINY_LOOP["grad_accum"]
    assert per["cgpo"]["forward_grad"] == per["grpo"]["forward_grad"]
    assert cgpo["generate"] == grpo["generate"] + 1  # ā, once
    assert per["cgpo"]["forward_no_grad"] == 2 * per["grpo"]["forward_no_grad"]


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


def test_other_optimisers_are_refused_until_wired():
    from forgetbench.errors import UsageError

    with pytest.raises(UsageError, match="only optimizer crpg is wired.*set method.optimizer=crpg"):
        registry.get("method", "cgpo").build_config(dict(TINY_LOOP, optimizer="crraft"))


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
def test_cgpo_trains_and_is_attacked_on_smoke(cli, tmp_path):
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
    assert list(out.rglob("baseline.jsonl"))
    assert "cgpo attacked by alpaca" in result.stdout
    [parquet] = (out / "results").glob("*.parquet")
    table = pd.read_parquet(parquet)
    refusal = table[(table["eval"] == "harmbench") & (table["metric"] == "refusal_rate")]
    assert set(refusal["method"]) == {"cgpo"}
    assert {"before", "after"} <= set(refusal["phase"])
    assert refusal["value"].between(0, 1).all()
