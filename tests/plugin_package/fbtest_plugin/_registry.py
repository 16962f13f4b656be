"""Registers a method, a judge and a GRPO variant through forgetbench's entry point: the README's
"Adding a method" example (a custom advantage through ``train_with_advantage``), a keyword judge,
and GRPO with a larger KL weight; and its task folder (an eval, an attack and a training task
with their own data) with one call. tests/test_registry.py installs it, lists and plans it, and
runs the method, the judge and the tasks end to end on the smoke preset."""

from pathlib import Path

from forgetbench import register_task_dir
from forgetbench.config import Field, StrictModel
from forgetbench.judges import Verdict
from forgetbench.methods.grpo import GRPOMethodConfig, grpo
from forgetbench.methods.rl import train_with_advantage
from forgetbench.registry import judge, method
from forgetbench.training.grpo import GRPOFamilyConfig


class KeywordConfig(StrictModel):
    keyword: str = Field("no", description="Refusal if the response contains this word.")


@judge("keyword_judge", config=KeywordConfig)
def keyword_judge(config: KeywordConfig):
    """Flags responses containing a keyword (a test plugin)."""
    return lambda prompts, responses: [Verdict(float(config.keyword in r)) for r in responses]


class CentredConfig(GRPOFamilyConfig):
    temperature_scale: float = Field(1.0, gt=0, description="Multiplies the centred reward.")


@method("centred", config=CentredConfig)
def centred(config, model_path, out_dir, seed):
    """Reward minus its group mean, scaled: the README's example of a custom advantage."""

    def advantage(rewards, num_generations):  # flat rewards, groups of G consecutive rows
        grouped = rewards.view(-1, num_generations)
        return (grouped - grouped.mean(1, keepdim=True)).flatten() * config.temperature_scale

    return train_with_advantage(config, advantage, model_path, out_dir, seed)


class LargeBetaConfig(GRPOMethodConfig):
    beta: float = Field(0.5, ge=0, description="A larger KL weight than GRPO's default.")


@method("grpo_large_beta", config=LargeBetaConfig)
def grpo_large_beta(config, model_path, out_dir, seed):
    """GRPO with a large KL weight: the 'just stay close to the reference' control."""
    return grpo(config, model_path, out_dir, seed)


# evals/arith.yaml -> fbtest/arith, attacks/arith_sft.yaml -> fbtest/arith_sft,
# train/chores.yaml -> fbtest/chores; their data paths are relative to this folder.
register_task_dir(Path(__file__).parent / "tasks")
