"""What each base training of a run did, from its train stages' own logs.

    python benchmarks/training_logs.py --output-dir RUNS [--metrics cgpo/]

For every finished ``stages/train/*`` folder: the method, seed, logged steps, median seconds per
step, mean reward, the share of steps in which every group had one reward for all its
completions (zero advantages, TRL's ``frac_reward_zero_std`` = 1), and the mean over steps of
each logged metric whose name starts with one of ``--metrics`` (default ``cgpo/``: the share of
samples each judge rejected, ``cgpo/<task>/<judge>/rejected``, the pass rate and the skipped
prompts and steps). The logs are the stage's ``log_history.json``, written by every method's loop
(``forgetbench.training.common.write_log_history``); nothing is re-computed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from forgetbench.results.rows import median_step_seconds


def summarise(folder: Path, prefixes: tuple[str, ...]) -> dict:
    request = json.loads((folder / "request.json").read_text())
    history = [e for e in json.loads((folder / "log_history.json").read_text()) if "step" in e]
    steps = [e for e in history if "step_seconds" in e]

    def mean(key: str) -> float | None:
        values = [e[key] for e in steps if e.get(key) is not None]
        return statistics.fmean(values) if values else None

    zero = [e["frac_reward_zero_std"] for e in steps if "frac_reward_zero_std" in e]
    extra = sorted({k for e in steps for k in e if k.startswith(prefixes)})
    return {
        "method": request["config"]["method"]["name"],
        "seed": request["config"]["seed"],
        "steps": len(steps),
        "sec_per_step": median_step_seconds(folder),  # the results rows' train_step_seconds
        "reward": mean("reward"),
        "steps_all_groups_one_reward": (sum(z >= 1.0 for z in zero) / len(zero)) if zero else None,
        **{key: mean(key) for key in extra},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--metrics", default="cgpo/", help="comma-separated metric name prefixes")
    args = parser.parse_args()
    prefixes = tuple(p for p in args.metrics.split(",") if p)
    folders = sorted((args.output_dir / "stages" / "train").glob("*/log_history.json"))
    if not folders:
        raise SystemExit(f"no finished train stage under {args.output_dir}/stages/train")
    rows = sorted(
        (summarise(path.parent, prefixes) for path in folders),
        key=lambda r: (r["method"], r["seed"]),
    )
    for row in rows:
        head = f"{row.pop('method')} seed {row.pop('seed')}"
        print(head)
        for key, value in row.items():
            shown = (
                "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else value)
            )
            print(f"  {key:<44} {shown}")


if __name__ == "__main__":
    main()
