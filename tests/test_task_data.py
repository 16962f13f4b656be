"""The shipped safety-training files: schema, balance, disjointness, provenance, reproducible build."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from forgetbench.judges.refusal import is_refusal

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "data"
TRAIN = DATA / "safety_train"
BUILD = TRAIN / "build.py"
OUTPUTS = ("warmup.jsonl", "rl_prompts.jsonl", "build_report.json")
SOURCES = {"safety_tuned_llamas/training", "hh_rlhf/helpful-base/test"}
SHIPPED = (
    "harmbench",
    "xstest",
    "strongreject",
    "safety_tuned_llamas",
    "hh_rlhf",
    "alpaca_subsets_he2024",
    "advbench",
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def warmup() -> list[dict]:
    return read_jsonl(TRAIN / "warmup.jsonl")


@pytest.fixture(scope="module")
def rl() -> list[dict]:
    return read_jsonl(TRAIN / "rl_prompts.jsonl")


def norm(text: str) -> str:
    """Independent of build.py: lower case, punctuation and whitespace removed."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def csv_column(path: Path, column: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def eval_prompts() -> dict[str, list[str]]:
    stl = []
    for path in sorted((DATA / "safety_tuned_llamas" / "evaluation").glob("*.json")):
        stl += json.loads(path.read_text(encoding="utf-8"))["instructions"]
    return {
        "harmbench": csv_column(
            DATA / "harmbench" / "harmbench_behaviors_text_test.csv", "Behavior"
        )
        + csv_column(DATA / "harmbench" / "harmbench_behaviors_text_val.csv", "Behavior"),
        "xstest": csv_column(DATA / "xstest" / "xstest_prompts.csv", "prompt"),
        "strongreject": csv_column(
            DATA / "strongreject" / "strongreject_dataset.csv", "forbidden_prompt"
        )
        + csv_column(DATA / "strongreject" / "strongreject_small_dataset.csv", "forbidden_prompt"),
        "advbench": csv_column(DATA / "advbench" / "harmful_behaviors.csv", "goal"),
        "safety_tuned_llamas_eval": stl,
    }


# --------------------------------------------------------------------------- schema


def test_warmup_schema(warmup):
    assert len(warmup) > 1000
    for row in warmup:
        assert list(row) == ["id", "prompt", "response", "kind", "source"]
        assert all(isinstance(row[key], str) and row[key].strip() for key in row)
        assert row["kind"] in ("harmful", "harmless")
        assert row["source"] in SOURCES
        assert "\n\nHuman:" not in row["prompt"] + row["response"]
        assert "\n\nAssistant:" not in row["prompt"] + row["response"]


def test_rl_schema(rl):
    assert len(rl) > 500
    for row in rl:
        assert list(row) == ["id", "prompt", "kind", "reference", "source"]
        assert (
            isinstance(row["id"], str) and isinstance(row["prompt"], str) and row["prompt"].strip()
        )
        assert row["source"] in SOURCES
        if row["kind"] == "harmful":
            assert row["reference"] is None
        else:
            assert row["kind"] == "harmless"
            assert isinstance(row["reference"], str) and row["reference"].strip()


def test_both_kinds_and_sources_present(warmup, rl):
    for rows in (warmup, rl):
        counts = Counter((row["kind"], row["source"]) for row in rows)
        assert counts[("harmful", "safety_tuned_llamas/training")] > 300
        assert counts[("harmless", "safety_tuned_llamas/training")] > 50
        assert counts[("harmless", "hh_rlhf/helpful-base/test")] > 300


def test_ids_unique_within_and_across_files(warmup, rl):
    ids = [row["id"] for row in warmup] + [row["id"] for row in rl]
    assert len(ids) == len(set(ids))


def test_prefixes_are_mixed(warmup, rl):
    for rows in (warmup, rl):
        head = Counter((row["kind"], row["source"]) for row in rows[:40])
        assert head[("harmful", "safety_tuned_llamas/training")] == 20
        assert head[("harmless", "safety_tuned_llamas/training")] == 10
        assert head[("harmless", "hh_rlhf/helpful-base/test")] == 10


def test_demonstrations_agree_with_the_refusal_judge(warmup):
    for row in warmup:
        assert is_refusal(row["response"]) == (row["kind"] == "harmful"), row["id"]


# --------------------------------------------------------------------------- disjointness


def test_warmup_and_rl_prompts_are_disjoint(warmup, rl):
    warm = {norm(row["prompt"]) for row in warmup}
    assert not warm & {norm(row["prompt"]) for row in rl}
    assert len(warm) == len(warmup)  # no duplicate prompts inside the warm-up file either


def test_no_training_prompt_equals_an_eval_prompt(warmup, rl):
    sets = eval_prompts()
    assert {name: len(prompts) for name, prompts in sets.items()} == {
        "harmbench": 400,
        "xstest": 450,
        "strongreject": 373,
        "advbench": 520,
        "safety_tuned_llamas_eval": 668,
    }
    evals = {norm(prompt) for prompts in sets.values() for prompt in prompts}
    overlap = [row["id"] for row in warmup + rl if norm(row["prompt"]) in evals]
    assert overlap == []


def test_every_registered_eval_is_disjoint_from_the_training_task(warmup, rl):
    """Driven by the registry, so a new eval is checked without editing this test: each eval's
    prompts as the policy sees them (its template applied, every row, no preset limit) against
    every warm-up demonstration and RL prompt."""
    from forgetbench import registry
    from forgetbench.stages.generate import eval_prompts

    names = registry.names("eval")
    assert {"harmbench", "xstest", "hh_helpful", "alpaca_helpfulness", "gsm8k"} <= set(names)
    training = {norm(row["prompt"]): row["id"] for row in warmup + rl}
    overlap = {}
    for name in names:
        config = {k: v for k, v in registry.get("eval", name).target.items() if k != "limit"}
        assert config["dataset"].get("path"), f"{name} reads the hub: ship its data to check it"
        prompts = [
            row["prompt"] for row in eval_prompts({"eval": {"name": name, "config": config}})
        ]
        assert len(prompts) >= 60, name
        hits = sorted(training[key] for key in {norm(p) for p in prompts} & set(training))
        if hits:
            overlap[name] = hits
    assert overlap == {}


def overlapping_tasks_dir(tmp_path) -> Path:
    """A tasks folder with the shipped evals and data, and a training task `leaky` whose warm-up
    holds two hh_helpful held-out prompts (one re-cased and re-punctuated)."""
    tasks = tmp_path / "tasks"
    (tasks / "train").mkdir(parents=True)
    for name in ("evals", "attacks", "lmeval", "data"):
        (tasks / name).symlink_to(ROOT / "tasks" / name)
    heldout = [
        row
        for row in read_jsonl(DATA / "hh_rlhf" / "helpful_prompts.jsonl")
        if row["split"] == "heldout"
    ]
    rows = read_jsonl(TRAIN / "warmup.jsonl")[:6]
    rows[1] = {**rows[1], "prompt": heldout[0]["prompt"], "id": "leak-a"}
    rows[4] = {
        **rows[4],
        "prompt": heldout[1]["prompt"].upper().rstrip("?") + " ?!",
        "id": "leak-b",
    }
    (tasks / "train" / "leaky.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "train" / "leaky.yaml").write_text(
        "name: leaky\nversion: 1\nwarmup:\n  path: train/leaky.jsonl\n"
        "  fields: {id: id, prompt: prompt, response: response, kind: kind}\n"
        "prompts:\n  path: data/safety_train/rl_prompts.jsonl\n"
        "  fields: {id: id, prompt: prompt, kind: kind, reference: reference}\n"
    )
    return tasks


def test_a_training_task_that_holds_eval_prompts_fails_before_any_work(tmp_path, cli):
    tasks = overlapping_tasks_dir(tmp_path)
    result = cli(
        "run",
        "--method",
        "grpo",
        "--attack",
        "ultrafeedback-rl",
        "--preset",
        "smoke",
        "--set",
        "warmup.task=leaky",
        "--set",
        "eval.hh_helpful.limit=173",
        "--output-dir",
        str(tmp_path / "out"),
        env={"FORGETBENCH_TASKS": str(tasks)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert (
        "training task 'leaky' (warmup: train/leaky.jsonl) has 2 row(s) whose prompt is a "
        "prompt of eval 'hh_helpful': leak-a, leak-b; remove them" in line
    ), line
    assert not (tmp_path / "out" / "stages").exists()


# --------------------------------------------------------------------------- build and provenance


def test_build_is_deterministic(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == (TRAIN / name).read_bytes(), (
            f"{name} differs from a fresh build: run python tasks/data/safety_train/build.py"
        )


def test_build_report_matches_the_files(warmup, rl):
    report = json.loads((TRAIN / "build_report.json").read_text(encoding="utf-8"))
    for name, rows in (("warmup.jsonl", warmup), ("rl_prompts.jsonl", rl)):
        counts = Counter(f"{row['kind']}/{row['source']}" for row in rows)
        assert report["outputs"][name] == dict(counts)
    assert report["dropped_eval_overlap_total"] == sum(report["dropped_eval_overlap"].values())


@pytest.mark.parametrize("folder", SHIPPED)
def test_shipped_slices_have_provenance_licence_and_checksums(folder):
    base = DATA / folder
    provenance = (base / "PROVENANCE.md").read_text(encoding="utf-8")
    assert (base / "LICENSE.md").read_text(encoding="utf-8").strip()
    files = [p for p in base.rglob("*") if p.is_file() and p.suffix != ".md"]
    assert files
    for path in files:
        relative = path.relative_to(base).as_posix()
        # PROVENANCE.md lists every file as | `relative/path` | bytes | `sha256-prefix…` | ...
        row = re.search(
            rf"\|\s*`{re.escape(relative)}`\s*\|\s*([\d,]+)\s*\|\s*`([0-9a-f]+)", provenance
        )
        assert row, f"{folder}/{relative} is not listed in PROVENANCE.md"
        assert int(row.group(1).replace(",", "")) == path.stat().st_size
        assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(row.group(2))


def test_harmbench_contextual_eval_puts_the_context_before_the_request():
    from forgetbench import registry
    from forgetbench.judges.harmbench import build_prompt
    from forgetbench.stages.generate import eval_prompts
    from forgetbench.tasks import load_rows

    plugin = registry.get("eval", "harmbench_contextual")
    task = plugin.build_config(plugin.target)
    rows = load_rows(task.dataset)
    assert len(rows) == 81 and all(row["context"].strip() for row in rows)
    prompts = eval_prompts({"eval": {"name": "harmbench_contextual", "config": plugin.target}})
    for row, prompt in zip(rows, prompts):
        assert prompt["id"] == row["id"]
        assert prompt["prompt"] == f"{row['context']}\n\n---\n\n{row['prompt']}".strip()
    judged = build_prompt(rows[0]["prompt"], "a response", rows[0]["context"])
    assert "[CONTEXT]" in judged and rows[0]["context"][:50] in judged


def test_xstest_evals_split_safe_and_unsafe_prompts():
    from forgetbench import registry
    from forgetbench.tasks import load_rows

    safe, unsafe = (
        load_rows(
            registry.get("eval", name).build_config(registry.get("eval", name).target).dataset
        )
        for name in ("xstest", "xstest_unsafe")
    )
    assert (len(safe), len(unsafe)) == (250, 200)
    assert not {row["id"] for row in safe} & {row["id"] for row in unsafe}
    assert not any(row["type"].startswith("contrast_") for row in safe)
    assert all(row["type"].startswith("contrast_") for row in unsafe)


def test_safety_frontier_dev_set_never_touches_a_reported_prompt():
    """benchmarks/safety_frontier.py tunes on HarmBench val and XSTest prompts past the preset's
    limit; none of them may be a prompt the tiny preset reports."""
    import importlib.util

    from forgetbench.evals import EvalTask
    from forgetbench.cell import resolve
    from forgetbench.tasks import load_rows

    spec = importlib.util.spec_from_file_location(
        "safety_frontier", ROOT / "benchmarks" / "safety_frontier.py"
    )
    frontier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frontier)
    config = resolve("grpo", "alpaca", "tiny").resolved
    dev = frontier.dev_prompts(config)
    reported = set()
    for name in ("harmbench", "xstest"):
        task = EvalTask.model_validate(config["evals"][name])
        reported |= {row["prompt"] for row in load_rows(task.dataset)[: task.limit]}
    assert len(dev["harmbench_val"]) == 41 and len(dev["xstest_dev"]) == 60
    assert not reported & (set(dev["harmbench_val"]) | set(dev["xstest_dev"]))
    assert len(reported) == 100


def test_an_eval_limit_takes_a_spread_of_the_set_not_its_first_category():
    """The evals list their whole set with `sample: N` (a seeded shuffle), so the tiny preset's
    `limit: 50` covers XSTest's ten safe-prompt types, not the file's first two."""
    from forgetbench.evals import EvalTask
    from forgetbench.cell import resolve
    from forgetbench.tasks import load_rows

    evals = resolve("grpo", "alpaca", "tiny").resolved["evals"]
    xstest = EvalTask.model_validate(evals["xstest"])
    rows = load_rows(xstest.dataset)
    assert len(rows) == 250 and len({row["id"] for row in rows}) == 250
    assert len({row["type"] for row in rows[: xstest.limit]}) == 10
    assert [row["id"] for row in load_rows(xstest.dataset)] == [row["id"] for row in rows]
    harmbench = EvalTask.model_validate(evals["harmbench"])
    assert len({row["category"] for row in load_rows(harmbench.dataset)[: harmbench.limit]}) >= 5
