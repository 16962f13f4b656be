"""The entry point (group ``forgetbench``, name ``baselines``): importing the modules registers
their methods under ``baselines/``."""

from baselines import booster, deep_align, grpo_strong_kl, safety_sft, sam_grpo, vaccine

__all__ = ["booster", "deep_align", "grpo_strong_kl", "safety_sft", "sam_grpo", "vaccine"]
