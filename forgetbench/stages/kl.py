"""KL from the pre-attack policy P0 to a policy, on that policy's own rollouts (docs/methods.md §1.7).

The rollouts are the generation stage's stored responses to an eval's prompts (greedy by default,
so exactly the paper's "greedy rollouts of the current model"). For each response y to prompt x,
with d_t = log P0(y_t | x, y_<t) - log pi(y_t | x, y_<t), the sequence KL is the sum over its
tokens of the k3 estimator e^d - d - 1 (>= 0, unbiased for KL(pi || P0) per token). The stage
writes one value per sequence (``kl.jsonl``); the results table reports their mean with a
bootstrap CI. The end-of-sequence token counts when the response stopped on it.

log pi is what the generate stage recorded while it sampled the rollout (``logprobs``: hf in
float32, ``backends.hf.ChosenLogprobs``) for each response whose ids are the ones scored here;
the others (vllm, 16-bit generation, a response whose text tokenizes to other ids, stages
generated before the log-probs were recorded) run the policy over them, as every rollout did
before. P0 always runs. The two agree to float32 rounding (tests/test_kl_stage.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from forgetbench.stages import GENERATIONS_FILE, KL_FILE
from forgetbench.stages.policy import policy_path
from forgetbench.stages.worker import REQUEST_FILE

BATCH_SIZE = 8


def sequence_kl(logp_reference, logp_policy, mask):
    """Per-sequence sum of e^d - d - 1 over the masked (response) tokens, d = ref - policy."""
    import torch

    d = (logp_reference - logp_policy).double()
    return ((torch.exp(d) - d - 1) * mask).sum(dim=1)


def token_logprobs(model, input_ids, attention_mask, first: int = 0):
    """log p(token_t | tokens_<t) for t > ``first`` (shape batch x (length - 1 - first)): the
    output layer and softmax run only from position ``first`` on (``logits_to_keep``), where the
    caller's responses start; the positions before are prompt tokens nobody reads."""
    import torch

    width = input_ids.shape[1]
    kept = {"logits_to_keep": width - first} if first and _keeps_logits(model) else {}
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **kept).logits
    logits = logits[:, -(width - first) : -1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, first + 1 :, None]).squeeze(-1)


def _keeps_logits(model) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (as transformers itself asks before
    generating); one that does not computes every position and the caller slices."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def rollout_ids(tokenizer, records: list[dict], budget) -> list[tuple[list[int], list[int]]]:
    """(prompt ids as the back-end sent them, response ids) for each stored generation."""
    from forgetbench.backends.base import prepare_prompts

    prompts = prepare_prompts(tokenizer, [r["prompt"] for r in records], budget, "truncate")
    return [
        (list(prompt.token_ids), response_ids(tokenizer, record))
        for record, prompt in zip(records, prompts)
    ]


def response_ids(tokenizer, record: dict) -> list[int]:
    """The stored response's ids, the end-of-sequence token's last when it stopped on it."""
    response = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
    if record.get("finish_reason") == "stop" and tokenizer.eos_token_id is not None:
        response = response + [tokenizer.eos_token_id]
    return response


def recorded_logprobs(record: dict, response: list[int]) -> list[float] | None:
    """The generating policy's log-probabilities of ``response`` (the ids this stage scores), as
    its back-end recorded them, or None: none recorded, or recorded for other ids (the response's
    text tokenizes differently from what was sampled, or it stopped on another end-of-sequence
    id)."""
    logprobs = record.get("logprobs")
    if logprobs and record.get("logprob_ids") == response and len(logprobs) == len(response):
        return logprobs
    return None


def check_own_rollouts(request: dict, inputs: dict[str, Path], checkpoint) -> None:
    """The KL is measured on the policy's own rollouts: generations another policy (or another
    checkpoint) made would give a number for neither. Stage folders are compared by name (it holds
    the stage key), so a moved output folder still passes."""
    from forgetbench.errors import ForgetbenchError

    made_by = (Path(request["inputs"]["policy"]).name, request["config"].get("checkpoint"))
    measured = (Path(inputs["policy"]).name, checkpoint)
    if made_by != measured:

        def name(policy):
            return policy[0] + ("" if policy[1] is None else f" checkpoint {policy[1]}")

        raise ForgetbenchError(
            f"KL stage: the generations in {inputs['generations']} were made by "
            f"{name(made_by)}, not by the measured policy {name(measured)}; "
            "give it that policy's own generate stage"
        )


def run(config: dict, inputs: dict[str, Path], out: Path) -> None:
    import torch

    from forgetbench import registry
    from forgetbench.backends.base import prompt_budget, resolve_policy
    from forgetbench.models import load_tokenizer

    records = [json.loads(line) for line in open(inputs["generations"] / GENERATIONS_FILE)]
    request = json.loads((inputs["generations"] / REQUEST_FILE).read_text())
    check_own_rollouts(request, inputs, config.get("checkpoint"))  # before loading any weights
    reference_path = policy_path(inputs["reference"])
    policy_folder = policy_path(inputs["policy"], config.get("checkpoint"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = resolve_policy(policy_folder)
    tokenizer = load_tokenizer(policy.tokenizer)
    # the settings the rollouts were generated with, read as their back-end reads them
    backend = request["config"]["backend"]
    generation = registry.get("backend", backend["name"]).build_config(backend["config"])
    _, budget = prompt_budget(generation, policy.model)
    pairs = rollout_ids(tokenizer, records, budget)
    if Path(reference_path).resolve() == Path(policy_folder).resolve():
        # P0 measured against itself: every d_t is exactly 0, so every sequence KL is 0 (what the
        # forward passes below would return, bit for bit); loading and running the model twice
        # to learn that cost 12-26 s per eval on the tiny preset.
        values, sources = [0.0] * len(pairs), [None] * len(pairs)
    else:
        recorded = [
            recorded_logprobs(record, response) for record, (_, response) in zip(records, pairs)
        ]
        values = _sequence_kls(
            policy, resolve_policy(reference_path), pairs, recorded, tokenizer, device
        )
        sources = ["computed" if logprobs is None else "recorded" for logprobs in recorded]

    with open(out / KL_FILE, "w") as handle:
        for record, (_, response), value, source in zip(records, pairs, values, sources):
            row = {
                "id": record["id"],
                "sample": record.get("sample", 0),
                "value": value,
                "response_tokens": len(response),
                "greedy": generation.temperature == 0,
            }
            if source:  # where log pi came from: the generation's record or the policy run here
                row["policy_logprobs"] = source
            handle.write(json.dumps(row) + "\n")


def _sequence_kls(policy, reference_policy, pairs, recorded, tokenizer, device) -> list[float]:
    """Per-rollout KL; ``recorded[i]``: rollout i's log pi as generated (``recorded_logprobs``)
    or None, for which the policy runs here."""
    import torch
    from rich.progress import Progress

    from forgetbench.backends.hf import load_weights

    needed = any(logprobs is None for logprobs in recorded)
    current = load_weights(policy).to(device) if needed else None
    reference = load_weights(reference_policy).to(device)
    # Batches of similar lengths (sorted; each value goes back to its rollout's place): less
    # padding, and the output layer runs only from the batch's first response token. On the
    # tiny preset this took the six KL stages from 106 s to 76 s; the values move in
    # float32's last digits only (batches of other widths; 3e-5 relative at most, measured).
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    values = [0.0] * len(pairs)
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"KL from P0 ({len(pairs)} rollouts)", total=len(pairs))
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            batch = [pairs[i] for i in rows]
            width = max(len(p) + len(r) for p, r in batch)
            pad = tokenizer.pad_token_id
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width - 1), dtype=torch.double)
            for row, (prompt, response) in enumerate(batch):
                sequence = prompt + response
                ids[row, : len(sequence)] = torch.tensor(sequence)
                attention[row, : len(sequence)] = 1
                # Position t of the log-probs predicts token t + 1: mask the response tokens.
                mask[row, len(prompt) - 1 : len(sequence) - 1] = 1
            first = min(len(prompt) for prompt, _ in batch) - 1  # the first masked position
            ids, attention = ids.to(device), attention.to(device)
            logp_reference = token_logprobs(reference, ids, attention, first)
            logp_policy = torch.zeros_like(logp_reference)
            unrecorded = [row for row, i in enumerate(rows) if recorded[i] is None]
            if unrecorded:
                logp_policy[unrecorded] = token_logprobs(
                    current, ids[unrecorded], attention[unrecorded], first
                )
            for row, i in enumerate(rows):
                if recorded[i] is not None:
                    start = len(pairs[i][0]) - 1 - first  # where its response's log-probs go
                    logp_policy[row, start : start + len(recorded[i])] = torch.tensor(recorded[i])
            kls = sequence_kl(logp_reference, logp_policy, mask[:, first:].to(device)).tolist()
            for index, value in zip(rows, kls):
                values[index] = value
            progress.advance(bar, len(batch))
    return values
