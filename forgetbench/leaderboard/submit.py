"""``forgetbench submit`` packs a method's runs; ``forgetbench leaderboard check`` re-checks a
bundle from its own raw material; ``forgetbench leaderboard add`` stores an accepted one and
rebuilds the board. A refused bundle gets one line naming the first problem (exit 2) and leaves
the leaderboard folder as it was."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

import yaml

from forgetbench.atomic import atomic_path
from forgetbench.config import stable_hash
from forgetbench.errors import ForgetbenchError, UsageError
from forgetbench.leaderboard import rank
from forgetbench.leaderboard.bundle import (
    BUNDLE_VERSION,
    MANIFEST,
    Bundle,
    BundleError,
    gz,
    read_bundle,
    sha256,
    write_bundle,
)
from forgetbench.leaderboard.sources import track_id

STAGE_COLUMNS = ("train_stage", "policy_stage", "generate_stage", "judge_stage")
# Metric columns recomputed from the verdicts, and how closely they must agree (floats written
# through Parquet round-trip exactly; the slack only absorbs summation order).
RECOMPUTED = ("value", "ci_low", "ci_high", "n", "n_missing", "wilson_low", "wilson_high")
TOLERANCE = 1e-9


# ------------------------------------------------------------------ submit


def _stage_folders(root: Path) -> dict:
    found = {}
    for kind_folder in (root / "stages").iterdir():
        if kind_folder.is_dir() and not kind_folder.name.startswith("."):
            for folder in kind_folder.iterdir():
                if folder.is_dir() and not folder.name.startswith("."):
                    found[folder.name.rsplit("-", 1)[-1]] = folder
    return found


def method_template(rows, config: dict, stage_meta: list[dict]) -> dict:
    """method.yaml, filled from the run where the run knows; the rest is for the submitter."""
    first = rows.iloc[0]
    seconds = sum(m.get("seconds") or 0 for m in stage_meta)
    hosts = sorted({m.get("host") for m in stage_meta if m.get("host")})
    return {
        "name": str(first["method"]),
        "method_plugin": str(first.get("method_plugin")),
        "paper": "TODO: title and link (arXiv / venue)",
        "authors": "TODO",
        "code": {
            "url": "TODO: repository of the method's plugin",
            "commit": first.get("git_revision"),
            "forgetbench_version": first.get("version_forgetbench"),
        },
        "hyperparameters": config["method"]["config"],
        "selection": "TODO: the search space, the number of trials and the rule that chose "
        "these values (no tuning on the test prompts)",
        "seeds": sorted(int(s) for s in rows["seed"].unique()),
        "attacks": sorted(rows["attack"].unique()),
        "hardware": {"hosts": hosts, "stage_seconds_total": round(seconds, 1)},
        "license": "TODO",
    }


def pack(runs: Path, out: Path, method: str | None = None, method_yaml: Path | None = None) -> Path:
    """One method's current rows in ``runs`` with everything needed to re-check them; the
    method.yaml is ``method_yaml`` when given (filled in), else a template filled from the run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from forgetbench.results import check_frame, current, load_results
    from forgetbench.stages import GENERATIONS_FILE, KL_FILE, VERDICTS_FILE

    runs = Path(runs).resolve()
    frame, _ = current(load_results(runs))
    methods = sorted(frame["method"].unique())
    if method is None and len(methods) > 1:
        raise UsageError(f"{runs} holds methods {', '.join(methods)}; pick one with --method")
    method = method or methods[0]
    if method not in methods:
        raise UsageError(f"--method {method!r}: not in {runs} (methods: {', '.join(methods)})")
    rows = frame[frame["method"] == method].reset_index(drop=True)
    folders = _stage_folders(runs)
    files, metas = {}, []
    buffer = pa.BufferOutputStream()  # Arrow's own buffer: see read_table on Python files
    pq.write_table(check_frame(rows, "bundle rows"), buffer)
    files["rows.parquet"] = buffer.getvalue().to_pybytes()
    configs = {}
    for name in rows["config_file"].dropna().unique():
        text = (runs / "results" / name).read_text()
        files[f"configs/{name}"] = text.encode()
        configs[name] = json.loads(text)
    keys = {k for column in STAGE_COLUMNS for k in rows[column].dropna().unique()}
    for key in sorted(keys):
        folder = folders.get(key)
        if folder is None:
            raise ForgetbenchError(
                f"stage {key} of the rows is not under {runs}/stages; "
                "re-run the matrix to recompute it"
            )
        files[f"stages/{key}.json"] = (folder / "stage.json").read_bytes()
        metas.append(json.loads(files[f"stages/{key}.json"]))
        for name, target in (
            (GENERATIONS_FILE, "generations"),
            (VERDICTS_FILE, "verdicts"),
            (KL_FILE, "verdicts"),
        ):
            if (folder / name).is_file():
                files[f"{target}/{key}.jsonl.gz"] = gz((folder / name).read_bytes())
    config = next(iter(configs.values()))
    files["method.yaml"] = yaml.safe_dump(
        method_template(rows, config, metas), sort_keys=False
    ).encode()
    if method_yaml is not None:
        text = Path(method_yaml).read_bytes()
        try:
            filled = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UsageError(f"--method-yaml {method_yaml}: not YAML ({error})") from None
        if not isinstance(filled, dict) or filled.get("name") != method:
            raise UsageError(f"--method-yaml {method_yaml}: needs `name: {method}`")
        files["method.yaml"] = text
    first = rows.iloc[0]
    manifest = {
        "bundle_version": BUNDLE_VERSION,
        "method": method,
        "preset": first.get("preset"),
        "protocol_hash": first.get("protocol_hash"),
        "track": track_id(first.get("preset"), first.get("protocol_hash")),
        "forgetbench_version": first.get("version_forgetbench"),
        "git_revision": first.get("git_revision"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return write_bundle(files, manifest, Path(out))


# ------------------------------------------------------------------ check


def _refuse(text: str):
    raise BundleError(text)


def _check_hashes(bundle: Bundle) -> dict:
    manifest = bundle.json(MANIFEST)
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        _refuse(
            f"bundle {bundle.path}: bundle version {manifest.get('bundle_version')!r}; this "
            f"forgetbench reads version {BUNDLE_VERSION}"
        )
    listed = manifest.get("files") or {}
    for name, digest in sorted(listed.items()):
        if name not in bundle.files:
            _refuse(f"bundle {bundle.path}: {name} is in the manifest but not in the bundle")
        if sha256(bundle.files[name]) != digest:
            _refuse(
                f"bundle {bundle.path}: {name} does not match its SHA-256 in {MANIFEST} "
                "(changed after packing?)"
            )
    extra = sorted(set(bundle.files) - set(listed) - {MANIFEST})
    if extra:
        _refuse(f"bundle {bundle.path}: {extra[0]} is not in {MANIFEST}")
    for required in ("rows.parquet", "method.yaml"):
        if required not in bundle.files:
            _refuse(f"bundle {bundle.path} has no {required}")
    return manifest


def _prompt_hash(bundle: Bundle, key: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    for row in bundle.jsonl(f"generations/{key}.jsonl.gz"):
        digest.update(json.dumps([str(row["id"]), row["prompt"]]).encode() + b"\n")
    return digest.hexdigest()


def _need(bundle: Bundle, name: str, row) -> None:
    if name not in bundle.files:
        _refuse(f"bundle {bundle.path}: {name} (behind {_describe(row)}) is missing")


def _describe(row) -> str:
    return (
        f"{row['method']} {row['attack']} seed {row['seed']} {row['phase']} step "
        f"{row['step']} {row['eval']} {row['metric']}"
    )


def check(path: Path, tracks: dict | None, min_seeds: int = rank.MIN_SEEDS) -> dict:
    """Re-check a bundle from its own raw material; returns its manifest, or raises BundleError
    naming the first problem."""
    from forgetbench.results import protocol

    bundle = read_bundle(path)
    manifest = _check_hashes(bundle)
    try:
        rows = bundle.rows()
    except ForgetbenchError as error:
        _refuse(f"bundle {path}: {error}")
    methods = sorted(rows["method"].unique())
    if methods != [manifest.get("method")]:
        _refuse(
            f"bundle {path}: rows hold method(s) {methods}, the manifest says "
            f"{manifest.get('method')!r}"
        )
    configs = {
        name.split("/", 1)[1]: bundle.json(name)
        for name in bundle.files
        if name.startswith("configs/")
    }
    # protocol: recomputed from the configs and the generations' prompts, then matched
    for config_file, cell in rows.groupby("config_file"):
        if config_file not in configs:
            _refuse(f"bundle {path}: configs/{config_file} is missing")
        resolved = configs[config_file]
        before = cell[(cell["phase"] == "before") & (cell["judge"] != "kl")]
        prompts = {}
        for row in before.drop_duplicates("eval").to_dict("records"):
            _need(bundle, f"generations/{row['generate_stage']}.jsonl.gz", row)
            prompts[row["eval"]] = _prompt_hash(bundle, row["generate_stage"])
        expected = stable_hash(protocol(resolved, prompts))
        if set(cell["protocol_hash"]) != {expected}:
            _refuse(
                f"bundle {path}: rows of {config_file} carry protocol "
                f"{sorted(set(cell['protocol_hash']))[0]} but its config and prompts give "
                f"{expected}"
            )
        if set(cell["attack_config_hash"]) != {stable_hash(resolved["attack"])}:
            _refuse(
                f"bundle {path}: rows of {config_file} carry another attack config hash "
                "than its config"
            )
    protocols = sorted(set(rows["protocol_hash"]))
    if len(protocols) != 1:
        _refuse(f"bundle {path}: rows of {len(protocols)} protocols; a bundle holds one track")
    track = track_id(rows["preset"].iloc[0], protocols[0])
    if tracks is not None:
        if track not in tracks:
            _refuse(
                f"bundle {path}: protocol {track} matches no track of the leaderboard "
                f"({', '.join(sorted(tracks)) or 'none'}); run the track's preset unchanged"
            )
        wanted = tracks[track]["attacks"]
        for attack, hashes in wanted.items():
            found = set(rows.loc[rows["attack"] == attack, "attack_config_hash"])
            if not found:
                _refuse(
                    f"bundle {path}: no rows for attack {attack!r}; the track needs "
                    f"{', '.join(sorted(wanted))}"
                )
            if hashes and not found <= set(hashes):
                _refuse(
                    f"bundle {path}: attack {attack!r} ran with another config than the track's"
                )
    seeds = sorted(rows["seed"].unique())
    if len(seeds) < min_seeds:
        _refuse(
            f"bundle {path}: {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); the "
            f"leaderboard needs at least {min_seeds}"
        )
    attacks = sorted(rows["attack"].unique())
    for seed in seeds:
        have = set(rows.loc[rows["seed"] == seed, "attack"])
        if have != set(attacks):
            _refuse(
                f"bundle {path}: seed {seed} lacks attack(s) "
                f"{', '.join(sorted(set(attacks) - have))}"
            )
    _check_rows_complete(path, rows, configs)
    _recompute(bundle, rows, configs)
    return {**manifest, "track": track, "seeds": [int(s) for s in seeds], "attacks": attacks}


def _expected_rows(resolved: dict) -> set:
    attack = resolved["attack"]
    final = attack.get("total_steps")
    points = [
        ("before", 0),
        *(("during", s) for s in attack.get("checkpoints", [])),
        ("after", final),
    ]
    keys = set()
    for phase, step in points:
        for eval_name, eval_config in resolved["evals"].items():
            for metric in eval_config["metrics"]:
                keys.add((phase, step, eval_name, metric["judge"], metric["name"]))
            keys.add((phase, step, eval_name, "kl", "kl_from_p0"))
    return keys


def _check_rows_complete(path: Path, rows, configs: dict) -> None:
    for config_file, cell in rows.groupby("config_file"):
        resolved = configs[config_file]
        if resolved["attack"].get("total_steps") is None:
            continue  # a third-party attack: its final step is read from its log
        have = {
            (r["phase"], int(r["step"]), r["eval"], r["judge"], r["metric"])
            for r in cell.to_dict("records")
        }
        missing = sorted(_expected_rows(resolved) - have, key=str)
        if missing:
            phase, step, eval_name, judge, metric = missing[0]
            first = cell.iloc[0]
            _refuse(
                f"bundle {path}: row missing: {first['method']} {first['attack']} seed "
                f"{first['seed']} {phase} step {step} {eval_name} {judge} {metric} "
                f"({len(missing)} missing)"
            )


def _recompute(bundle: Bundle, rows, configs: dict) -> None:
    """Every metric from the bundle's verdicts; the refusal judge re-run on its generations."""
    from forgetbench import registry
    from forgetbench.results import metric_row

    rejudged = set()
    for row in rows.to_dict("records"):
        resolved = configs[row["config_file"]]
        name = f"verdicts/{row['judge_stage']}.jsonl.gz"
        _need(bundle, name, row)
        verdicts = bundle.jsonl(name)
        if row["judge"] == "kl":
            transform, binary = "mean", False
        else:
            spec = next(
                (
                    m
                    for m in resolved["evals"][row["eval"]]["metrics"]
                    if m["name"] == row["metric"] and m["judge"] == row["judge"]
                ),
                None,
            )
            if spec is None:
                _refuse(f"bundle {bundle.path}: {_describe(row)}: no such metric in its config")
            transform, binary = spec["transform"], spec["binary"]
        again = metric_row(verdicts, transform, binary)
        for column in RECOMPUTED:
            stored, computed = row.get(column), again[column]
            if not _same(stored, computed):
                _refuse(
                    f"bundle {bundle.path}: {_describe(row)}: {column} is {stored} but its "
                    f"verdicts give {computed}"
                )
        if row["judge"] == "refusal" and row["judge_stage"] not in rejudged:
            rejudged.add(row["judge_stage"])
            generations = f"generations/{row['generate_stage']}.jsonl.gz"
            _need(bundle, generations, row)
            texts = bundle.jsonl(generations)
            plugin = registry.get("judge", "refusal")
            score = plugin.target(plugin.build_config(resolved["judges"]["refusal"]))
            fresh = score([t["prompt"] for t in texts], [t["response"] for t in texts])
            stored = [v["value"] for v in verdicts]
            differ = sum(_value(f) != s for f, s in zip(fresh, stored)) + abs(
                len(fresh) - len(stored)
            )
            if differ:
                _refuse(
                    f"bundle {bundle.path}: {_describe(row)}: the refusal judge re-run on "
                    f"the stored responses disagrees with {differ} of {len(stored)} stored "
                    "verdicts"
                )


def _value(verdict):
    return verdict.value if hasattr(verdict, "value") else verdict[0]


def _same(a, b) -> bool:
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    return abs(float(a) - float(b)) <= TOLERANCE


# ------------------------------------------------------------------ add


def published_tracks(site: Path) -> dict:
    path = site / "tracks.json"
    if not path.is_file():
        raise UsageError(
            f"no published board at {site} (no tracks.json): build it first with "
            f"`forgetbench leaderboard build --out {site}`"
        )
    return json.loads(path.read_text())


def add(
    path: Path, leaderboard: Path, min_seeds: int | None = None, resamples: int = rank.RESAMPLES
) -> Path:
    """Check the bundle against the published board, store it under submissions/ and rebuild
    the site; on any failure the folder is left as it was."""
    from forgetbench.leaderboard.build import build

    site = leaderboard / "site"
    tracks = published_tracks(site)
    sources = json.loads((site / "sources.json").read_text())
    min_seeds = min_seeds if min_seeds is not None else sources.get("min_seeds", rank.MIN_SEEDS)
    info = check(path, tracks, min_seeds)
    if info["method"] in tracks[info["track"]]["methods"]:
        _refuse(
            f"bundle {path}: track {info['track']} already has a method named "
            f"{info['method']!r}; submit under another label"
        )
    submissions = leaderboard / "submissions"
    digest = sha256(Path(path).read_bytes())[:12]
    target = submissions / f"{info['method']}-{info['track']}-{digest}.tar.gz"
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    try:
        results = [Path(r) for r in sources.get("results") or [] if Path(r).is_dir()]
        build(
            results,
            submissions,
            site,
            resamples=sources.get("resamples", resamples),
            min_seeds=min_seeds,
        )
    except BaseException:
        target.unlink(missing_ok=True)  # the rebuild is atomic: the old site is still there
        if not any(submissions.iterdir()):
            submissions.rmdir()
        raise
    return target
