"""The KL-from-P0 stage against a plain per-token computation, on two different models.

P0 is the embedded model, the policy a LoRA adapter over it with random non-zero B weights. The
stored generations are the policy's own (real hf back-end), chosen to include a response that
ended on the end-of-sequence token, one cut at max_new_tokens, and one whose prompt was
truncated to fit the context. The reference value is a Python loop over response tokens, one
unpadded sequence at a time: sum of e^d - d - 1 with d = log P0 - log policy (docs/methods.md §1.7),
the end-of-sequence token included when the response stopped on it, the prompt being the user
message the back-end says it sent.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from forgetbench.backends.base import GenerationConfig
from forgetbench.backends.hf import generate_hf
from forgetbench.errors import ForgetbenchError
from forgetbench.models import load_model, load_tokenizer, resolve_model
from forgetbench.stages import kl
from forgetbench.stages.generate import GENERATIONS_FILE, write_generations
from forgetbench.stages.worker import REQUEST_FILE
from test_backend_hf import make_lora_adapter

LONG = ("Here is some background you can skip. " * 30) + "Now, what is the capital of France?"
# Not in length order: the stage batches rollouts by length and must put each value back.
PROMPTS = ["Write a long story about a dragon.", "Reply with the single word: yes", LONG]
SETTINGS = dict(max_new_tokens=12, batch_size=4, max_model_len=96)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Stage folders as the runner lays them out: reference/ (P0), policy/ (the adapter),
    generations/ (the policy's rollouts and the request that made them)."""
    root = tmp_path_factory.mktemp("kl")
    base = resolve_model("smollm2-135m-instruct")
    (root / "reference").mkdir()
    (root / "reference" / "model").symlink_to(base)
    make_lora_adapter(base, root / "policy" / "model", scale=0.05)
    generations = root / "generations"
    generations.mkdir()
    config = GenerationConfig(**SETTINGS)
    outputs = generate_hf(config, str(root / "policy" / "model"), PROMPTS)
    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    write_generations(
        generations / GENERATIONS_FILE, rows, outputs, "hf", config.model_dump(mode="json"), ""
    )
    (generations / REQUEST_FILE).write_text(
        json.dumps(
            {
                "kind": "generate",
                "config": {"backend": {"name": "hf", "config": SETTINGS}},
                "inputs": {"policy": str(root / "policy")},
            }
        )
    )
    return root


def per_token_kl(reference, policy, tokenizer, record: dict) -> tuple[float, int]:
    """(sum over response tokens of e^d - d - 1, number of response tokens), one token at a time."""
    user = record.get("truncated_prompt") or record["prompt"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    response = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
    if record["finish_reason"] == "stop":
        response.append(tokenizer.eos_token_id)
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp0 = torch.log_softmax(reference(ids).logits[0].double(), -1)
        logp = torch.log_softmax(policy(ids).logits[0].double(), -1)
    total = 0.0
    for position, token in enumerate(response):
        before = len(prompt) + position - 1  # logits at t predict token t + 1
        d = logp0[before, token].item() - logp[before, token].item()
        total += math.exp(d) - d - 1
    return total, len(response)


def test_kl_stage_equals_a_per_token_loop_on_eos_length_and_truncated_rollouts(stages, tmp_path):
    from peft import PeftModel

    records = [json.loads(line) for line in open(stages / "generations" / GENERATIONS_FILE)]
    assert {r["finish_reason"] for r in records} == {"stop", "length"}, records
    assert records[2].get("prompt_truncated") and records[2].get("truncated_prompt"), records[2]
    kl.run(
        {"eval": "test"},
        {name: stages / name for name in ("reference", "policy", "generations")},
        tmp_path,
    )
    got = [json.loads(line) for line in open(tmp_path / kl.KL_FILE)]

    base = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(base)
    reference = load_model(base).eval()
    policy = PeftModel.from_pretrained(load_model(base), str(stages / "policy" / "model")).eval()
    for record, row in zip(records, got):
        expected, tokens = per_token_kl(reference, policy, tokenizer, record)
        assert row["id"] == record["id"] and row["response_tokens"] == tokens, (row, record)
        assert expected > 1e-3, record  # the adapter moves the model: a test that can fail
        assert row["value"] == pytest.approx(expected, rel=1e-4), (record["finish_reason"], row)


def run_on(stages, tmp_path, records: list[dict], name: str) -> list[float]:
    """The KL stage's values on ``records`` as the policy's generations (its request kept)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / REQUEST_FILE).write_text((stages / "generations" / REQUEST_FILE).read_text())
    with open(folder / GENERATIONS_FILE, "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    out = tmp_path / f"{name}-out"
    out.mkdir()
    kl.run(
        {"eval": "test"},
        {"reference": stages / "reference", "policy": stages / "policy", "generations": folder},
        out,
    )
    return [json.loads(line)["value"] for line in open(out / kl.KL_FILE)]


def test_recorded_policy_logprobs_give_the_kl_of_running_the_policy(stages, tmp_path):
    """The policy's log-probs recorded while it generated stand in for its forward pass: the same
    KL (to float32 rounding) as rows without them, for which the stage runs the policy; they are
    what the stage reads (altered, the value moves), and only for the ids it scores (a row
    recorded for other ids runs the policy)."""
    records = [json.loads(line) for line in open(stages / "generations" / GENERATIONS_FILE)]
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    used = [
        kl.recorded_logprobs(record, response) is not None
        for record, (_, response) in zip(records, kl.rollout_ids(tokenizer, records, None))
    ]
    assert sum(used) >= 2, used  # the recorded path is what this test exercises

    recorded = run_on(stages, tmp_path, records, "recorded")
    sources = [
        json.loads(line)["policy_logprobs"] for line in open(tmp_path / "recorded-out" / kl.KL_FILE)
    ]
    assert sources == ["recorded" if u else "computed" for u in used]
    bare = [{k: v for k, v in r.items() if k not in ("logprobs", "logprob_ids")} for r in records]
    computed = run_on(stages, tmp_path, bare, "computed")
    # float32 log-probs of a KV-cached, left-padded decode against one forward pass: 8e-5
    # relative at most here, the per-token loop's tolerance above
    assert recorded == pytest.approx(computed, rel=1e-4) and min(computed) > 1e-3

    row = used.index(True)
    altered = [dict(r) for r in records]
    altered[row]["logprobs"] = [value - 0.1 for value in records[row]["logprobs"]]
    moved = run_on(stages, tmp_path, altered, "altered")
    assert moved[row] != pytest.approx(recorded[row], rel=1e-3)
    assert [v for i, v in enumerate(moved) if i != row] == [
        v for i, v in enumerate(recorded) if i != row
    ]
    altered[row]["logprob_ids"] = [*records[row]["logprob_ids"][:-1], 0]  # other ids
    assert run_on(stages, tmp_path, altered, "other-ids")[row] == pytest.approx(
        computed[row], rel=2e-5
    )


def test_kl_stage_refuses_generations_made_by_another_policy(stages, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    request = json.loads((stages / "generations" / REQUEST_FILE).read_text())
    request["inputs"]["policy"] = str(stages / "reference")  # P0's rollouts, not the policy's
    (other / REQUEST_FILE).write_text(json.dumps(request))
    (other / GENERATIONS_FILE).write_text((stages / "generations" / GENERATIONS_FILE).read_text())
    with pytest.raises(
        ForgetbenchError,
        match=r"made by reference, not by the measured policy "
        r"policy; give it that policy's own generate stage",
    ):
        kl.run(
            {"eval": "test"},
            {"reference": stages / "reference", "policy": stages / "policy", "generations": other},
            tmp_path,
        )
    # Another checkpoint of the same attack is another policy too.
    with pytest.raises(ForgetbenchError, match="not by the measured policy policy checkpoint 3"):
        kl.run(
            {"eval": "test", "checkpoint": 3},
            {
                "reference": stages / "reference",
                "policy": stages / "policy",
                "generations": stages / "generations",
            },
            tmp_path,
        )
    assert not (tmp_path / kl.KL_FILE).exists()


def test_kl_of_p0_from_itself_is_zero_without_running_the_model(stages, tmp_path, monkeypatch):
    """Step 0 of every cell measures P0 against P0: each d_t is exactly 0, so the stage writes 0
    per rollout (what the forward passes give, bit for bit) with its token count, and loads no
    weights."""
    import forgetbench.backends.hf as hf

    own = tmp_path / "own"
    own.mkdir()
    request = json.loads((stages / "generations" / REQUEST_FILE).read_text())
    request["inputs"]["policy"] = str(stages / "policy")
    (own / REQUEST_FILE).write_text(json.dumps(request))
    (own / GENERATIONS_FILE).write_text((stages / "generations" / GENERATIONS_FILE).read_text())

    def no_weights(*args, **kwargs):
        raise AssertionError("the KL of P0 from itself loaded a model")

    monkeypatch.setattr(hf, "load_weights", no_weights)
    out = tmp_path / "out"
    out.mkdir()
    kl.run(
        {"eval": "test"},
        {"reference": stages / "policy", "policy": stages / "policy", "generations": own},
        out,
    )
    rows = [json.loads(line) for line in open(out / kl.KL_FILE)]
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    records = [json.loads(line) for line in open(own / GENERATIONS_FILE)]
    assert [r["value"] for r in rows] == [0.0] * len(PROMPTS)
    for record, row in zip(records, rows):
        response = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
        assert row["response_tokens"] == len(response) + (record["finish_reason"] == "stop")
    # And the forward passes agree: the same policy as a separate folder gives 0 too, bit for
    # bit when the stage runs both models (rows without recorded log-probs), and to float32
    # rounding when the policy's side is what generation recorded (KV-cached, left-padded).
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(stages / "policy", copy)  # another folder: the stage runs both models
    monkeypatch.undo()
    bare = [{k: v for k, v in r.items() if k not in ("logprobs", "logprob_ids")} for r in records]
    (own / GENERATIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in bare))
    kl.run(
        {"eval": "test"}, {"reference": copy, "policy": stages / "policy", "generations": own}, out
    )
    assert [json.loads(line)["value"] for line in open(out / kl.KL_FILE)] == [0.0] * len(PROMPTS)
    (own / GENERATIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    kl.run(
        {"eval": "test"}, {"reference": copy, "policy": stages / "policy", "generations": own}, out
    )
    values = [json.loads(line)["value"] for line in open(out / kl.KL_FILE)]
    assert values == pytest.approx([0.0] * len(PROMPTS), abs=1e-8)


def test_log_probs_from_a_position_equal_the_whole_sequences(tiny_model):
    """The output layer run from position ``first`` on (``logits_to_keep``), or on every position
    and sliced (a model whose forward does not take it), gives the whole sequence's values."""
    model = load_model(str(tiny_model)).eval()

    class NoKeep(torch.nn.Module):  # a forward without logits_to_keep
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    ids = torch.randint(0, 1000, (3, 20))
    attention = torch.ones_like(ids)
    attention[0, 15:] = 0
    whole = kl.token_logprobs(model, ids, attention)
    assert whole.shape == (3, 19)
    for first in (1, 7):
        for scored in (model, NoKeep()):
            part = kl.token_logprobs(scored, ids, attention, first)
            assert part.shape == (3, 19 - first)
            torch.testing.assert_close(part, whole[:, first:], rtol=1e-5, atol=1e-5)
