"""Run by tests/test_multiprocess.py on each rank of ``accelerate launch`` (or on one process):
one real GRPO-family step on the tiny model, recording what TRL gathered (rewards, prompt
indices) and the advantages its loss consumed on this rank, into ``OUT/rank-<k>.json``.

    python -m rank_advantages OUT METHOD MODEL SETTINGS_JSON [REWARDS_JSON]

With REWARDS_JSON (one gathered reward list per generation batch) the rewards TRL computes are
replaced by those: one process then sees the same rollouts' rewards as the ranks did. TRL's
shuffle of the generation batch is turned off so the loss rows keep the gathered order (as in
tests/test_advantage_wiring.py; the shuffle is not under test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: str, method: str, model: str, settings: str, rewards_file: str = "") -> None:
    import torch
    import trl.trainer.grpo_trainer as grpo_module
    from trl import GRPOTrainer

    from forgetbench import registry
    from forgetbench.training.distributed import rank

    replay = json.loads(Path(rewards_file).read_text()) if rewards_file else None
    record = {"world_size": None, "rewards": [], "loss": []}
    calculate, compute_loss = GRPOTrainer._calculate_rewards, GRPOTrainer._compute_loss

    def rewards(trainer, inputs, *args):
        got = calculate(trainer, inputs, *args)
        if replay is not None:
            got = torch.tensor(replay[len(record["rewards"])], dtype=got.dtype).view_as(got)
        record["rewards"].append(got.sum(dim=1).tolist())
        return got

    def loss(trainer, model, inputs):
        record["world_size"] = trainer.accelerator.num_processes
        record["loss"].append(
            {
                "advantages": inputs["advantages"].tolist(),
                "prompt_index": list(trainer._gathered_prompt_index),
            }
        )
        return compute_loss(trainer, model, inputs)

    GRPOTrainer._calculate_rewards = rewards
    GRPOTrainer._compute_loss = loss
    grpo_module.shuffle_sequence_dict = lambda batch: batch
    plugin = registry.get("method", method)
    plugin.target(plugin.build_config(json.loads(settings)), model, Path(out) / "train", 0)
    Path(out, f"rank-{rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:])
