"""Vaccine: perturbation-aware safety alignment (Huang et al. 2024, arXiv 2402.01109).

    forgetbench run --method baselines/vaccine --attack alpaca --set method.rho=2

Per micro-batch of the safety SFT data (``baselines/safety_sft``'s pairs): a first forward and
backward records g_l, the gradient of the loss with respect to each attention module's output
(its hidden states); eps_l = rho * g_l / ||g|| with ||g|| the 2-norm over all layers' g_l
together; a second forward adds eps_l to each attention output and its backward gives the
gradient the optimiser steps with (the first pass's parameter gradient is discarded). Two
forward/backward passes per micro-batch.

Source: ``git-disl/Vaccine: trainer.py`` (``BaseTrainer``: ``pre_first_step`` hooks
``LlamaAttention`` / ``OPTAttention`` outputs, ``after_first_step`` scales by
rho / (||g|| + 1e-7), ``pre_second_step`` adds the perturbation in a forward hook);
``script/alignment/Vaccine.sh`` and the README run rho = 2 ("perturbation intensity=2"). Here the
attention modules are found by class name (``*Attention``: Llama, Qwen2, Mistral, ...), not a
hard-coded list. Official optimiser settings (lr 1e-3, 50 epochs, batch 5, LoRA r=8 alpha=4) are
for 7B LoRA runs; forgetbench's SFT defaults and the preset's shared fields apply here.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from forgetbench import Field, ForgetbenchError, method, run_sft

from baselines._passes import clear_gradients, own_gradients
from baselines.safety_sft import SafetySFTConfig, training_pairs


class VaccineConfig(SafetySFTConfig):
    rho: float = Field(
        2.0,
        gt=0,
        description="Perturbation intensity: the 2-norm of all "
        "layers' hidden-state perturbations together (official script: 2).",
    )


def attention_modules(model) -> list:
    """The outermost modules whose class name ends in ``Attention`` (one per decoder layer)."""
    found = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("Attention") and not any(
            name.startswith(f"{outer}.") for outer, _ in found
        ):
            found.append((name, module))
    if not found:
        raise ForgetbenchError(
            f"vaccine: {type(model).__name__} has no module whose class name "
            "ends in 'Attention' to perturb; use a transformer decoder model"
        )
    return [module for _, module in found]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def vaccine_step(params: list, layers: list, run_pass, rho: float):
    """Two passes of ``run_pass()`` (forward + backward on one batch): the first records each
    layer's output gradient g_l, the second runs with eps_l = rho * g_l / (||g|| + 1e-7) added to
    the layers' outputs. Leaves in ``params``' ``.grad`` the second pass's gradient (plus what
    earlier micro-batches accumulated) and returns the second pass's result."""
    import torch

    grads: dict = {}

    def record(module, inputs, output):
        _first(output).register_hook(lambda grad: grads.__setitem__(module, grad.detach().clone()))

    def perturb(module, inputs, output):
        return _replace_first(output, _first(output) + eps[module].to(_first(output).dtype))

    with own_gradients(params):
        with hooked(layers, record):
            run_pass()
        if len(grads) != len(layers):
            raise ForgetbenchError(
                f"vaccine: {len(layers) - len(grads)} attention module(s) got "
                "no gradient in the first pass; they must be on the loss path"
            )
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(grads[layer]) for layer in layers])
        )
        eps = {layer: grads[layer] * (rho / (norm + 1e-7)) for layer in layers}
        clear_gradients(params)  # the optimiser steps with the perturbed pass's gradient only
        with hooked(layers, perturb):
            return run_pass()


@contextmanager
def hooked(layers: list, forward_hook):
    hooks = [layer.register_forward_hook(forward_hook) for layer in layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@lru_cache(maxsize=None)
def vaccine_trainer_class():
    """TRL's SFTTrainer whose ``training_step`` is Vaccine's two passes (built on first use so
    that importing this module does not import TRL)."""
    from trl import SFTTrainer

    class VaccineSFTTrainer(SFTTrainer):
        def __init__(self, *args, rho: float, **kwargs):
            self.rho = rho
            super().__init__(*args, **kwargs)

        def training_step(self, model, inputs, num_items_in_batch=None):
            params = [p for p in model.parameters() if p.requires_grad]
            return vaccine_step(
                params,
                attention_modules(model),
                lambda: super(VaccineSFTTrainer, self).training_step(
                    model, inputs, num_items_in_batch
                ),
                self.rho,
            )

    return VaccineSFTTrainer


@method("vaccine", config=VaccineConfig, passes=2)
def vaccine(config: VaccineConfig, model_path: str, out_dir: Path, seed: int) -> Path:
    """Vaccine: safety SFT with worst-case attention-output perturbations (2 passes)."""
    return run_sft(
        model_path,
        training_pairs(config),
        config,
        out_dir,
        seed,
        trainer_cls=vaccine_trainer_class(),
        trainer_kwargs={"rho": config.rho},
    )
