"""A cell's rows, read from its finished stages: one per (phase, step, eval, judge, metric) with
its CI, n and direction, and the provenance of every number; written as the cell's table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forgetbench.atomic import write_atomic
from forgetbench.config import stable_hash
from forgetbench.provenance import PACKAGES, version_column
from forgetbench.results.schema import write_table
from forgetbench.results.stats import metric_row
from forgetbench.training.common import trained_precision
from forgetbench.stages import (
    DONE_FILE,
    GENERATIONS_FILE,
    JUDGE_PROVENANCE,
    KL_FILE,
    PROVENANCE_FILE,
    STAGE_FORMAT,
    VERDICTS_FILE,
)

# Method-config fields that describe the training task every method of a track shares (the
# prompts and budget), as opposed to a method's own hyper-parameters.
TRAINING_TASK_KEYS = ("train_task", "dataset", "n_harmful", "n_harmless", "max_steps")


def backend_used(generations_folder: Path) -> dict:
    """The back-end that really generated (``auto`` resolves per machine), from the stored
    generations: ``backend_used``, its package version and the weights' dtype it ran (``auto``
    resolves per machine too; None for a back-end without one, or rows from before it was
    recorded)."""
    with open(generations_folder / GENERATIONS_FILE) as handle:
        first = json.loads(handle.readline() or "{}")
    return {
        "backend_used": first.get("backend"),
        "backend_version": first.get("backend_version") or None,
        "generation_dtype": first.get("dtype"),
    }


def judge_provenance(judge_folder: Path | None) -> dict:
    """How a judge stage scored (code_exec: ``sandbox`` = namespaces or python-guards), from the
    file the stage wrote; None for each column a judge does not report (or a KL row)."""
    found = {}
    if judge_folder is not None and (judge_folder / PROVENANCE_FILE).is_file():
        found = json.loads((judge_folder / PROVENANCE_FILE).read_text())
    return {column: found.get(column) for column in JUDGE_PROVENANCE}


def final_step(policy_folder: Path) -> int:
    """The last logged step of a third-party attack (in-tree attacks plan their steps)."""
    history = json.loads((policy_folder / "log_history.json").read_text())
    return max((entry.get("step", 0) for entry in history), default=0)


def median_step_seconds(policy_folder: Path) -> float | None:
    """The median of the optimiser steps' wall times (``step_seconds``, logged by every loop here:
    ``forgetbench.training.common.step_timer``) of a training stage: its cost per step without
    the model load and save, and robust to a few steps slowed by another job on the machine."""
    import statistics

    path = policy_folder / "log_history.json"
    if not path.is_file():
        return None
    seconds = [e["step_seconds"] for e in json.loads(path.read_text()) if "step_seconds" in e]
    return round(statistics.median(seconds), 4) if seconds else None


def stage_provenance(folder: Path) -> dict:
    """What a finished stage's own ``stage.json`` says about how it was computed: the package
    versions and git revision of the process that ran it and when it finished. Read, never
    stamped: re-using a stage keeps the labels of the run that computed it."""
    meta = json.loads((folder / DONE_FILE).read_text())
    versions = meta.get("versions") or {}
    return {
        **{version_column(name): versions.get(name) for name in PACKAGES},
        "python_version": meta.get("python"),
        "git_revision": meta.get("git_revision"),
        "finished": meta.get("finished"),
        "seconds": meta.get("seconds"),
    }


def prompts_sha256(generations_folder: Path) -> str:
    """A hash of the eval's prompts as generated (ids and texts, in order): two runs with the
    same hash scored the same questions (the lm-eval ``task_hashes`` idea)."""
    digest = hashlib.sha256()
    for line in open(generations_folder / GENERATIONS_FILE):
        row = json.loads(line)
        digest.update(json.dumps([str(row["id"]), row["prompt"]]).encode() + b"\n")
    return digest.hexdigest()


def protocol(resolved: dict, prompt_hashes: dict[str, str]) -> dict:
    """The parts of a cell's config that must match for two methods to be ranked together: base
    model, warm-up, the training task the methods share, the evals (with a hash of their
    prompts), judges and decoding. The attack is hashed on its own (``attack_config_hash``): a
    track holds several attacks. Method hyper-parameters and the seed are left out on purpose."""
    method = resolved["method"]["config"]
    return {
        "model": resolved["model"],
        "warmup": resolved["warmup"],
        "training_task": {k: method[k] for k in TRAINING_TASK_KEYS if k in method},
        "evals": resolved["evals"],
        "eval_prompts": prompt_hashes,
        "judges": resolved["judges"],
        "backend": resolved["backend"],
    }


def cell_rows(cell_plan, root: Path, config_file: str | None = None) -> list[dict]:
    """The rows of one cell (docs/design.md §6): its metrics at every scored step (P0 at step 0, each
    attack checkpoint, the final policy) and the KL from P0 there, with their CIs; and their
    provenance: the hashes of every config part and the key of every stage a row comes from, the
    base model, back-end, the protocol (track) hash, and the package versions, git revision and
    dates read from the row's own stages' ``stage.json``."""
    from forgetbench import registry

    cell = cell_plan.cell
    resolved = cell.resolved
    policy = cell_plan.policies["before"].folder(root)
    train = stage_provenance(policy)
    steps = resolved["method"]["config"].get("max_steps")
    prompt_hashes = {
        eval_name: prompts_sha256(stage.inputs["generations"].folder(root))
        for phase, _, eval_name, _, stage in cell_plan.judged
        if phase == "before"
    }
    task_evals = set(resolved["attack"]["config"].get("task_evals") or [])
    provenance = {
        "preset": cell.preset,
        "config_hash": cell.config_hash,
        "config_file": config_file,
        "method_plugin": resolved["method"]["name"],
        "attack_plugin": resolved["attack"]["name"],
        "method_config_hash": stable_hash(resolved["method"]),
        "attack_config_hash": stable_hash(resolved["attack"]),
        "protocol_hash": stable_hash(protocol(resolved, prompt_hashes)),
        "base_model": resolved["model"],
        "backend": resolved["backend"]["name"],
        "backend_config_hash": stable_hash(resolved["backend"]),
        "train_stage": cell_plan.policies["before"].key,
        "stage_format": STAGE_FORMAT,
        "trained_at": train["finished"],
        "train_seconds": train["seconds"],
        "train_steps": steps,
        "train_step_seconds": median_step_seconds(policy),
        "train_precision": trained_precision(policy),
        # declared by the plugin (forgetbench.registry.Plugin.passes), checked by the tests
        "method_passes": registry.get("method", resolved["method"]["name"]).passes,
    }
    policy_key = {phase: stage.key for phase, stage in cell_plan.policies.items()}
    policy_key["during"] = policy_key["after"]
    final = resolved["attack"].get("total_steps")
    if final is None:
        final = final_step(cell_plan.policies["after"].folder(root))

    def head(phase: str, step: int, eval_name: str) -> dict:
        return {
            "method": cell.method_label,
            "attack": cell.attack_label,
            "seed": resolved["seed"],
            "phase": phase,
            "step": final if phase == "after" else step,
            "eval": eval_name,
            "eval_version": resolved["evals"][eval_name]["version"],
            "eval_role": "task" if eval_name in task_evals else "safety",
            "eval_prompts_sha256": prompt_hashes.get(eval_name),
        }

    def tail(phase: str, stage) -> dict:
        generations = stage.inputs["generations"]
        generated = stage_provenance(generations.folder(root))
        scored = stage_provenance(stage.folder(root))
        # versions and revision of the process that generated the text the number is about
        versions = {k: v for k, v in generated.items() if k.startswith("version_")}
        return {
            "policy_stage": policy_key[phase],
            "generate_stage": generations.key,
            "judge_stage": stage.key,
            **provenance,
            **versions,
            "python_version": generated["python_version"],
            "git_revision": generated["git_revision"],
            "generated_at": generated["finished"],
            "date": scored["finished"],
            **backend_used(generations.folder(root)),
        }

    rows = []
    for phase, step, eval_name, judge_name, stage in cell_plan.judged:
        eval_config = resolved["evals"][eval_name]
        verdicts = [json.loads(line) for line in open(stage.folder(root) / VERDICTS_FILE)]
        for metric in eval_config["metrics"]:
            if metric["judge"] != judge_name:
                continue
            rows.append(
                {
                    **head(phase, step, eval_name),
                    "judge": judge_name,
                    "source": "judge",
                    "metric": metric["name"],
                    "transform": metric["transform"],
                    **metric_row(verdicts, metric["transform"], metric["binary"]),
                    "direction": metric["direction"],
                    "eval_config_hash": stable_hash(eval_config),
                    "judge_config_hash": stable_hash(resolved["judges"][judge_name]),
                    **judge_provenance(stage.folder(root)),
                    **tail(phase, stage),
                }
            )
    for phase, step, eval_name, stage in cell_plan.kl:
        values = [json.loads(line) for line in open(stage.folder(root) / KL_FILE)]
        rows.append(
            {
                **head(phase, step, eval_name),
                "judge": "kl",
                "source": "kl",
                "metric": "kl_from_p0",
                "transform": "mean",
                **metric_row(values, "mean", binary=False),
                "direction": "lower",
                "eval_config_hash": stable_hash(resolved["evals"][eval_name]),
                "judge_config_hash": None,
                **judge_provenance(None),
                **tail(phase, stage),
            }
        )
    return rows


def table_name(cell_plan) -> str:
    """The cell's table name: its labels, seed and config hash (a re-run with another config
    writes a second table beside the first; ``views.current`` picks the newer)."""
    cell = cell_plan.cell
    return (
        f"{cell.method_label.replace('/', '-')}__{cell.attack_label.replace('/', '-')}"
        f"__seed{cell.resolved['seed']}__{cell.config_hash}"
    )


def write_cell_table(cell_plan, root: Path) -> Path:
    """The cell's rows as Parquet and CSV, with its resolved config beside them."""
    name = table_name(cell_plan)
    config_path = write_atomic(
        root / "results" / f"{name}.config.json", json.dumps(cell_plan.cell.resolved, indent=1)
    )
    rows = cell_rows(cell_plan, root, config_file=config_path.name)
    return write_table(rows, root / "results", name)
