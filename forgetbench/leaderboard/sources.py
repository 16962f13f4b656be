"""Where a board's rows come from: output folders of local runs and submission bundles; and
how they split into tracks.

A track is a preset plus a protocol hash (``forgetbench.results.protocol``: base model, warm-up,
training task, evals with a hash of their prompts, judges, decoding); only rows of one track are
ranked together. Rows from an output folder are "verified" (computed here, from stages on disk);
rows from a bundle are "self-reported" (their metrics re-computed from the bundle's verdicts and
the refusal judge re-run on its generations, but the generations not re-made).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from forgetbench.errors import UsageError


@dataclass
class Sources:
    frame: pd.DataFrame
    verdict_files: dict = field(default_factory=dict)  # stage key -> callable() -> rows
    configs: dict = field(default_factory=dict)  # (origin, config_file) -> resolved
    notes: list = field(default_factory=list)

    def verdicts_for(self, row: dict):
        load = self.verdict_files.get(row.get("judge_stage"))
        if load is None:
            return None
        return {str(v["id"]): v["value"] for v in load()}

    def config_of(self, row: dict):
        return self.configs.get((row.get("origin"), row.get("config_file")))


def _stage_index(root: Path, kind: str) -> dict:
    folder = root / "stages" / kind
    if not folder.is_dir():
        return {}
    return {
        path.name.rsplit("-", 1)[-1]: path
        for path in folder.iterdir()
        if not path.name.startswith(".") and path.is_dir()
    }


def _lines(path: Path):
    return lambda: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def add_results_dir(sources: Sources, root: Path) -> None:
    from forgetbench.results import current, load_results
    from forgetbench.stages import KL_FILE, VERDICTS_FILE

    frame, note = current(load_results(root))
    if note:
        sources.notes.append(f"{root}: {note}")
    origin = str(root)
    frame = frame.assign(origin=origin, badge="verified")
    for kind, name in (("judge", VERDICTS_FILE), ("kl", KL_FILE)):
        for key, folder in _stage_index(root, kind).items():
            if (folder / name).is_file():
                sources.verdict_files[key] = _lines(folder / name)
    for config_file in frame["config_file"].dropna().unique() if "config_file" in frame else []:
        path = root / "results" / config_file
        if path.is_file():
            sources.configs[(origin, config_file)] = json.loads(path.read_text())
    sources.frame = pd.concat([sources.frame, frame], ignore_index=True)


def add_bundle(sources: Sources, path: Path) -> None:
    from forgetbench.leaderboard.bundle import read_bundle

    bundle = read_bundle(path)
    origin = str(path)
    frame = bundle.rows().assign(origin=origin, badge="self-reported")
    for name in bundle.files:
        if name.startswith("verdicts/"):
            key = name.split("/", 1)[1].split(".", 1)[0]
            sources.verdict_files[key] = lambda data=bundle.files[name]: [
                json.loads(line)
                for line in gzip.decompress(data).decode().splitlines()
                if line.strip()
            ]
        elif name.startswith("configs/"):
            sources.configs[(origin, name.split("/", 1)[1])] = bundle.json(name)
    sources.frame = pd.concat([sources.frame, frame], ignore_index=True)


def gather(results_dirs: list[Path], submissions: Path | None) -> Sources:
    sources = Sources(pd.DataFrame())
    for root in results_dirs:
        add_results_dir(sources, Path(root).resolve())
    if submissions is not None:
        if not submissions.is_dir():
            raise UsageError(f"--submissions {submissions}: no such folder")
        for path in sorted(submissions.glob("*.tar.gz")):
            add_bundle(sources, path)
    if sources.frame.empty:
        raise UsageError(
            "no results to build a board from: pass --results DIR (a run's output "
            "folder) or --submissions DIR (accepted bundles)"
        )
    duplicated = sources.frame.duplicated(
        ["protocol_hash", "method", "attack", "seed", "phase", "step", "eval", "judge", "metric"]
    )
    if duplicated.any():
        first = sources.frame[duplicated].iloc[0]
        raise UsageError(
            f"method {first['method']!r} seed {first['seed']} attack "
            f"{first['attack']!r} comes from two sources; give each method label "
            "once (rename one with a matrix variant)"
        )
    return sources


def track_id(preset: str, protocol_hash: str) -> str:
    return f"{preset}-{str(protocol_hash)[:8]}"


def tracks(frame: pd.DataFrame) -> dict:
    """track id -> its rows."""
    for column, missing in (("preset", "custom"), ("protocol_hash", "unknown")):
        if column not in frame.columns:
            frame = frame.assign(**{column: missing})
    frame = frame.assign(
        preset=frame["preset"].fillna("custom"),
        protocol_hash=frame["protocol_hash"].fillna("unknown"),
    )
    return {
        track_id(preset, proto): rows.reset_index(drop=True)
        for (preset, proto), rows in frame.groupby(["preset", "protocol_hash"], sort=True)
    }
