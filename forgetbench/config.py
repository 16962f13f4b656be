"""Typed configs, presets and command-line overrides.

Every plugin declares a pydantic config class that rejects unknown keys; its fields are documented
where they are defined. A run's config is resolved in layers, later layers winning:

    plugin defaults  <  preset `method:` / `attack:` (shared fields)  <  preset `methods.<name>:`
    <  `--set section.field=value` on the command line

A preset's shared `method:` / `attack:` fields apply only to plugins whose config declares them
(``cell.declared_fields``); every other layer rejects a key the plugin does not declare.

The fully resolved config is saved beside every stage output, and ``stable_hash`` of it names the
stage's folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgetbench.errors import UsageError

PRESETS_DIR = Path(__file__).parent / "presets"


class StrictModel(BaseModel):
    """Base for every config: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def format_validation_error(where: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key {field!r}")
        elif not item["loc"]:  # a check across fields: its input is the whole config, not shown
            problems.append(f"{field}: {item['msg']}")
        else:
            problems.append(f"{field}: {item['msg']} (got {item.get('input')!r})")
    return f"invalid {where} config: {'; '.join(problems)}"


def validate(model_cls: type[BaseModel], values: dict, where: str) -> BaseModel:
    try:
        return model_cls.model_validate(values)
    except ValidationError as error:
        raise UsageError(
            format_validation_error(where, error)
            + f". Fix the value or see the fields of {model_cls.__name__}."
        ) from None


def load_yaml(path: Path, what: str = "config file") -> dict:
    """A YAML file that must hold a non-empty mapping: every other case is one line naming the
    file and the fix (missing, a folder, not UTF-8, malformed, empty, not a mapping)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a YAML file; pass the file's path")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{what} {path} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UsageError(
            f"malformed YAML in {path}{where}: {problem}; fix the file's syntax"
        ) from None
    if values is None:
        raise UsageError(f"{what} {path} is empty; write its settings in it or leave it out")
    if not isinstance(values, dict):
        raise UsageError(
            f"{what} {path} must be a YAML mapping (key: value lines), got {type(values).__name__}"
        )
    return values


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            import difflib

            close = difflib.get_close_matches(name_or_path, preset_names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(
                f"unknown preset {name_or_path!r}.{hint} Known presets: "
                f"{', '.join(preset_names())}, or pass a path to a YAML file."
            )
    return load_yaml(path, "preset")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"attack.learning_rate=1e-5"`` -> (["attack", "learning_rate"], 1e-05) with YAML typing."""
    key, sep, raw = text.partition("=")
    path = [part for part in key.strip().split(".")]
    if not sep or not key.strip() or any(not part for part in path):
        raise UsageError(
            f"malformed --set {text!r}: expected SECTION.FIELD=VALUE, "
            "e.g. --set attack.learning_rate=1e-5"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UsageError(
            f"malformed value in --set {text!r}: it must be a YAML scalar, list or mapping"
        ) from None
    # YAML 1.1 reads "1e-5" as a string; numbers are what users mean here.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return path, value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# Settings that change how fast a stage runs, how much memory it takes or where it reports its
# progress, never what it computes (tests/test_training_settings.py checks gradient checkpointing
# bit for bit). Hashes leave them out, so switching one re-uses the stages already computed and
# keeps a row's track; request.json still records them. `processes` and `distributed` spread one
# optimiser step over several ranks without changing its rows or its loss (the global batch is
# held fixed: forgetbench/training/distributed.py); only float summation order and rollout draws
# differ, as with `precision: auto` on another machine, so a run on 8 GPUs and on 1 share a track.
# `fused_lm_head` computes the same SFT and GRPO losses through TRL's chunked kernel or the
# model's own head: the losses and gradients agree to float rounding
# (tests/test_training_settings.py), as they do across thread counts and machines, which no key
# holds either. `balanced_micro_batches` trains an SFT step's rows in micro-batches grouped by
# length: the same rows and loss per step, summed in another order (forgetbench/training/
# micro_batches.py; tests/test_training_settings.py).
SPEED_ONLY_SETTINGS = frozenset(
    {
        "gradient_checkpointing",
        "fused_lm_head",
        "balanced_micro_batches",
        "processes",
        "distributed",
        "report_to",
        "vllm_server_host",
        "vllm_server_port",
        "vllm_gpu_memory_utilization",
    }
)
# Where a machine keeps a task's files, never what they hold (that is the data's `sha256`, which
# is hashed): forgetbench.task_sources. Left out so stage keys are the same on every machine.
LOCATION_ONLY_SETTINGS = frozenset({"path_root"})
_HASH_BLIND = SPEED_ONLY_SETTINGS | LOCATION_ONLY_SETTINGS
# Settings added after stages were computed, at the value that does what those stages did (fp32
# training on CPU, rollouts with HF generate): left out of hashes at that value only, so adding
# the setting did not re-key every stage; any other value is part of the key.
LEFT_OUT_AT_DEFAULT = {"precision": "auto", "rollouts": "hf", "vllm_tensor_parallel_size": 1}


# Settings hashed at one fixed value whatever they are set to: they change only speed, but were
# keyed before that was known, so hashing them at the value every stage computed so far was
# keyed with keeps those stages, and each track, while the setting changes. The hf back-end's
# prompts per generate() call: left-padded greedy decoding gives the same tokens at any batch size
# (tests/test_backend_hf.py; measured on the tiny preset's evals, batches of 16 against one call
# per eval: the same tokens for all 130 prompts of two policies, README "the main job"); vLLM
# schedules its own batches.
# With temperature > 0 the draws depend on it, as they do on `processes`; their distribution
# does not.
HASHED_AS = {("backend", "config", "batch_size"): 16}
# Values hashed as another value of the same setting: generation `dtype: auto` is float32 on a
# CPU without bf16 in hardware, the value every stage was keyed with before `tiny` said auto, so
# those stages and their tracks are kept. Where auto means bfloat16 (a GPU, an AVX512-BF16 or AMX
# CPU) it shares the key as `precision: auto` does (LEFT_OUT_AT_DEFAULT); the results table's
# `generation_dtype` and `train_precision` columns say what really ran.
HASHED_VALUE_AS = {(("backend", "config", "dtype"), "auto"): "float32"}


def _without_speed_settings(value: Any, path: tuple = ()) -> Any:
    if isinstance(value, dict):
        kept = {}
        for k, v in value.items():
            if k in _HASH_BLIND or (k in LEFT_OUT_AT_DEFAULT and v == LEFT_OUT_AT_DEFAULT[k]):
                continue
            where = (*path, k)
            if where[-3:] in HASHED_AS:
                kept[k] = HASHED_AS[where[-3:]]
            elif isinstance(v, str) and (where[-3:], v) in HASHED_VALUE_AS:
                kept[k] = HASHED_VALUE_AS[where[-3:], v]
            else:
                kept[k] = _without_speed_settings(v, where)
        return kept
    if isinstance(value, (list, tuple)):
        return [_without_speed_settings(v, path) for v in value]
    return value


def stable_hash(value: Any, length: int = 12) -> str:
    """A short content hash of a config (stage keys, config and protocol hashes), blind to
    :data:`SPEED_ONLY_SETTINGS` and :data:`LOCATION_ONLY_SETTINGS`, with :data:`HASHED_AS`
    settings at their fixed value."""
    return hashlib.sha256(canonical_json(_without_speed_settings(value)).encode()).hexdigest()[
        :length
    ]


def dump(model: BaseModel) -> dict:
    return model.model_dump(mode="json")


__all__ = [
    "Field",
    "StrictModel",
    "apply_override",
    "canonical_json",
    "deep_merge",
    "dump",
    "load_preset",
    "load_yaml",
    "parse_override",
    "stable_hash",
    "validate",
]
