"""forgetbench: how much alignment survives downstream fine-tuning.

The public API for plugin packages is the names below (``from forgetbench import method, Field,
run_grpo``); a plugin needs nothing else. They are imported on first use, so importing forgetbench
(and ``forgetbench list``) stays free of torch and TRL.

- registering: ``method``, ``attack``, ``eval_``, ``judge``, ``reward``, ``backend`` (decorators),
  ``register``; ``register_task_dir`` (a package's folder of eval, attack and training-task
  YAMLs with their data, laid out like ``tasks/``, registered under the package's namespace);
- configs: ``Field``, ``StrictModel``, ``OptimConfig`` (optimiser + LoRA), ``SFTSettings``,
  ``GRPOFamilyConfig``, ``GRPOMethodConfig``;
- training loops, each returning the saved policy folder ``out_dir/model`` (the method contract):
  ``run_sft`` (and ``sft_dataset``), ``run_grpo``, ``make_advantage_trainer``,
  ``train_with_advantage`` (a GRPO-family method on its task's prompts and reward),
  ``save_policy``, ``train_and_save``;
- advantages: ``grpo_advantages``, ``frpo_advantages``;
- data: ``DatasetSpec``, ``load_train_task``, ``load_train_prompts``, ``load_rows``,
  ``take_by_kind``;
- models: ``resolve_model`` (embedded name, folder or hub id -> loadable path), ``load_model``,
  ``load_tokenizer``, ``generate_responses`` (greedy answers of a model, as data),
  ``match_refusal`` (the refusal judge's phrase matcher);
- errors: ``ForgetbenchError`` (one line: the problem and the fix), ``UsageError``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "forgetbench.registry": ("method", "attack", "eval_", "judge", "reward", "backend", "register"),
    "forgetbench.task_sources": ("register_task_dir",),
    "forgetbench.config": ("Field", "StrictModel"),
    "forgetbench.training.common": ("OptimConfig", "save_policy", "train_and_save"),
    "forgetbench.training.sft": ("SFTSettings", "run_sft", "sft_dataset"),
    "forgetbench.training.grpo": ("GRPOFamilyConfig", "run_grpo", "make_advantage_trainer"),
    "forgetbench.methods.grpo": ("GRPOMethodConfig",),
    "forgetbench.methods.rl": ("train_with_advantage",),
    "forgetbench.advantages": ("grpo_advantages", "frpo_advantages"),
    "forgetbench.tasks": (
        "DatasetSpec",
        "load_train_task",
        "load_train_prompts",
        "load_rows",
        "take_by_kind",
    ),
    "forgetbench.models": ("load_model", "load_tokenizer", "resolve_model"),
    "forgetbench.backends.hf": ("generate_responses",),
    "forgetbench.judges.refusal": ("match_refusal",),
    "forgetbench.errors": ("ForgetbenchError", "UsageError"),
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'forgetbench' has no attribute {name!r}")
