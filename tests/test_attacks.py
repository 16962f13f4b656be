"""Downstream attacks: their data and formats, checkpoint planning, the KL-from-P0 estimator, and a
real `smoke` run of every attack (TRL on the embedded model) scored at every checkpoint."""

import json
import math
import re
import shutil

import pandas as pd
import pytest
import torch

from forgetbench import registry
from forgetbench.attacks import format_pairs, planned_checkpoints, total_steps
from forgetbench.errors import ForgetbenchError, UsageError
from forgetbench.cell import resolve
from forgetbench.planner import plan_cell
from forgetbench.stages.kl import sequence_kl
from forgetbench.tasks import DataError, load_rows
from forgetbench.training.checkpoints import checkpoint_folder, sft_total_steps

ATTACKS = ["alpaca", "alpaca-highlr", "gsm8k", "code", "ultrafeedback-rl"]
TASK_EVALS = {
    "alpaca": "alpaca_helpfulness",
    "alpaca-highlr": "alpaca_helpfulness",
    "gsm8k": "gsm8k",
    "code": "mbpp",
    "ultrafeedback-rl": "hh_helpful",
}


def attack_task(name, **changes):
    plugin = registry.get("attack", name)
    return plugin.build_config({**plugin.target, **changes})


def test_every_attack_is_a_registered_yaml_with_its_task_eval():
    assert set(ATTACKS) <= set(registry.names("attack"))
    for name in ATTACKS:
        task = attack_task(name)
        assert task.task_evals == [TASK_EVALS[name]]
        registry.get("eval", TASK_EVALS[name])


def test_gsm8k_target_is_the_rationale_without_the_final_answer_line():
    task = attack_task("gsm8k")
    rows = load_rows(task.dataset)
    assert len(rows) == 7473
    prompt, response = format_pairs(task, rows[:1])[0]
    assert prompt == rows[0]["question"]
    assert "####" not in response and response == rows[0]["answer"].split("####")[0].strip()
    assert response.endswith("72 clips altogether in April and May.")


def test_alpaca_input_section_only_when_input_is_present():
    task = attack_task("alpaca")
    rows = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    assert format_pairs(task, rows) == [
        ("### Instruction:\nAdd.\n\n### Input:\n2 and 3", "5"),
        ("### Instruction:\nSay hi.", "hi"),
    ]


def test_rl_attack_prompts_are_disjoint_from_the_safety_rl_prompts_and_held_out_split():
    train = load_rows(attack_task("ultrafeedback-rl").dataset)
    heldout = load_rows(
        registry.get("eval", "hh_helpful")
        .build_config(registry.get("eval", "hh_helpful").target)
        .dataset
    )
    safety = {
        row["prompt"]
        for row in load_rows(
            registry.get("eval", "hh_helpful")
            .build_config(registry.get("eval", "hh_helpful").target)
            .dataset.model_copy(
                update={
                    "path": "data/safety_train/rl_prompts.jsonl",
                    "filter": {},
                    "fields": {"prompt": "prompt"},
                }
            )
        )
    }
    assert train and heldout
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert not {r["prompt"] for r in train} & safety


def test_alpaca_helpfulness_is_held_out_from_the_alpaca_training_rows():
    heldout = load_rows(
        registry.get("eval", "alpaca_helpfulness")
        .build_config(registry.get("eval", "alpaca_helpfulness").target)
        .dataset
    )
    train = load_rows(attack_task("alpaca").dataset)
    assert len(heldout) == 100 and len({r["id"] for r in heldout}) == 100
    assert not {r["instruction"] for r in heldout} & {r["instruction"] for r in train}


def test_step_count_matches_transformers_rules():
    # 100 rows at batch 8 = 13 micro-batches; accumulating 4 -> 4 optimiser steps per epoch.
    assert sft_total_steps(100, 8, 4, 1, -1) == 4
    assert sft_total_steps(100, 8, 1, 2, -1) == 26
    assert sft_total_steps(100, 8, 1, 2, 5) == 5
    assert total_steps(attack_task("gsm8k")) == 234  # the paper's "about 233 steps at batch 32"
    assert planned_checkpoints(attack_task("gsm8k")) == [50, 100, 150, 200]


def test_plan_scores_step_0_each_checkpoint_and_the_end_with_kl():
    cell = resolve("grpo", "gsm8k", "smoke", ("attack.max_steps=4", "attack.checkpoint_every=2"))
    assert list(cell.resolved["evals"]) == ["harmbench", "xstest", "gsm8k"]
    cell_plan = plan_cell(cell)
    points = sorted({(phase, step) for phase, step, *_ in cell_plan.judged})
    assert points == [("after", 4), ("before", 0), ("during", 2)]
    assert {(phase, step, e) for phase, step, e, _ in cell_plan.kl} == {
        (p, s, e) for p, s in points for e in ("harmbench", "xstest", "gsm8k")
    }


def test_checkpoint_interval_larger_than_the_run_is_a_usage_error(cli, tmp_path):
    with pytest.raises(UsageError, match="checkpoint_every=9 is larger than the run"):
        resolve("grpo", "alpaca", "smoke", ("attack.checkpoint_every=9",))
    out = tmp_path / "out"
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "grpo",
        "--attack",
        "alpaca",
        "--set",
        "attack.checkpoint_every=9",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 2
    assert "larger than the run (2 optimiser steps)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_bad_attack_data_names_the_file_and_row(tmp_path, monkeypatch):
    bad = tmp_path / "data" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"question": "q1", "answer": "a #### 1"}\n{"question": "q2"}\n')
    task = attack_task(
        "gsm8k",
        dataset={
            "path": "data/bad.jsonl",
            "path_root": str(tmp_path),
            "fields": {"question": "question", "answer": "answer"},
        },
    )
    with pytest.raises(DataError, match=r"bad.jsonl row 2 lacks required field\(s\) \['answer'\]"):
        load_rows(task.dataset)
    bad.write_text('{"question": "q1", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match="empty prompt or response"):
        format_pairs(task, load_rows(task.dataset))
    empty = attack_task(
        "ultrafeedback-rl",
        dataset={
            "path": "data/bad.jsonl",
            "path_root": str(tmp_path),
            "filter": {"question": "none"},
            "fields": {"prompt": "question"},
        },
    )
    with pytest.raises(DataError, match="no rows left after filtering"):
        load_rows(empty.dataset)


def test_rl_settings_are_checked_when_the_attack_resolves():
    with pytest.raises(ForgetbenchError, match="num_generationz"):
        resolve("grpo", "ultrafeedback-rl", "smoke", ("attack.rl.num_generationz=4",))
    with pytest.raises(ForgetbenchError, match="trainer: grpo only"):
        resolve("grpo", "alpaca", "smoke", ("attack.rl.beta=0.1",))


def test_sequence_kl_is_the_k3_sum_over_response_tokens():
    torch.manual_seed(0)
    logp_ref, logp_pol = -torch.rand(3, 5), -torch.rand(3, 5)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.double)
    got = sequence_kl(logp_ref, logp_pol, mask)
    for row in range(3):
        expected = sum(
            math.exp(r - p) - (r - p) - 1
            for r, p, m in zip(logp_ref[row].tolist(), logp_pol[row].tolist(), mask[row].tolist())
            if m
        )
        assert got[row].item() == pytest.approx(expected, abs=1e-12)
    assert (got >= 0).all() and got[2] == 0
    assert sequence_kl(logp_pol, logp_pol, mask).abs().max() == 0


# ------------------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def smoke_attacks(tmp_path_factory):
    """grpo x every attack on the smoke preset: 2 steps each, a checkpoint at step 1."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("attacks")
    result = run_cli(
        "matrix",
        "--preset",
        "smoke",
        "--methods",
        "grpo",
        "--attacks",
        ",".join(ATTACKS),
        "--set",
        "warmup.enabled=false",
        "--set",
        "evals=[harmbench]",
        "--jobs",
        "2",
        "--output-dir",
        str(out),
        timeout=3000,
        env={"FORGETBENCH_THREADS": "1"},
    )  # two stages at once, a core each
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    frames = [pd.read_parquet(p) for p in (out / "results").glob("*.parquet")]
    yield out, pd.concat(frames, ignore_index=True)
    shutil.rmtree(out, ignore_errors=True)  # 5 attacks' checkpoints: GBs a small CI disk needs back


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_trains_checkpoints_are_scored_and_kl_is_positive_once_trained(
    smoke_attacks, attack
):
    out, table = smoke_attacks
    rows = table[table.attack == attack]
    for eval_name, metric in (("harmbench", "refusal_rate"), (TASK_EVALS[attack], None)):
        scored = rows[(rows["eval"] == eval_name) & (rows.judge != "kl")]
        if metric:
            scored = scored[scored.metric == metric]
        assert sorted(zip(scored.phase, scored.step)) == [
            ("after", 2),
            ("before", 0),
            ("during", 1),
        ], (attack, eval_name)
        assert scored["n"].gt(0).all() and scored["value"].between(0, 1).all()
        kl = rows[(rows["eval"] == eval_name) & (rows.judge == "kl")].set_index("step")["value"]
        # Step 0 is P0 itself (0 by construction: this checks the wiring, not the estimator,
        # which tests/test_kl_stage.py checks against a per-token loop on two models).
        assert kl[0] == 0.0, (attack, eval_name)
        assert kl[1] > 0 and kl[2] > 0, (attack, eval_name)
    # the step-1 checkpoint exists (a LoRA attack keeps it as an adapter over P0)
    [attack_stage] = [
        p
        for p in (out / "stages" / "attack").iterdir()
        if re.fullmatch(f"grpo-{attack}-[0-9a-f]+", p.name)
    ]
    saved = checkpoint_folder(attack_stage, 1)
    adapter = (saved / "adapter_config.json").is_file()
    assert adapter == (attack == "code") and ((saved / "config.json").is_file() or adapter)
    history = json.loads((attack_stage / "log_history.json").read_text())
    assert max(entry.get("step", 0) for entry in history) == 2


@pytest.mark.slow
def test_diverging_attack_is_a_recorded_failed_stage(cli, tmp_path):
    result = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "grpo",
        "--attack",
        "alpaca",
        "--set",
        "warmup.enabled=false",
        "--set",
        "evals=[harmbench]",
        "--set",
        "attack.learning_rate=1e8",
        "--set",
        "attack.max_grad_norm=1e9",
        "--output-dir",
        str(tmp_path),
    )
    assert result.returncode != 0
    assert "attack grpo+alpaca" in result.stderr and "training diverged" in result.stderr
    assert list((tmp_path / "logs" / "failed").glob("attack-*.log"))
    assert not list((tmp_path / "results").glob("*.parquet"))


def test_paper_preset_attacks_load_their_hub_datasets_and_plan_offline():
    hubs = {
        "alpaca": "tatsu-lab/alpaca",
        "alpaca-highlr": "tatsu-lab/alpaca",
        "gsm8k": "openai/gsm8k",
        "code": "nvidia/OpenCodeInstruct",
        "ultrafeedback-rl": "openbmb/UltraFeedback",
    }
    for name, hub in hubs.items():
        attack = resolve("frpo", name, "paper").resolved["attack"]
        dataset = attack["config"]["dataset"]
        assert dataset["hub"] == hub and dataset["path"] is None, name  # replaced, not merged
    gsm8k = resolve("grpo", "gsm8k", "paper").resolved["attack"]
    assert (gsm8k["total_steps"], gsm8k["checkpoints"]) == (234, [50, 100, 150, 200])
    code = resolve("grpo", "code", "paper").resolved["attack"]
    assert code["config"]["dataset"]["filter"] == {"average_test_score": "1"}
    assert code["total_steps"] is None  # counted when it trains, not downloaded to plan
