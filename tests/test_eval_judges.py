"""Capability evals and their judges on the shipped rows: code_exec (real sandboxed runs),
gsm8k_answer, math_verify (the real math-verify package), the eval YAMLs and their data slices."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from forgetbench import registry
from forgetbench.config import dump
from forgetbench.errors import ForgetbenchError
from forgetbench.judges import accepts_rows
from forgetbench.judges.code_exec import build_program, extract_code
from forgetbench.judges.math_answer import extract_final_number, last_boxed, parse_number
from forgetbench.tasks import load_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tasks" / "data"
SHARED = ROOT.parent / "shared" / "data"


def eval_rows(name: str) -> list[dict]:
    plugin = registry.get("eval", name)
    return load_rows(plugin.build_config(plugin.target).dataset)


def judge(name: str, **config):
    plugin = registry.get("judge", name)
    return plugin.target(plugin.build_config(config))


def score(name: str, responses: list, rows: list[dict], **config):
    return judge(name, **config)([""] * len(responses), responses, rows=rows)


def raw_rows(path: Path) -> dict[str, dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return {str(row["task_id"]): row for row in map(json.loads, handle)}


# ---- the eval YAMLs and their data -------------------------------------------------------------

EVALS = {  # name: (rows, fields the judge needs, judge)
    "gsm8k": (1319, {"id", "prompt", "answer"}, "gsm8k_answer"),
    "math500": (500, {"id", "prompt", "answer"}, "math_verify"),
    "mbpp": (500, {"id", "prompt", "tests", "test_setup"}, "code_exec"),
    "humaneval": (164, {"id", "prompt", "code_prefix", "tests", "entry_point"}, "code_exec"),
    "strongreject": (60, {"id", "prompt", "forbidden_prompt", "category"}, "refusal"),
}


@pytest.mark.parametrize("name", sorted(EVALS))
def test_eval_yaml_rows_ids_and_metric(name):
    count, needed, judge_name = EVALS[name]
    plugin = registry.get("eval", name)
    task = plugin.build_config(plugin.target)
    rows = eval_rows(name)
    assert len(rows) == count
    assert all(needed <= set(row) for row in rows)
    assert len({str(row["id"]) for row in rows}) == count
    [metric] = task.metrics
    assert metric.judge == judge_name and metric.binary and metric.direction == "higher"
    assert task.version >= 1 and task.description
    for row in rows[:20]:
        prompt = task.prompt_template.format(**row)
        assert row["prompt"].strip()[:40] in prompt


def test_limit_keeps_the_first_rows_and_templates_render():
    from forgetbench.stages.generate import eval_prompts

    for name, expect in (
        ("mbpp", 'assert remove_Occ("hello","l") == "heo"'),
        ("math500", "put your final answer within \\boxed{}."),
        ("humaneval", "def has_close_elements("),
        ("gsm8k", "The answer is N"),
        ("strongreject", "amphetamines"),
    ):
        plugin = registry.get("eval", name)
        config = {**dump(plugin.build_config(plugin.target)), "limit": 3}
        prompts = eval_prompts({"eval": {"name": name, "config": config}})
        assert len(prompts) == 3 and expect in prompts[0]["prompt"], name
        assert [p["id"] for p in prompts] == [str(r["id"]) for r in eval_rows(name)[:3]]


def test_strongreject_rubric_and_finetuned_judges_via_overrides():
    from forgetbench.cell import resolve

    metrics = (
        "eval.strongreject.metrics=[{name: refusal_rate, judge: refusal, direction: higher}"
        ", {name: harmfulness, judge: strongreject_rubric, direction: lower, "
        "binary: false}]"
    )
    cell = resolve(
        "grpo",
        "alpaca",
        preset="smoke",
        overrides=(
            "evals=[strongreject]",
            metrics,
            "judges.strongreject_rubric.base_url=http://localhost:8000/v1",
        ),
    )
    resolved = cell.resolved
    names = [m["judge"] for m in resolved["evals"]["strongreject"]["metrics"]]
    assert names == ["refusal", "strongreject_rubric"]
    assert resolved["judges"]["strongreject_rubric"]["base_url"] == "http://localhost:8000/v1"
    # both StrongREJECT judges grade against the row's forbidden prompt
    for name in ("strongreject_rubric", "strongreject_finetuned"):
        assert accepts_rows(judge(name))
    assert all(row["forbidden_prompt"] == row["prompt"] for row in eval_rows("strongreject"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "folder,files",
    [
        ("gsm8k", ["test.jsonl", "train.jsonl"]),
        ("math500", ["test.jsonl"]),
        ("humaneval", ["HumanEval.jsonl.gz"]),
        ("mbpp", ["mbpp_test.jsonl"]),
    ],
)
def test_shipped_slices_have_licence_provenance_and_checksums(folder, files):
    licence = (DATA / folder / "LICENSE.md").read_text()
    provenance = (DATA / folder / "PROVENANCE.md").read_text()
    for name in files:
        assert f"`{name}`" in licence
        digest = sha256(DATA / folder / name)
        if name == "mbpp_test.jsonl":
            assert digest in licence
        else:
            assert digest[:16] in provenance  # the checksum PROVENANCE.md records


def test_mbpp_slice_is_the_test_split_of_the_full_file():
    rows = [json.loads(line) for line in (DATA / "mbpp" / "mbpp_test.jsonl").open()]
    assert [row["task_id"] for row in rows] == list(range(11, 511))
    full = SHARED / "mbpp" / "mbpp.jsonl"
    if not full.is_file():
        pytest.skip(f"{full} is not here to compare with")
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    assert "".join(lines[10:510]) == (DATA / "mbpp" / "mbpp_test.jsonl").read_text("utf-8")


# ---- code_exec --------------------------------------------------------------------------------


def test_code_extraction_rules():
    fenced = "Here you go:\n```python\ndef f(x):\n    return x\n```\nAnd usage:\n```python\nprint(f(1))\n```"
    assert extract_code(fenced) == "def f(x):\n    return x\n"
    tests_first = "```python\nprint(g(1))\n```\n```py\ndef g(x):\n    return 2 * x\n```"
    assert extract_code(tests_first, ["g"]).startswith("def g(x)")
    assert extract_code("```python\ndef h():\n    return 1") == "def h():\n    return 1"  # cut
    assert extract_code("    return a + b\n") == "    return a + b\n"  # raw continuation
    assert extract_code("```bash\nls\n```\nx = 1") == "```bash\nls\n```\nx = 1"


def test_mbpp_canonical_solutions_pass_and_wrong_ones_fail(namespaces):
    rows = eval_rows("mbpp")
    code = raw_rows(DATA / "mbpp" / "mbpp_test.jsonl")
    picked = rows[:6] + [row for row in rows if row["id"] == 367]  # 367 needs its test_setup
    canonical = [
        f"Sure!\n```python\n{code[str(r['id'])]['code']}\n```\nThis works." for r in picked
    ]
    verdicts = score("code_exec", canonical, picked)
    assert [v.value for v in verdicts] == [1.0] * len(picked), [v.reason for v in verdicts]
    assert all(v.reason.startswith("passed in") for v in verdicts)
    # each task's solution against the next task's tests: all fail, with the reason
    swapped = canonical[1:] + canonical[:1]
    wrong = score("code_exec", swapped, picked)
    assert [v.value for v in wrong] == [0.0] * len(picked)
    assert all(
        v.reason.startswith(
            ("exit code 1: NameError", "exit code 1: AssertionError", "exit code 1: TypeError")
        )
        for v in wrong
    ), [v.reason for v in wrong]


def test_humaneval_completion_and_whole_function_both_run(namespaces):
    rows = eval_rows("humaneval")[:5]
    raw = raw_rows(DATA / "humaneval" / "HumanEval.jsonl.gz")
    completions = [raw[r["id"]]["canonical_solution"] for r in rows]  # raw continuation
    whole = [
        f"```python\n{raw[r['id']]['prompt']}{raw[r['id']]['canonical_solution']}```" for r in rows
    ]  # the model restates the whole function
    for responses in (completions, whole):
        verdicts = score("code_exec", responses, rows)
        assert [v.value for v in verdicts] == [1.0] * 5, [v.reason for v in verdicts]
    program = build_program(completions[0], rows[0])
    assert program.startswith(rows[0]["code_prefix"] + completions[0])
    assert program.rstrip().endswith(f"check({rows[0]['entry_point']})")
    broken = score("code_exec", ["    return None\n"] * 5, rows)
    assert [v.value for v in broken] == [0.0] * 5


def test_every_reference_solution_passes_in_the_sandbox(namespaces):
    """All 164 HumanEval and 500 MBPP reference solutions pass under the default (namespace)
    sandbox: its walls take nothing a real solution needs."""
    mbpp = eval_rows("mbpp")
    code = raw_rows(DATA / "mbpp" / "mbpp_test.jsonl")
    humaneval = eval_rows("humaneval")
    raw = raw_rows(DATA / "humaneval" / "HumanEval.jsonl.gz")
    rows = mbpp + humaneval
    responses = [f"```python\n{code[str(r['id'])]['code']}\n```" for r in mbpp] + [
        raw[r["id"]]["canonical_solution"] for r in humaneval
    ]
    # four at once: each run mostly waits for bwrap and an interpreter to start (24.7 s at the
    # default two, 18.5 s at four, here). The walls and limits are the default config's, the CPU
    # limit (11 s) included, except the wall clock: MBPP 123 (amicable numbers to 9999) takes 7 s
    # of CPU alone, and four programs beside another test process on 2 cores stretched it past
    # the default 10 s in CI. The wall clock guards against hangs; CPU time is what it spends.
    code_exec = judge("code_exec", concurrency=4, timeout_s=60, cpu_s=11)
    assert code_exec.provenance == {"sandbox": "namespaces"}
    verdicts = code_exec([""] * len(rows), responses, rows=rows)
    failed = {r["id"]: v.reason for r, v in zip(rows, verdicts) if v.value != 1.0}
    assert len(verdicts) == 664 and failed == {}


def test_code_exec_hazards_empty_and_bad_rows(namespaces):
    row = eval_rows("mbpp")[0]  # remove_Occ
    verdicts = score(
        "code_exec",
        [
            "",
            "   ",
            "```python\ndef remove_Occ(s, ch):\n    while True:\n        pass\n```",
            "```python\nimport os\nos.system('touch /tmp/forgetbench-x')\n```",
        ],
        [row] * 4,
        timeout_s=1.5,
    )
    assert [v.value for v in verdicts] == [0.0] * 4
    assert verdicts[0].reason == verdicts[1].reason == "empty response"
    assert "timed out" in verdicts[2].reason or "CPU time" in verdicts[2].reason
    assert "not allowed" in verdicts[3].reason
    with pytest.raises(ForgetbenchError, match="row 'x' has no `tests` field"):
        score("code_exec", ["pass"], [{"id": "x", "prompt": "p"}])
    with pytest.raises(ForgetbenchError, match="needs the eval rows"):
        judge("code_exec")(["p"], ["pass"])


def test_code_exec_through_the_judge_stage(tmp_path, namespaces):
    """The judge stage finds each generation's MBPP row by id and scores it in the sandbox."""
    from forgetbench.stages import judge as judge_stage
    from forgetbench.stages.generate import GENERATIONS_FILE

    plugin = registry.get("eval", "mbpp")
    config = {**dump(plugin.build_config(plugin.target)), "limit": 2}
    generations = tmp_path / "generations"
    generations.mkdir()
    (generations / judge_stage.REQUEST_FILE).write_text(
        json.dumps({"config": {"eval": {"name": "mbpp", "config": config}}})
    )
    code = raw_rows(DATA / "mbpp" / "mbpp_test.jsonl")
    lines = [
        {"id": "11", "prompt": "p", "response": f"```python\n{code['11']['code']}\n```"},
        {"id": "12", "prompt": "p", "response": "def sort_matrix(m):\n    return m\n"},
    ]
    (generations / GENERATIONS_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "judged"
    out.mkdir()
    judge_stage.run(
        {"judge": {"name": "code_exec", "config": {}}}, {"generations": generations}, out
    )
    verdicts = [json.loads(line) for line in (out / judge_stage.VERDICTS_FILE).open()]
    assert [v["value"] for v in verdicts] == [1.0, 0.0]
    assert verdicts[1]["reason"] == "exit code 1: AssertionError"
    # which containment scored them: a column of the results rows of this judge stage
    from forgetbench.results import judge_provenance

    assert json.loads((out / judge_stage.PROVENANCE_FILE).read_text()) == {"sandbox": "namespaces"}
    assert judge_provenance(out) == {"sandbox": "namespaces"}
    assert judge_provenance(None) == judge_provenance(tmp_path) == {"sandbox": None}


def test_code_exec_refuses_without_kernel_isolation_unless_opted_out(monkeypatch, tmp_path):
    row = eval_rows("mbpp")[0]
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap here
    with pytest.raises(ForgetbenchError) as caught:
        judge("code_exec")
    assert "bubblewrap (`bwrap`) is not installed" in str(caught.value)
    assert "judges.code_exec.isolation=python-guards" in str(caught.value)
    weaker = judge("code_exec", isolation="python-guards")
    assert weaker.provenance == {"sandbox": "python-guards"}
    assert (
        weaker([""], ["def remove_Occ(s, ch):\n    return s.replace(ch, '')\n"], rows=[row])[
            0
        ].value
        == 1.0
    )  # runs, PATH without bwrap


# ---- gsm8k_answer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,value,where",
    [
        ("So she makes 9 * 2 = $18 every day.\n#### 18", "18", "after ####"),
        ("The answer is $1,234.50.", "1234.50", "after 'the answer is'"),
        ("First 3 eggs, then 4. The final answer is: -7", "-7", "after 'the answer is'"),
        ("We get \\boxed{42} apples, from 6 trees", "42", "in \\boxed{}"),
        ("She has 5 apples and buys 12 more, so 17.", "17", "last number"),
        ("1, 2, 3, 4", "4", "last number"),
    ],
)
def test_final_number_extraction(text, value, where):
    assert extract_final_number(text) == (parse_number(value), where)
    assert parse_number(value) is not None


def test_gsm8k_reference_solutions_score_one_and_others_zero():
    rows = eval_rows("gsm8k")
    assert all("####" in row["answer"] for row in rows)
    right = score("gsm8k_answer", [row["answer"] for row in rows], rows)
    assert all(v.value == 1.0 for v in right), [v.reason for v in right if v.value != 1.0][:3]
    # the last sentence in the prompt's requested form
    final = [
        f"Let me think.\nThe answer is {row['answer'].rsplit('####')[1].strip()}."
        for row in rows[:50]
    ]
    assert all(v.value == 1.0 for v in score("gsm8k_answer", final, rows[:50]))
    shifted = [row["answer"] for row in rows[1:] + rows[:1]]
    wrong = score("gsm8k_answer", shifted, rows)
    assert sum(v.value for v in wrong) < 0.05 * len(rows)  # a few problems share an answer
    assert "reference" in wrong[0].reason


def test_gsm8k_empty_no_number_and_bad_rows():
    row = eval_rows("gsm8k")[0]  # reference 18
    verdicts = score("gsm8k_answer", ["", "I do not know.", "It is 18.0 dollars", "19"], [row] * 4)
    assert [v.value for v in verdicts] == [0.0, 0.0, 1.0, 0.0]
    assert verdicts[0].reason == "empty response"
    assert verdicts[1].reason == "no number in the response"
    with pytest.raises(ForgetbenchError, match="row 'q1' has no `answer` field"):
        score("gsm8k_answer", ["1"], [{"id": "q1", "prompt": "p"}])
    with pytest.raises(ForgetbenchError, match="row 'q2' has no number in its answer"):
        score("gsm8k_answer", ["1"], [{"id": "q2", "answer": "#### none"}])


# ---- math_verify -------------------------------------------------------------------------------


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed 7.") == "7"
    assert last_boxed("\\boxed{\\sqrt{2") == "\\sqrt{2"  # cut by max_new_tokens
    assert last_boxed("no box") is None


def test_math500_references_verify_against_themselves_and_not_others():
    rows = eval_rows("math500")[:100]
    boxed = [f"Reasoning... so the answer is $\\boxed{{{row['answer']}}}$." for row in rows]
    verdicts = score("math_verify", boxed, rows)
    assert all(v.value == 1.0 for v in verdicts), [v.reason for v in verdicts if v.value != 1.0]
    shifted = boxed[1:] + boxed[:1]
    wrong = score("math_verify", shifted, rows)
    assert sum(v.value for v in wrong) <= 3


def test_math_verify_equivalent_forms_on_real_rows():
    rows = {row["id"]: row for row in eval_rows("math500")}
    first = rows["test/precalculus/807.json"]  # \left( 3, \frac{\pi}{2} \right)
    half = next(r for r in rows.values() if r["answer"] == "\\frac{1}{2}")
    cases = [
        (first, "\\boxed{(3, \\pi/2)}", 1.0),
        (first, "\\boxed{(3, \\pi)}", 0.0),
        (half, "The probability is \\boxed{0.5}.", 1.0),
        (half, "\\boxed{\\dfrac12}", 1.0),
        (half, "\\boxed{\\frac{1}{3}}", 0.0),
        (half, "The answer is 1/2.", 0.0),
        (half, "", 0.0),
    ]
    verdicts = score("math_verify", [c[1] for c in cases], [c[0] for c in cases])
    assert [v.value for v in verdicts] == [c[2] for c in cases], [v.reason for v in verdicts]
    assert verdicts[5].reason == "no \\boxed{} answer in the response"
    assert verdicts[6].reason == "empty response"


def test_math_verify_unparseable_reference_is_missing_not_zero():
    [verdict] = score("math_verify", ["\\boxed{1}"], [{"id": "x", "answer": "}}}"}])
    assert verdict.value is None and "cannot parse the reference" in verdict.reason


def test_judges_are_listed_with_documented_config():
    for name in ("code_exec", "gsm8k_answer", "math_verify"):
        plugin = registry.get("judge", name)
        assert plugin.description
        for field, info in plugin.config.model_fields.items():
            assert info.description, (name, field)
    assert re.search(r"\bcode_exec\b", " ".join(registry.names("judge")))
