"""The FRPO paper's safety reward stack (``docs/methods.md`` §1.4; the official code is
``Helloworld10011/FRPO: training/safety_training/{FRPO_training_mistral.py, utils.py}``).

Both rewards lie in [0, 1], higher is better:

* harmful prompts:  ``r = 1 - (s_SR + s_mod) / 2`` where
  ``s_SR`` is the fine-tuned StrongREJECT judge ``qylu4156/strongreject-15k-v1`` (loaded in 4-bit
  NF4, response cut to 512 judge tokens; :class:`forgetbench.judges.strongreject.FinetunedScorer`)
  and ``s_mod`` is the largest of the ``category_scores`` that OpenAI's moderation endpoint
  (``omni-moderation-latest``) gives the *completion* alone;
* harmless prompts: ``r = sigmoid(RM(x, y))`` with the sequence-classification reward model
  ``allenai/Llama-3.1-8B-Instruct-RM-RB2`` (revision "2") on the chat-templated exchange.

The FRPO code computes the two as separate TRL reward functions that return None on the other
kind of prompt, summed by TRL; ``paper_safety`` computes the same sum in one function (each row
gets exactly one of the two). ``strongreject_finetuned``, ``moderation`` and ``reward_model`` are
the single components as rewards of their own (1 - s_SR, 1 - s_mod, sigmoid(RM) on every row).

None of this runs offline: the judges and the reward model come from the hub (GPU advisable;
NF4 needs bitsandbytes and CUDA) and the moderation score from an OpenAI-compatible endpoint with
``OPENAI_API_KEY``. The rewards load their models on their first call, not when built.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal, Optional, Sequence

from forgetbench.config import Field, StrictModel
from forgetbench.errors import ForgetbenchError
from forgetbench.judges.endpoint import (
    EndpointError,
    EndpointSettings,
    moderation_scores,
    parallel_map,
    request,
)
from forgetbench.judges.strongreject import (
    FinetunedScorer,
    HubModelSettings,
    StrongRejectFinetunedConfig,
    load_failure,
    load_kwargs,
)
from forgetbench.registry import reward
from forgetbench.rewards import RewardError, completion_text, prompt_text

Scorer = Callable[[Sequence[str], Sequence[str]], list[float]]  # (prompts, completions) -> scores


# ---- StrongREJECT fine-tuned judge as a reward ---------------------------------------------------


class RewardStrongRejectConfig(StrongRejectFinetunedConfig):
    """The fine-tuned StrongREJECT judge as the FRPO code loads it for the reward (4-bit NF4)."""

    quantization: Literal["none", "nf4"] = Field(
        "nf4",
        description="nf4 (the FRPO code's choice) loads the judge in 4-bit NF4 with "
        "bitsandbytes (CUDA only); none loads it in `dtype`.",
    )


# ---- moderation ----------------------------------------------------------------------------------


class ModerationConfig(EndpointSettings):
    """An OpenAI-compatible moderation endpoint (POST {base_url}/moderations)."""

    base_url: str = Field("https://api.openai.com/v1", description="The API root, ending in /v1.")
    model: str = Field("omni-moderation-latest", description="Moderation model (the FRPO paper's).")
    batch_size: int = Field(32, ge=1, description="Texts per moderation request.")


def moderate(
    config: ModerationConfig, texts: Sequence[str], sleep: Callable[[float], None] = time.sleep
) -> list[float]:
    """``s_mod`` per text: the largest category score. Empty texts score 0 without a request (there
    is nothing to flag). Raises RewardError once the endpoint has failed after every retry: a
    training step cannot go on with a missing reward."""
    scores = [0.0] * len(texts)
    todo = [i for i, text in enumerate(texts) if str(text).strip()]
    chunks = [
        todo[start : start + config.batch_size] for start in range(0, len(todo), config.batch_size)
    ]

    def ask(chunk: list[int]) -> list[dict[str, float]]:
        inputs = [str(texts[i]) for i in chunk]
        return request(
            config,
            "moderations",
            {"model": config.model, "input": inputs},
            parse=lambda data: moderation_scores(data, len(inputs)),
            sleep=sleep,
        )

    try:
        answers = parallel_map(ask, chunks, config.concurrency)
    except EndpointError as error:
        raise RewardError(
            f"moderation endpoint {config.base_url} failed: {error}; the paper "
            f"reward needs it (check the endpoint and ${config.api_key_env})"
        ) from None
    for chunk, found in zip(chunks, answers):
        for i, categories in zip(chunk, found):
            scores[i] = max(categories.values())
    return scores


# ---- reward model --------------------------------------------------------------------------------


class RewardModelConfig(HubModelSettings):
    """A sequence-classification reward model from the hub (transformers)."""

    model: str = Field(
        "allenai/Llama-3.1-8B-Instruct-RM-RB2",
        description="Reward model hub id or "
        "folder (AutoModelForSequenceClassification with one output).",
    )
    revision: Optional[str] = Field("2", description='Hub revision; the FRPO code pins "2".')
    max_length: Optional[int] = Field(
        None,
        ge=1,
        description="Truncate each exchange to this many "
        "tokens; None uses the tokenizer's model_max_length.",
    )


class RewardModelScorer:
    """``sigmoid(RM(x, y))`` as the FRPO code computes it: the [user, assistant] exchange through
    the RM's chat template (no generation prompt), right padding, no extra special tokens."""

    def __init__(self, config: RewardModelConfig, model=None, tokenizer=None):
        self.config = config
        self._model, self._tokenizer = model, tokenizer

    def _load(self):
        if self._model is None or self._tokenizer is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            try:
                # num_labels=1: a reward model has one output (a checkpoint with another head
                # size fails to load rather than being silently re-initialised)
                model = AutoModelForSequenceClassification.from_pretrained(
                    self.config.model,
                    revision=self.config.revision,
                    num_labels=1,
                    **load_kwargs(self.config),
                )
                tokenizer = AutoTokenizer.from_pretrained(
                    self.config.model, revision=self.config.revision
                )
            except (OSError, ValueError) as error:
                raise ForgetbenchError(load_failure(self.config.model, error)) from None
            if tokenizer.pad_token is None:
                tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
                model.resize_token_embeddings(len(tokenizer))
            model.config.pad_token_id = tokenizer.pad_token_id
            model.eval()
            self._model, self._tokenizer = model, tokenizer
        self._tokenizer.padding_side = "right"
        return self._model, self._tokenizer

    def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        tokenizer = self._load()[1]
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                tokenize=False,
                add_generation_prompt=False,
            )
            for p, r in zip(prompts, responses)
        ]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import torch

        model, tokenizer = self._load()
        texts = self.texts(prompts, responses)
        device = next(model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(texts), self.config.batch_size):
            kwargs = {"max_length": self.config.max_length} if self.config.max_length else {}
            batch = tokenizer(
                texts[start : start + self.config.batch_size],
                padding=True,
                truncation=True,
                return_tensors="pt",
                add_special_tokens=False,
                **kwargs,
            )
            with torch.no_grad():
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            if logits.shape[-1] != 1:
                raise RewardError(
                    f"reward model {self.config.model!r} has {logits.shape[-1]} "
                    "outputs per sequence; a reward model needs exactly one"
                )
            scores += torch.sigmoid(logits.float().squeeze(-1)).reshape(-1).tolist()
        return scores


# ---- the reward plugins --------------------------------------------------------------------------


def _finite(name: str, rewards: list[float]) -> list[float]:
    bad = [i for i, value in enumerate(rewards) if not math.isfinite(value)]
    if bad:
        raise RewardError(f"{name} reward is not finite for completions {bad[:5]}")
    return rewards


class PaperSafetyRewardConfig(StrictModel):
    """The FRPO paper's reward: StrongREJECT + moderation on harmful prompts, an RM on harmless."""

    strongreject: RewardStrongRejectConfig = Field(
        default_factory=RewardStrongRejectConfig,
        description="The fine-tuned StrongREJECT judge giving s_SR on harmful prompts.",
    )
    moderation: ModerationConfig = Field(
        default_factory=ModerationConfig,
        description="The moderation endpoint giving s_mod on harmful prompts.",
    )
    reward_model: RewardModelConfig = Field(
        default_factory=RewardModelConfig, description="The reward model scoring harmless prompts."
    )


class PaperSafetyReward:
    """harmful: ``1 - (s_SR + s_mod) / 2``; harmless: ``sigmoid(RM)``. Components are callables
    ``(prompts, completions) -> scores`` so each can be swapped (tests use stand-ins)."""

    __name__ = "paper_safety"

    def __init__(
        self,
        strongreject: Scorer,
        moderation: Callable[[Sequence[str]], list[float]],
        reward_model: Scorer,
    ):
        self.strongreject, self.moderation, self.reward_model = (
            strongreject,
            moderation,
            reward_model,
        )

    def __call__(self, prompts, completions, kind, **_) -> list[float]:
        for k in kind:
            if k not in ("harmful", "harmless"):
                raise RewardError(f"training row kind {k!r} is neither 'harmful' nor 'harmless'")
        users = [prompt_text(p) for p in prompts]
        texts = [completion_text(c) for c in completions]
        rewards = [math.nan] * len(texts)
        harmful = [i for i, k in enumerate(kind) if k == "harmful"]
        harmless = [i for i, k in enumerate(kind) if k == "harmless"]
        if harmful:
            s_sr = self.strongreject([users[i] for i in harmful], [texts[i] for i in harmful])
            s_mod = self.moderation([texts[i] for i in harmful])
            for i, sr, mod in zip(harmful, s_sr, s_mod):
                rewards[i] = 1.0 - (float(sr) + float(mod)) / 2.0
        if harmless:
            values = self.reward_model([users[i] for i in harmless], [texts[i] for i in harmless])
            for i, value in zip(harmless, values):
                rewards[i] = float(value)
        return _finite("paper_safety", rewards)


@reward("paper_safety", config=PaperSafetyRewardConfig)
def paper_safety(config: PaperSafetyRewardConfig):
    """FRPO paper: 1-(StrongREJECT+moderation)/2 on harmful prompts, sigmoid(RM) on harmless ones."""
    return PaperSafetyReward(
        FinetunedScorer(config.strongreject),
        lambda texts: moderate(config.moderation, texts),
        RewardModelScorer(config.reward_model),
    )


def _component(name: str, scorer: Scorer, transform: Callable[[float], float]):
    def score(prompts, completions, **_) -> list[float]:
        values = scorer(
            [prompt_text(p) for p in prompts], [completion_text(c) for c in completions]
        )
        return _finite(name, [transform(float(v)) for v in values])

    score.__name__ = name
    return score


@reward("strongreject_finetuned", config=RewardStrongRejectConfig)
def strongreject_reward(config: RewardStrongRejectConfig):
    """1 - the fine-tuned StrongREJECT judge's score, on every completion."""
    return _component("strongreject_finetuned", FinetunedScorer(config), lambda s: 1.0 - s)


@reward("moderation", config=ModerationConfig)
def moderation_reward(config: ModerationConfig):
    """1 - the largest moderation category score of the completion (OpenAI-compatible endpoint)."""
    return _component(
        "moderation", lambda prompts, texts: moderate(config, texts), lambda s: 1.0 - s
    )


@reward("reward_model", config=RewardModelConfig)
def reward_model_reward(config: RewardModelConfig):
    """sigmoid of a hub sequence-classification reward model on (prompt, completion)."""
    return _component("reward_model", RewardModelScorer(config), lambda s: s)
