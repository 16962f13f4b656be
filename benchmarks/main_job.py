"""How far a cell's wall time is from what its arithmetic needs on this machine.

    python benchmarks/main_job.py [--method frpo] [--attack alpaca] [--preset tiny]
        [--set KEY=VALUE ...] [--output-dir DIR] [--peak-repeats 5]
    python benchmarks/main_job.py --analyse DIR       # a finished run's folder, no new run

1. The peak: dense matmul (2048 x 2048) on this process's torch threads, best of several before
   and after the job (a drift of over 10% is reported: the machine's speed changed), in
   fp32 and, where the CPU has bfloat16 in hardware (``devices.native_bf16``), in bf16: each
   stage is held to the peak of the arithmetic it ran (training's resolved ``precision`` from
   its ``training.json``, generation's ``dtype`` from its rows; KL runs fp32).
2. The job: ``forgetbench run`` in a fresh process, timed whole (a clean output folder unless
   ``--output-dir`` points at a finished one: then the stages are re-used and only the analysis
   is new).
3. Per stage, from its own files: wall time (``stage.json``), where it went (``timings.json``,
   written by the stage worker: start-up until the worker runs, imports, model loads, saves; the
   rest is the stage's work), and the stage's arithmetic, counted from the tokens it processed:
     - SFT (warm-up, SFT attacks): TRL's ``num_tokens`` (non-padding tokens trained on) x a forward
       and a backward (3 forwards);
     - GRPO family (train, RL attack): every rollout token generated (1 forward: prefill of the
       prompt and decoding of the completion), trained on (3 forwards) and, when beta > 0,
       scored by the reference (1 forward); tokens from TRL's ``num_tokens``;
     - generate: prompt and response tokens of every generation (1 forward);
     - kl: prompt and response tokens through P0 (1 forward) and through the policy for the
       rollouts whose log-probs generation did not record (``policy_logprobs`` in ``kl.jsonl``:
       "computed", or absent in a stage written before it; 1 forward); 0 when P0 is
       measured against itself, which is 0 by definition and not computed);
     - judge: a judge that loads no model (string matching, code execution) does none (0);
       a model judge's is not counted (-).
   A forward costs 2 x (matmul parameters) per token plus attention (4 x layers x width x the
   mean attended length), from the model's ``config.json``. Padding, recomputation under gradient
   checkpointing and optimiser updates are not useful arithmetic and are not counted.
4. The table: per stage its wall, overheads, GFLOP, achieved GFLOP/s and share of the peak; the
   totals, the bound (all GFLOP / peak) and the ratio wall / bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

TIMINGS = "timings.json"


# ------------------------------------------------------------------------------ the machine


def peak_gflops(repeats: int, size: int = 2048, dtype: str = "fp32") -> list[float]:
    """GFLOP/s of a dense ``size`` x ``size`` matmul in ``dtype`` (fp32 or bf16), one figure per
    repeat (after a warm-up)."""
    import torch

    from forgetbench.models import set_threads

    set_threads()
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)
    torch.mm(a, b)
    figures = []
    for _ in range(repeats):
        begin = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        figures.append(4 * 2 * size**3 / (time.perf_counter() - begin) / 1e9)
    return figures


# ------------------------------------------------------------------------------ arithmetic


class Model:
    """FLOPs of one forward token of a Llama-style decoder, from its ``config.json``."""

    def __init__(self, config: dict):
        h, layers = config["hidden_size"], config["num_hidden_layers"]
        heads = config["num_attention_heads"]
        kv = config.get("num_key_value_heads", heads) * (h // heads)
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * config["intermediate_size"]
        self.matmul_params = layers * per_layer + config["vocab_size"] * h  # + the lm head
        self.layers, self.width = layers, h

    def forward(self, tokens: float, mean_context: float) -> float:
        return tokens * (2 * self.matmul_params + 4 * self.layers * self.width * mean_context)


def _final_tokens(history: list[dict]) -> float:
    counts = [entry["num_tokens"] for entry in history if "num_tokens" in entry]
    return float(max(counts)) if counts else 0.0


def _steps(history: list[dict]) -> int:
    return max((entry.get("step", 0) for entry in history), default=0)


def stage_gflop(kind: str, folder: Path, request: dict, model: Model) -> float | None:
    """The stage's useful arithmetic in GFLOP (None where it is not counted)."""
    config = request["config"]
    if kind in ("warmup", "train", "attack"):
        history = json.loads((folder / "log_history.json").read_text())
        tokens = _final_tokens(history)
        if not tokens:
            return None
        settings = config.get("warmup") or config.get("method") or config.get("attack")
        settings = settings.get("config", settings)
        # An attack's config always carries `rl` ({} for SFT), so the trainer says which it is;
        # a method is GRPO-family where it samples (an SFT baseline has no num_generations).
        rl = settings.get("trainer") == "grpo" or "num_generations" in settings
        if rl:
            rl_settings = settings.get("rl", settings)
            completions = (
                _steps(history)
                * rl_settings.get("prompts_per_step", 1)
                * rl_settings.get("num_generations", 1)
            )
            context = tokens / max(completions, 1) / 2
            forwards = 1 + 3 + (1 if (rl_settings.get("beta") or 0) > 0 else 0)
        else:
            sequences = (
                _steps(history) * settings.get("batch_size", 1) * settings.get("grad_accum", 1)
            )
            context = tokens / max(sequences, 1) / 2
            forwards = 3
        return forwards * model.forward(tokens, context) / 1e9
    if kind in ("generate", "kl"):
        generations = (
            folder / "generations.jsonl"
            if kind == "generate"
            else Path(request["inputs"]["generations"]) / "generations.jsonl"
        )
        records = [json.loads(line) for line in open(generations)]
        per_record = [r.get("prompt_tokens", 0) + r.get("num_tokens", 0) for r in records]
        tokens = sum(per_record)
        context = tokens / max(len(records), 1) / 2
        if kind == "kl":
            rows = [json.loads(line) for line in open(folder / "kl.jsonl")]
            same = (
                Path(request["inputs"]["reference"]).name == Path(request["inputs"]["policy"]).name
            )
            if same and all(row["value"] == 0.0 for row in rows):
                return 0.0
            # P0 runs over every rollout, the policy over those it had no recorded log-probs for
            policy_tokens = sum(
                count
                for count, row in zip(per_record, rows)
                if row.get("policy_logprobs", "computed") == "computed"
            )
            return (model.forward(tokens, context) + model.forward(policy_tokens, context)) / 1e9
        return model.forward(tokens, context) / 1e9
    if kind == "judge":  # a judge that loaded no model (string matching, code execution) does none
        timings = folder / TIMINGS
        loaded = timings.is_file() and json.loads(timings.read_text()).get("load", 0) > 0
        return None if loaded else 0.0
    return None


# ------------------------------------------------------------------------------ the table


def stage_precision(kind: str, folder: Path) -> str:
    """``bf16`` or ``fp32``: the arithmetic the stage's matmuls ran in, as the results table
    reads it (a stage written before it was recorded ran fp32)."""
    from forgetbench.results.rows import backend_used
    from forgetbench.training.common import trained_precision

    if kind in ("warmup", "train", "attack"):
        return trained_precision(folder) or "fp32"
    if kind == "generate":
        return "bf16" if backend_used(folder)["generation_dtype"] == "bfloat16" else "fp32"
    return "fp32"


def peak_of(peaks: dict[str, float], precision: str) -> float:
    """The peak a stage is held to: its precision's, or fp32's where that was not measured."""
    return peaks.get(precision, peaks["fp32"])


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def analyse(root: Path, peaks: dict[str, float]) -> tuple[list[dict], Model]:
    """Per stage: wall, overheads, GFLOP and the share of the peak of its own precision
    (``peaks``: GFLOP/s by ``fp32`` / ``bf16``)."""
    from forgetbench.models import resolve_model

    stages = [
        (
            json.loads((f / "stage.json").read_text()),
            json.loads((f / "request.json").read_text()),
            f,
        )
        for f in (root / "stages").glob("*/*")
        if (f / "stage.json").is_file()
    ]
    if not stages:
        sys.exit(f"main_job: no finished stage under {root}/stages; pass the folder of a run")
    stages.sort(key=lambda stage: stage[0]["started"])
    base = next(r["config"]["model"] for _, r, _ in stages if "model" in r["config"])
    model = Model(json.loads((Path(resolve_model(base)) / "config.json").read_text()))
    rows = []
    for meta, request, folder in stages:
        timings = json.loads((folder / TIMINGS).read_text()) if (folder / TIMINGS).is_file() else {}
        wall = meta["seconds"]
        precision = stage_precision(meta["kind"], folder)
        row = {"stage": meta["label"], "kind": meta["kind"], "wall": wall, "precision": precision}
        if timings:
            start = max(timings["entered"] - _epoch(meta["started"]), 0.0)
            load, save = timings.get("load", 0.0), timings.get("save", 0.0)
            run = timings.get("run", 0.0)
            row.update(
                start=start,
                imports=timings.get("import", 0.0),
                load=load,
                save=save,
                after=max(wall - start - timings.get("import", 0.0) - run, 0.0),
                work=max(run - load - save, 0.0),
            )
        gflop = stage_gflop(meta["kind"], folder, request, model)
        row["gflop"] = gflop
        if gflop is not None and wall > 0:
            row["gflops"] = gflop / wall
            row["peak_share"] = gflop / wall / peak_of(peaks, precision)
        rows.append(row)
    return rows, model


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], peaks: dict[str, float], job_wall: float | None) -> str:
    lines = [
        "| stage | precision | wall s | start s | import s | load s | save s | publish s | "
        "work s | GFLOP | GFLOP/s | % peak |",
        "|" + "---|" * 12,
    ]
    for row in rows:
        lines.append(
            f"| {row['stage']} | {row.get('precision', 'fp32')} | {_f(row['wall'])} | "
            f"{_f(row.get('start'))} | "
            f"{_f(row.get('imports'))} | {_f(row.get('load'))} | {_f(row.get('save'))} | "
            f"{_f(row.get('after'))} | {_f(row.get('work'))} | {_f(row['gflop'], 0)} | "
            f"{_f(row.get('gflops'))} | "
            f"{_f(None if 'peak_share' not in row else 100 * row['peak_share'], 0)} |"
        )
    wall = sum(row["wall"] for row in rows)
    gflop = sum(row["gflop"] or 0 for row in rows)
    overhead = sum(
        row.get(k) or 0 for row in rows for k in ("start", "imports", "load", "save", "after")
    )
    by_precision: dict[str, float] = {}
    for row in rows:
        precision = row.get("precision", "fp32")
        by_precision[precision] = by_precision.get(precision, 0.0) + (row["gflop"] or 0)
    bound = sum(g / peak_of(peaks, p) for p, g in by_precision.items())
    shares = ", ".join(
        f"{g / 1000:.1f} in {p} at {peak_of(peaks, p):.0f} GFLOP/s"
        for p, g in sorted(by_precision.items())
    )
    lines += [
        "",
        f"stages: {len(rows)}; sum of stage walls {wall:.0f} s, of which start-up, "
        f"imports, loads, saves and publishing {overhead:.0f} s",
        f"useful arithmetic {gflop / 1000:.1f} TFLOP ({shares}); at those peaks the bound is "
        f"{bound:.0f} s ({bound / 60:.1f} min)",
    ]
    if job_wall is not None:
        lines.append(
            f"the job's wall time {job_wall:.0f} s ({job_wall / 60:.1f} min): "
            f"{job_wall / bound:.2f}x the bound; outside any stage (planning, the "
            f"results table) {job_wall - wall:.0f} s"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="frpo")
    parser.add_argument("--attack", default="alpaca")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="the run's folder (default: a new temporary one)",
    )
    parser.add_argument(
        "--analyse",
        type=Path,
        default=None,
        help="analyse this finished run's folder instead of running the job",
    )
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument(
        "--peak",
        type=float,
        default=None,
        help="fp32 GFLOP/s measured earlier on a "
        "quiet machine (skips the measurement: with --analyse on a busy one)",
    )
    parser.add_argument("--peak-bf16", type=float, default=None, help="the same for bf16")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    from forgetbench.devices import native_bf16

    given = {"fp32": args.peak, "bf16": args.peak_bf16}
    dtypes = ["fp32", "bf16"] if native_bf16() else ["fp32"]
    figures = {
        dtype: [given[dtype]] if given[dtype] else peak_gflops(args.peak_repeats, dtype=dtype)
        for dtype in dtypes
    }
    peaks = {dtype: max(values) for dtype, values in figures.items()}
    for dtype, values in figures.items():
        print(
            f"peak {dtype} matmul on {os.environ.get('FORGETBENCH_THREADS', 'all')} threads: "
            f"{peaks[dtype]:.0f} GFLOP/s (best of {len(values)}; median "
            f"{statistics.median(values):.0f}, min {min(values):.0f}"
            f"{', given' if given[dtype] else ''})",
            flush=True,
        )
    job_wall = None
    root = args.analyse
    if root is None:
        root = args.output_dir or Path(tempfile.mkdtemp(prefix="main-job-"))
        command = [
            sys.executable,
            "-m",
            "forgetbench",
            "run",
            "--method",
            args.method,
            "--attack",
            args.attack,
            "--preset",
            args.preset,
            "--output-dir",
            str(root),
        ]
        for override in args.overrides:
            command += ["--set", override]
        print("running:", " ".join(command), flush=True)
        begin = time.perf_counter()
        subprocess.run(command, check=True)
        job_wall = time.perf_counter() - begin
        # A shared machine's speed drifts: measured again after the job, the bound is taken at the
        # higher of the two (never flattering the ratio), and a drift of over 10% is said aloud.
        # Session 20: 124 GFLOP/s before a job, 182 after it.
        for dtype in dtypes:
            if given[dtype]:
                continue
            after = peak_gflops(args.peak_repeats, dtype=dtype)
            print(f"peak {dtype} after the job: {max(after):.0f} GFLOP/s (best of {len(after)})")
            if abs(max(after) - peaks[dtype]) > 0.1 * min(max(after), peaks[dtype]):
                print(
                    f"warning: the {dtype} peak moved {peaks[dtype]:.0f} -> {max(after):.0f} "
                    "GFLOP/s during the job: the machine's speed changed, so its time and ratio "
                    "compare with no other run's"
                )
            figures[dtype] += after
            peaks[dtype] = max(figures[dtype])
    rows, _ = analyse(root, peaks)
    print(markdown(rows, peaks, job_wall))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "peak_gflops": figures["fp32"],
                    "peak_gflops_bf16": figures.get("bf16"),
                    "job_wall": job_wall,
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
