"""What the stage fork server imports once, so that no stage process pays for it again.

Third-party modules only: importing them reads no forgetbench setting and registers no plugin,
so a forked stage behaves as a fresh interpreter would. Their import-time warnings (TRL probing
for vLLM, for instance) would land on the runner's terminal, which the fork server shares: they
are silenced here (a fresh worker wrote them to its log).
"""

import os
import warnings


def _preload() -> None:
    saved = os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for module in (
                "torch",
                "transformers",
                "peft",
                "datasets",
                "accelerate",
                "trl",
                "sentence_transformers",
                "safetensors",
            ):
                try:
                    __import__(module)
                except Exception:  # noqa: BLE001 - a missing extra is imported (and reported) by
                    pass  # the stage that needs it, as in a fresh interpreter
            try:
                # transformers resolves these lazily; the embedded model is a Llama.
                from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
                from transformers.models.llama import modeling_llama  # noqa: F401
                from trl import GRPOTrainer, SFTTrainer  # noqa: F401
            except Exception:  # noqa: BLE001
                pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


_preload()
