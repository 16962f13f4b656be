"""Any lm-evaluation-harness task on a policy, through lm-eval's own Python API (0.4.x).

    forgetbench lmeval --model runs/stages/train/frpo-<hash> --task gsm8k_local --limit 20
    forgetbench lmeval --model smollm2-135m-instruct --task my_task.yaml --out scores.csv

:func:`run_lmeval` loads the policy once (an embedded model name, a model folder, a LoRA adapter
folder, or a stage folder holding ``model/``; adapters are merged as the ``hf`` back-end does),
wraps it in ``lm_eval.models.huggingface.HFLM`` and calls ``lm_eval.simple_evaluate`` with it.
A task is

* a YAML file path, or the name of a file in ``tasks/lmeval/`` (shipped: ``gsm8k_local``, lm-eval's
  zero-shot CoT GSM8K over the shipped ``tasks/data/gsm8k/test.jsonl``). Its relative
  ``dataset_kwargs.data_files`` (and a relative local ``dataset_path``) are resolved against the
  YAML's folder, so ``dataset_path: json`` over a shipped file runs offline from any directory;
* or any task name lm-eval knows (``hellaswag``, ...), whose data lm-eval fetches from the hub.

Each (task, metric, filter) becomes one row shaped like the results table's: ``value``, ``n``,
``stderr`` (lm-eval's), and ``ci_low``/``ci_high``, the same 95% percentile bootstrap as every
forgetbench metric (:func:`forgetbench.results.metric_row`) over lm-eval's per-document scores
(``ci_method`` bootstrap95); a metric that is not a mean of per-document numbers (corpus BLEU, F1)
gets ``value +- 1.96 stderr`` (``normal95``). ``judge`` is ``lm-eval/<filter>``, ``direction``
comes from lm-eval's ``higher_is_better``.

Wiring lm-eval tasks into the stage graph (generate -> judge) is not done: lm-eval owns its own
request types (log-likelihoods as well as generation), so it runs as one call per policy.
"""

from __future__ import annotations

import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from forgetbench.errors import ForgetbenchError, UsageError
from forgetbench.provenance import git_revision, installed_version, package_versions, version_column
from forgetbench.results import Z95, metric_row
from forgetbench.tasks import tasks_dir

INSTALL_HINT = "pip install 'forgetbench[lmeval]' (lm-eval==0.4.13)"


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ForgetbenchError(f"the lm-eval bridge needs lm-eval: {INSTALL_HINT}") from None
    return lm_eval


def local_tasks() -> list[str]:
    """Names of the task YAMLs shipped in ``tasks/lmeval/``."""
    return sorted(p.stem for p in (tasks_dir() / "lmeval").glob("*.yaml"))


def _resolve_relative(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        candidate = base / value
        return (
            str(candidate.resolve())
            if not Path(value).is_absolute() and candidate.exists()
            else value
        )
    if isinstance(value, list):
        return [_resolve_relative(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_relative(v, base) for k, v in value.items()}
    return value


def resolve_task(task: str) -> Union[str, dict]:
    """A task config dict (from a YAML path or ``tasks/lmeval/<task>.yaml``, data paths made
    absolute) or, for any other name, the name itself for lm-eval's own registry."""
    path = Path(task)
    if path.suffix not in (".yaml", ".yml"):
        shipped = tasks_dir() / "lmeval" / f"{task}.yaml"
        if not shipped.is_file():
            return task
        path = shipped
    elif not path.is_file():
        raise UsageError(f"lm-eval task file {task} does not exist")
    _lm_eval()
    try:
        from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval >= 0.4.10
    except ImportError:  # older 0.4.x
        from lm_eval.utils import load_yaml_config as load_yaml
    try:
        config = load_yaml(path)
    except Exception as error:  # yaml, !function imports, include cycles: all mean a bad file
        raise UsageError(
            f"cannot read lm-eval task {path}: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}"
        ) from None
    if not isinstance(config, dict) or "task" not in config:
        raise UsageError(
            f"lm-eval task file {path} must be a mapping with a `task` name "
            "(groups: pass their name with the YAML folder's tasks installed)"
        )
    base = path.resolve().parent
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in kwargs:
        kwargs["data_files"] = _resolve_relative(kwargs["data_files"], base)
        config["dataset_kwargs"] = kwargs
    dataset_path = config.get("dataset_path")
    if isinstance(dataset_path, str) and dataset_path.startswith((".", "/")):
        config["dataset_path"] = _resolve_relative(dataset_path, base)
    return config


def _policy_folder(model: str) -> str:
    """A folder or hub id the hf back-end's loader reads (stage folders hold ``model/``)."""
    from forgetbench.models import resolve_model

    folder = Path(model)
    if folder.is_dir():
        if not (folder / "config.json").is_file() and (folder / "model").is_dir():
            folder = folder / "model"
        if (folder / "adapter_config.json").is_file():
            return str(folder)
        return resolve_model(str(folder))
    return resolve_model(model)


def load_lm(
    model: str,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str = "float32",
    max_length: Optional[int] = None,
):
    """The policy as an lm-eval ``HFLM`` (weights loaded once, adapters merged)."""
    _lm_eval()
    from lm_eval.models.huggingface import HFLM

    from forgetbench.backends.hf import load_policy
    from forgetbench.models import set_threads

    if device == "cpu" and dtype == "bfloat16":
        from forgetbench.devices import check_cpu_bf16

        check_cpu_bf16("--dtype", dtype, "float32")
    set_threads()
    weights, tokenizer, _ = load_policy(_policy_folder(model), dtype=dtype)
    weights.to(device)
    return HFLM(
        pretrained=weights,
        tokenizer=tokenizer,
        batch_size=batch_size,
        device=device,
        max_length=max_length,
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float))  # bools too: 0/1 scores


def result_rows(results: dict, model: str) -> list[dict]:
    """One row per (task, metric, filter) of an lm-eval results dict (see the module docstring)."""
    common = {
        "model": model,
        "lm_eval_version": installed_version("lm_eval"),
        **{version_column(name): found for name, found in package_versions().items()},
        "python_version": platform.python_version(),
        "git_revision": git_revision(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    rows = []
    samples = results.get("samples") or {}
    for task, values in sorted(results["results"].items()):
        better = results.get("higher_is_better", {}).get(task, {})
        counts = results.get("n-samples", {}).get(task, {})
        for key, value in values.items():
            if "," not in key or "_stderr," in key or not _is_number(value):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            stderr = float(stderr) if _is_number(stderr) else math.nan
            scores = [
                s[metric]
                for s in samples.get(task, [])
                if s.get("filter") == filter_name and metric in s
            ]
            row = None
            if scores and all(_is_number(v) for v in scores):
                binary = all(float(v) in (0.0, 1.0) for v in scores)
                row = metric_row([{"value": float(v)} for v in scores], "mean", binary)
                if not math.isclose(row["value"], float(value), rel_tol=1e-9, abs_tol=1e-12):
                    row = None  # not a plain mean of per-document scores
            if row is None:
                n = int(counts.get("effective", len(scores)) or 0)
                row = {
                    "value": float(value),
                    "ci_low": float(value) - Z95 * stderr,
                    "ci_high": float(value) + Z95 * stderr,
                    "ci_method": "normal95",
                    "n": n,
                    "n_missing": 0,
                    "wilson_low": math.nan,
                    "wilson_high": math.nan,
                }
            row["stderr"] = stderr if not math.isnan(stderr) else row.get("stderr", math.nan)
            direction = better.get(metric)
            rows.append(
                {
                    "eval": task,
                    "eval_version": results.get("versions", {}).get(task),
                    "judge": f"lm-eval/{filter_name}",
                    "metric": metric,
                    **row,
                    "n_documents": counts.get("original"),
                    "direction": None
                    if direction is None
                    else ("higher" if direction else "lower"),
                    **common,
                }
            )
    return rows


def run_lmeval(
    model: str,
    tasks: list[str],
    limit: Optional[float] = None,
    num_fewshot: Optional[int] = None,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str = "float32",
    apply_chat_template: bool = False,
    gen_kwargs: Optional[dict] = None,
    lm=None,
) -> list[dict]:
    """Evaluate ``model`` on lm-eval ``tasks``; the results as metric rows (module docstring).

    ``limit`` caps the documents per task (lm-eval's own: below 1 it is a fraction);
    ``gen_kwargs`` update generation tasks' settings (e.g. ``{"max_gen_toks": 64}``). ``lm``
    re-uses an already loaded ``HFLM``."""
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise UsageError("name at least one lm-eval task (--task NAME_OR_YAML)")
    specs = [resolve_task(task) for task in tasks]
    names = [spec for spec in specs if isinstance(spec, str)]
    # Indexing lm-eval's own ~15k task files takes seconds: only when a task is named from it.
    manager = TaskManager(include_path=str(tasks_dir() / "lmeval"), include_defaults=bool(names))
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise UsageError(
            f"lm-eval does not know task(s) {', '.join(unknown)}; use a YAML path, "
            f"a file in tasks/lmeval/ ({', '.join(local_tasks())}) or an lm-eval "
            "task, group or tag name"
        )
    if lm is None:
        lm = load_lm(model, batch_size=batch_size, device=device, dtype=dtype)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=specs,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=True,
        apply_chat_template=apply_chat_template,
        gen_kwargs=gen_kwargs or None,
        task_manager=manager,
        bootstrap_iters=1000,
    )
    return result_rows(results, model)
