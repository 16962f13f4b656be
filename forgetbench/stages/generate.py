"""Generate responses to an eval's prompts, stored per sample for later judging."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forgetbench.errors import ForgetbenchError
from forgetbench.stages import GENERATIONS_FILE
from forgetbench.stages.policy import policy_path


def eval_task(spec: dict):
    """The eval plugin's task (an ``evals.EvalTask``) from a stage config's ``eval`` entry
    (``{"name", "config"}``), as the generate stage ran it."""
    from forgetbench import registry

    return registry.get("eval", spec["name"]).build_config(spec["config"])


def eval_prompts(config: dict) -> list[dict]:
    from forgetbench.tasks import load_rows

    task = eval_task(config["eval"])
    rows = load_rows(task.dataset)[: task.limit]
    prompts = []
    for number, row in enumerate(rows, start=1):
        if "id" not in row:
            raise ForgetbenchError(
                f"eval {task.name!r} row {number} has no `id` field; map one "
                "with dataset.fields or set dataset.id_prefix"
            )
        try:
            prompts.append(
                {"id": str(row["id"]), "prompt": task.prompt_template.format(**row).strip()}
            )
        except KeyError as error:
            raise ForgetbenchError(
                f"eval {task.name!r} prompt_template names field {error} that "
                f"row {number} lacks; map it with dataset.fields"
            ) from None
    return prompts


def run(config: dict, inputs: dict[str, Path], out: Path) -> None:
    from rich.progress import Progress

    from forgetbench import registry
    from forgetbench.backends import resolve_backend_name
    from forgetbench.backends.base import resolve_dtype, resolve_policy
    from forgetbench.models import load_tokenizer

    rows = eval_prompts(config)
    plugin = registry.get("backend", config["backend"]["name"])
    settings = plugin.build_config(config["backend"]["config"])
    model = policy_path(inputs["policy"], config.get("checkpoint"))
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"generate {config['eval']['name']}", total=len(rows))
        outputs = plugin.target(settings)(
            model, [r["prompt"] for r in rows], progress=lambda n: progress.advance(bar, n)
        )
    write_generations(
        out / GENERATIONS_FILE,
        rows,
        list(outputs),
        plugin.name,
        settings.model_dump(mode="json"),
        load_tokenizer(resolve_policy(model).tokenizer).chat_template or "",
        # `auto` resolves per machine (bfloat16 where the device has it in hardware)
        resolve_dtype(settings.dtype, backend=resolve_backend_name(plugin.name))
        if hasattr(settings, "dtype")
        else None,
    )


def write_generations(
    path: Path,
    rows: list[dict],
    outputs: list,
    backend_name: str,
    sampling: dict,
    chat_template: str,
    dtype: str | None = None,
) -> None:
    """One JSON line per sample: the prompt's id and text, the response (an empty one too, with
    its finish_reason), the sampling settings, the back-end that ran (``auto`` resolves to the
    one that did) with its package and version and the weights' dtype it ran in, the chat
    template's hash, and the policy's log-probabilities of the generated tokens where the back-end
    recorded them (``logprob_ids``, ``logprobs``: hf in float32). A back-end that
    returns the wrong number of samples fails the stage: rows are never silently dropped."""
    samples = sampling.get("n", 1)
    if len(outputs) != len(rows) * samples:
        raise ForgetbenchError(
            f"back-end {backend_name!r} returned {len(outputs)} generations for "
            f"{len(rows)} prompts x n={samples}; expected {len(rows) * samples}"
        )
    template_hash = hashlib.sha256(chat_template.encode()).hexdigest()[:16]
    with open(path, "w") as handle:
        for index, generation in enumerate(outputs):
            row = rows[index // samples]
            record = generation._asdict()
            record.pop("token_ids", None)
            for recorded in ("logprob_ids", "logprobs"):  # kept where the back-end gave them
                if not record.get(recorded):
                    record.pop(recorded, None)
            record["sample"] = index % samples
            if not record.get("truncated_prompt"):
                record.pop("truncated_prompt", None)
            record["backend"] = record.get("backend") or backend_name
            record.setdefault("backend_package", "")
            record.setdefault("backend_version", "")
            handle.write(
                json.dumps(
                    {
                        **row,
                        **record,
                        "backend_requested": backend_name,
                        "sampling": sampling,
                        "dtype": dtype,
                        "chat_template_sha256": template_hash,
                    }
                )
                + "\n"
            )
