"""The GRPO family on TRL's GRPOTrainer, with the advantage supplied as a pure function.

TRL 1.16 computes advantages inline in ``_generate_and_score_completions`` (there is no hook), so
the trainer ``make_advantage_trainer`` builds lets TRL score the completions, keeps the gathered
rewards and prompt indices, and replaces the advantages with
``advantage_fn(rewards, num_generations)``. Everything else (sampling, reference log-probs, the k3
KL term, clipping, loss aggregation) stays TRL's. The TRL version is pinned in pyproject.toml because this relies on its private method names.

Extension points for a method with its own loop (``baselines/sam_grpo`` is a worked example):
``run_grpo(trainer_cls=...)`` takes a subclass of TRL's GRPOTrainer (overriding ``training_step``,
``compute_loss``, ...) and puts the advantage hook on top of it; ``trainer_kwargs`` go to its
constructor and ``args_kwargs`` to GRPOConfig.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import model_serializer, model_validator

from forgetbench import registry
from forgetbench.config import Field
from forgetbench.errors import ForgetbenchError, UsageError
from forgetbench.training.common import (
    OptimConfig,
    load_dtype,
    peft_config,
    step_timer,
    train_and_save,
    trainer_args,
)

AdvantageFn = Callable[[Any, int], Any]  # (flat reward tensor, group size) -> advantages


class GRPOFamilyConfig(OptimConfig):
    """Settings shared by every method trained with the GRPO loop."""

    num_generations: int = Field(8, ge=1, description="Group size G: completions per prompt.")
    prompts_per_step: int = Field(
        2,
        ge=1,
        description="Prompts per optimiser step; the step sees "
        "prompts_per_step * num_generations completions.",
    )
    max_completion_length: int = Field(64, ge=1, description="Sampled completion tokens.")
    max_prompt_length: Optional[int] = Field(
        None,
        ge=1,
        description="Training prompts longer "
        "than this many chat-templated tokens are dropped "
        "(counted in the log); None keeps all.",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for rollouts.")
    beta: float = Field(
        0.0,
        ge=0,
        description="Weight of the k3 KL penalty to the reference policy "
        "(the adapter-disabled model under LoRA).",
    )
    epsilon_low: float = Field(0.2, ge=0, description="PPO clip: lower ratio bound 1 - eps_low.")
    epsilon_high: float = Field(0.2, ge=0, description="PPO clip: upper ratio bound 1 + eps_high.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = Field(
        "grpo",
        description="Token aggregation: grpo = per-sequence mean then batch mean; bnpo = "
        "token mean over the batch; dr_grpo = token sum / (batch * max_completion_length).",
    )
    train_task: str = Field(
        "safety",
        description="The training task (`forgetbench list "
        "train_task`, a plugin's lab/name, or a YAML file's path).",
    )
    reward: Optional[str] = Field(
        None,
        description="Reward plugin scoring each completion "
        "(`forgetbench list reward`); unset: the training task's.",
    )
    reward_config: dict[str, Any] = Field(
        default_factory=dict,
        description="The reward plugin's "
        "own settings, validated by its config class (over the "
        "training task's when its reward is the task's).",
    )
    generation_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra generate() "
        "arguments for rollouts, e.g. {min_new_tokens: 32} "
        "to force full-length completions when timing.",
    )
    rollouts: Literal["hf", "vllm-colocate", "vllm-server"] = Field(
        "hf",
        description="Who samples the rollouts: hf = transformers generate inside the "
        "trainer; vllm-colocate = a vLLM engine in the training process sharing its GPU (TRL's "
        "use_vllm, vllm_mode=colocate); vllm-server = a `trl vllm-serve` server on other GPUs "
        "(vllm_server_host/port). The vLLM modes need vllm and a CUDA GPU (README, 'Running at "
        "paper scale').",
    )
    vllm_server_host: str = Field(
        "127.0.0.1", description="rollouts: vllm-server only: host of the `trl vllm-serve` server."
    )
    vllm_server_port: int = Field(
        8000, ge=1, le=65535, description="rollouts: vllm-server only: its port."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        le=1,
        description="rollouts: vllm-colocate only: fraction of the GPU the "
        "engine takes (the rest is the trainer's).",
    )
    vllm_tensor_parallel_size: int = Field(
        1, ge=1, description="rollouts: vllm-colocate only: GPUs the engine shards the model over."
    )
    n_harmful: int = Field(64, ge=0, description="Harmful training prompts taken from the task.")
    n_harmless: int = Field(64, ge=0, description="Harmless training prompts taken from the task.")
    n_prompts: Optional[int] = Field(
        None,
        ge=1,
        description="For a task without groups (kinds): "
        "its first n_prompts prompts; None takes them all.",
    )

    @model_serializer(mode="wrap")
    def _without_unset_n_prompts(self, handler):
        # Unset, it is left out of the dump, so the configs (and stage keys) of the runs made
        # before it existed are unchanged.
        values = handler(self)
        if values.get("n_prompts") is None:
            values.pop("n_prompts", None)
        return values

    def rows_per_micro_batch(self) -> int | None:
        """A micro-batch is completions: the step's ``prompts_per_step * num_generations`` over
        ``grad_accum`` micro-batches (the ranks of a multi-process stage share them)."""
        completions = self.prompts_per_step * self.num_generations
        if completions % self.grad_accum:
            raise ValueError(
                f"prompts_per_step * num_generations = {completions} must divide by "
                f"grad_accum = {self.grad_accum}"
            )
        return completions // self.grad_accum

    @model_validator(mode="after")
    def _reward_config_is_valid(self):
        # Checked when the config is resolved, so a bad reward key fails before any training.
        if self.reward is None:  # the training task's reward (the safety task's: `safety`)
            from forgetbench.config import deep_merge
            from forgetbench.tasks import load_train_task

            task = load_train_task(self.train_task)
            self.reward = task.reward
            self.reward_config = deep_merge(task.reward_config, self.reward_config)
        registry.get("reward", self.reward).build_config(self.reward_config)
        return self


def rollout_args(config: GRPOFamilyConfig) -> dict:
    """TRL GRPOConfig fields for ``config.rollouts``. A vLLM mode where vllm does not import is a
    UsageError here, before the model loads (``devices.check_training`` says it before any
    stage)."""
    if config.rollouts == "hf":
        return {"use_vllm": False}
    from forgetbench.devices import check_colocated_rollouts, check_tensor_parallel, check_vllm

    check_vllm(f"rollouts={config.rollouts}", "rollouts=hf")
    if config.rollouts == "vllm-server":
        return {
            "use_vllm": True,
            "vllm_mode": "server",
            "vllm_server_host": config.vllm_server_host,
            "vllm_server_port": config.vllm_server_port,
        }
    check_colocated_rollouts("rollouts")
    check_tensor_parallel(config.vllm_tensor_parallel_size, "vllm_tensor_parallel_size")
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": config.vllm_gpu_memory_utilization,
        "vllm_tensor_parallel_size": config.vllm_tensor_parallel_size,
    }


class AdvantageCheckError(ForgetbenchError):
    pass


class RewardFunctionError(ForgetbenchError):
    pass


@lru_cache(maxsize=None)
def make_advantage_trainer(base=None):
    """``base`` (TRL's GRPOTrainer, or a subclass of it) with the advantage hook: its constructor
    takes ``advantage_fn``, and the advantages TRL computes are replaced by
    ``advantage_fn(rewards, num_generations)`` on the gathered rewards. A method that changes the
    update (two passes, an extra loss term) subclasses GRPOTrainer and passes it here or as
    ``run_grpo(trainer_cls=...)``; the rollouts, rewards and advantages it sees are the method's."""
    import torch
    from accelerate.utils import gather_object
    from trl import GRPOTrainer

    base = base or GRPOTrainer
    if not (isinstance(base, type) and issubclass(base, GRPOTrainer)):
        raise UsageError(f"make_advantage_trainer({base!r}): pass a subclass of trl.GRPOTrainer")

    class AdvantageGRPOTrainer(base):
        def __init__(self, *args, advantage_fn: AdvantageFn, **kwargs):
            self.advantage_fn = advantage_fn
            super().__init__(*args, **kwargs)

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            try:
                rewards_per_func = super()._calculate_rewards(
                    inputs, prompts, completions, completion_ids_list
                )
            except ForgetbenchError:
                raise
            except Exception as error:  # a third-party reward: name it instead of a TRL trace
                names = ", ".join(self.reward_func_names)
                raise RewardFunctionError(
                    f"reward function ({names}) raised {type(error).__name__}: {error}"
                ) from error
            self._gathered_rewards = rewards_per_func
            self._gathered_prompt_index = gather_object([row["prompt_index"] for row in inputs])
            return rewards_per_func

        def _generate_single_turn(self, *args, **kwargs):
            # TRL samples hf rollouts outside autocast, so under mixed precision they decoded in
            # fp32 while the update ran in 16 bits. Decoding a few rows reads every weight per
            # token; autocast casts each weight once per call (its cache) and the step's rollouts
            # took 4.3-5.4 s instead of 5.9 (16 x 32 tokens, embedded model, 2-core AVX512-BF16
            # CPU). Sampling in the training precision is what vLLM rollouts do at paper scale;
            # TRL recomputes the log-probs of the update itself (on-policy: one step per batch).
            if self.use_vllm:
                return super()._generate_single_turn(*args, **kwargs)
            with self.accelerator.autocast():
                return super()._generate_single_turn(*args, **kwargs)

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            group = self.num_generations
            index = torch.tensor(self._gathered_prompt_index).view(-1, group)
            if not (index == index[:, :1]).all():
                raise AdvantageCheckError(
                    "a generation batch mixes prompts inside a group; groups "
                    "must be consecutive completions of one prompt"
                )
            bad = ~torch.isfinite(self._gathered_rewards)
            if bad.any():
                rows = bad.any(dim=1).nonzero().flatten().tolist()
                raise AdvantageCheckError(
                    f"a reward function returned None, NaN or inf for "
                    f"{len(rows)} completion(s) (rows {rows[:5]}); every "
                    "completion needs a finite reward"
                )
            rewards = (
                self._gathered_rewards * self.reward_weights.to(self._gathered_rewards.device)
            ).sum(dim=1)
            advantages = self.advantage_fn(rewards.cpu(), group)
            local = len(output["advantages"])
            start = self.accelerator.process_index * local
            output["advantages"] = advantages[start : start + local].to(
                output["advantages"].device, output["advantages"].dtype
            )
            self._metrics["train"]["advantage_abs_mean"].append(advantages.abs().mean().item())
            return output

    AdvantageGRPOTrainer.__name__ = AdvantageGRPOTrainer.__qualname__ = f"Advantage{base.__name__}"
    return AdvantageGRPOTrainer


def run_grpo(
    model_path: str,
    dataset,
    reward_funcs: list,
    advantage_fn: AdvantageFn,
    config: GRPOFamilyConfig,
    out_dir: Path,
    seed: int,
    scale_rewards: str = "none",
    callbacks: list | None = None,
    trainer_cls=None,
    trainer_kwargs: dict | None = None,
    args_kwargs: dict | None = None,
) -> Path:
    """Train with GRPO's loop and ``advantage_fn``; returns the saved (merged) ``out_dir/model``.

    One optimiser step per generation batch (``steps_per_generation`` = the accumulation, one
    iteration), so the policy is on-policy and groups are never split across optimiser steps.
    ``callbacks``: extra TrainerCallbacks; ``trainer_cls``: a GRPOTrainer subclass to train with
    (the advantage hook is added on top, ``make_advantage_trainer``); ``trainer_kwargs``: extra
    constructor arguments (e.g. ``optimizers`` or the subclass's own settings); ``args_kwargs``:
    extra GRPOConfig fields.
    """
    from trl import GRPOConfig

    from forgetbench.attention import grouped_attention
    from forgetbench.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    # Each rank's micro-batch of completions and accumulation steps (all of them on one
    # process); TRL samples one generation batch of per-rank rows x ranks x steps, which is the
    # step's prompts_per_step * num_generations completions whatever the number of ranks.
    base = trainer_args(config, out_dir, seed)
    args = GRPOConfig(
        **{
            **base,
            "num_generations": config.num_generations,
            "steps_per_generation": base["gradient_accumulation_steps"],
            "num_iterations": 1,
            "max_completion_length": config.max_completion_length,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "beta": config.beta,
            "epsilon": config.epsilon_low,
            "epsilon_high": config.epsilon_high,
            "loss_type": config.loss_type,
            "scale_rewards": scale_rewards,
            "mask_truncated_completions": False,
            "log_completions": False,
            "shuffle_dataset": True,
            "generation_kwargs": dict(config.generation_kwargs) or None,
            **rollout_args(config),
            **(args_kwargs or {}),
        }
    )
    with _rollout_environment(config):
        trainer = make_advantage_trainer(trainer_cls)(
            # no-grad passes (hf rollouts, log-probs) attend without KV copies; the passes
            # with gradients are transformers' own sdpa (forgetbench/attention.py)
            model=grouped_attention(load_model(model_path, load_dtype(config))),
            args=args,
            train_dataset=dataset,
            reward_funcs=reward_funcs,
            processing_class=tokenizer,
            peft_config=peft_config(config),
            advantage_fn=advantage_fn,
            callbacks=[step_timer(), *(callbacks or [])],
            **(trainer_kwargs or {}),
        )
        if not config.fused_lm_head:
            from forgetbench.training.lm_head import own_lm_heads

            own_lm_heads(trainer)
        return train_and_save(trainer, tokenizer, out_dir)


def _rollout_environment(config: GRPOFamilyConfig):
    """A colocated vLLM engine on the CPU build reads its KV-cache size and threads from the
    environment, as the vllm back-end's engines do (``vllm_backend._engine_environment``)."""
    from contextlib import nullcontext

    if config.rollouts != "vllm-colocate":
        return nullcontext()
    from forgetbench.backends.base import GenerationConfig
    from forgetbench.backends.vllm_backend import _engine_environment, _is_cpu_build

    return _engine_environment(GenerationConfig(), _is_cpu_build())
