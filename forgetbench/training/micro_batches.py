"""An SFT step's rows trained in length-balanced micro-batches: less padding, the same step.

A micro-batch is padded to its longest row. On the tiny preset a random batch of 8 pads to 1.55x
its real tokens for the Alpaca attack (rows of 30-256 tokens) and 1.24x for the warm-up (README,
"Where a cell's time goes"). transformers' ``BatchRebalanceSampler`` (``train_sampling_strategy:
batch_rebalance``) takes each optimiser step's rows from a seeded permutation, sorts them by length
and cuts them into micro-batches of near-equal padded cost, accumulated into one step. The loss is
TRL's sum over the step's completion tokens divided by their count (``num_items_in_batch``), so
the step trains on the same rows with the same loss as one batch: only float summation order
differs (tests/test_training_settings.py), which is why the setting is speed-only
(config.SPEED_ONLY_SETTINGS).
"""

from __future__ import annotations


def balanced_args(args: dict, micro_batches: int, rows: int, processes: int = 1) -> dict:
    """SFTConfig fields that train each optimiser step of ``args`` (``trainer_args``' per-rank
    batch and accumulation) in ``micro_batches`` length-balanced micro-batches per rank; ``rows``:
    the dataset's rows. {} (rows as drawn) at 1, and where the last step has fewer rows than there
    would be micro-batches: the sampler would fill them by repeating rows, which a batch as drawn
    does not train on."""
    if micro_batches == 1:
        return {}
    batch = args["per_device_train_batch_size"]
    accumulation = args["gradient_accumulation_steps"] * micro_batches
    last_step = rows % (batch * args["gradient_accumulation_steps"] * processes)
    if 0 < last_step < accumulation * processes:
        return {}
    return {
        "per_device_train_batch_size": batch // micro_batches,
        "gradient_accumulation_steps": accumulation,
        "train_sampling_strategy": "batch_rebalance",
    }


def steps_are_row_sums(trainer_cls) -> bool:
    """Whether ``trainer_cls`` (an SFTTrainer) trains a step as TRL does, a loss summed over the
    step's tokens, whatever its micro-batches: not where a subclass has its own step or loss."""
    from trl import SFTTrainer

    return all(
        getattr(trainer_cls, name) is getattr(SFTTrainer, name)
        for name in ("training_step", "compute_loss")
    )


def seed_balanced_sampler(trainer) -> None:
    """Give ``trainer``'s BatchRebalanceSampler the run's data seed. transformers 5.19 builds it
    with its default seed (42) whatever ``args.seed`` is, so every seed of a matrix would draw the
    same rows. With ``data_seed`` its per-epoch ``randperm(seed + epoch)`` is the permutation
    accelerate's SeedableRandomSampler draws for the default random sampler: each step gets the
    rows it gets without balancing (tested)."""
    if trainer.args.train_sampling_strategy != "batch_rebalance":
        return
    build = trainer._get_train_sampler

    def seeded(*args, **kwargs):
        sampler = build(*args, **kwargs)
        sampler.seed = trainer.args.data_seed  # trainer_args sets it to the run's seed
        return sampler

    trainer._get_train_sampler = seeded
