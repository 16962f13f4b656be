"""Score stored generations with a judge; a new judge re-judges, never re-generates.

Judges that take the eval rows (see :mod:`forgetbench.judges`) get, for each generation, its row
of the eval dataset (after the eval's ``fields`` mapping), found by ``id`` through the eval config
stored in the generation stage's ``request.json``.

Missing verdicts that a later attempt may fill (an endpoint still down or answering garbage after
its retries: ``Verdict.retryable``) do not silently finish the stage: the scored verdicts are kept
in ``stages/judge/.partial/`` and the stage fails with one line saying so; re-running the same
command re-uses them and asks the judge only for the missing rows. A judge whose config sets
``allow_missing: true`` finishes instead, the rows counted in ``n_missing`` with their reasons.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forgetbench.atomic import write_atomic
from forgetbench.config import stable_hash
from forgetbench.errors import ForgetbenchError
from forgetbench.stages import GENERATIONS_FILE, PROVENANCE_FILE, VERDICTS_FILE
from forgetbench.stages.generate import eval_task
from forgetbench.stages.worker import REQUEST_FILE  # the request every stage folder keeps


class JudgeMissingError(ForgetbenchError):
    pass


def _fingerprint(row: dict) -> str:
    text = json.dumps([row.get("prompt"), row.get("response")], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def eval_rows(generations_folder: Path, ids: list[str]) -> list[dict]:
    """The eval dataset row of each id, from the eval config the generation stage ran with."""
    from forgetbench.tasks import load_rows

    request = json.loads((generations_folder / REQUEST_FILE).read_text())
    spec = request["config"]["eval"]
    task = eval_task(spec)
    by_id = {str(row["id"]): row for row in load_rows(task.dataset) if "id" in row}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ForgetbenchError(
            f"eval {spec['name']!r} has no rows with ids {missing[:3]} that "
            f"its generations have; the eval's data changed since generation "
            "(bump its version to regenerate)"
        )
    return [dict(by_id[i]) for i in ids]


# Judge settings that change how hard an endpoint is tried, never a verdict's value: a re-run may
# change them (more retries, allow_missing) and still re-use the verdicts already scored.
TRANSPORT_FIELDS = frozenset(
    {"timeout_s", "max_retries", "backoff_s", "max_backoff_s", "concurrency", "allow_missing"}
)


def partial_file(config: dict, generations_folder: Path) -> Path:
    """Where scored verdicts wait for a re-run: beside the judge stages, keyed by the judge, its
    value-relevant settings and the generations (the same key on every re-run of the command)."""
    settings = {
        k: v for k, v in config["judge"].get("config", {}).items() if k not in TRANSPORT_FIELDS
    }
    key = stable_hash(
        {
            "judge": config["judge"]["name"],
            "config": settings,
            "generations": generations_folder.name,
        }
    )
    return generations_folder.parent.parent / "judge" / ".partial" / f"{key}.jsonl"


def _load_partial(path: Path, rows: list[dict]) -> dict[int, dict]:
    if not path.is_file():
        return {}
    saved = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            saved[(entry["id"], entry["fingerprint"])] = entry
    found = {}
    for index, row in enumerate(rows):
        entry = saved.get((str(row["id"]), _fingerprint(row)))
        if entry is not None and entry["value"] is not None:
            found[index] = entry
    return found


def run(config: dict, inputs: dict[str, Path], out: Path) -> None:
    from forgetbench.judges import Verdict, build_judge, score_verdicts

    folder = Path(inputs["generations"])
    rows = [json.loads(line) for line in open(folder / GENERATIONS_FILE)]
    judge = build_judge(config["judge"]["name"], config["judge"]["config"])
    partial = partial_file(config, folder)
    verdicts: list = [None] * len(rows)
    for index, entry in _load_partial(partial, rows).items():
        verdicts[index] = Verdict(entry["value"], entry["reason"])
    todo = [i for i, v in enumerate(verdicts) if v is None]
    if todo:
        new = score_verdicts(
            judge.name,
            judge.score,
            [rows[i]["prompt"] for i in todo],
            [rows[i]["response"] for i in todo],
            rows=lambda: eval_rows(folder, [str(rows[i]["id"]) for i in todo]),
        )
        for index, verdict in zip(todo, new):
            verdicts[index] = verdict
    retry = [i for i, v in enumerate(verdicts) if v.value is None and v.retryable]
    if retry and not getattr(judge.config, "allow_missing", False):
        scored = [i for i, v in enumerate(verdicts) if v.value is not None]
        write_atomic(
            partial,
            "".join(
                json.dumps(
                    {
                        "id": str(rows[i]["id"]),
                        "fingerprint": _fingerprint(rows[i]),
                        "value": verdicts[i].value,
                        "reason": verdicts[i].reason,
                    }
                )
                + "\n"
                for i in scored
            ),
        )
        raise JudgeMissingError(
            f"judge {judge.name!r}: {len(retry)} of {len(rows)} rows still missing after every "
            f"retry ({verdicts[retry[0]].reason}); the {len(scored)} scored rows are kept, so "
            "re-running the same command asks only for the missing ones (or set "
            f"judges.{judge.name}.allow_missing=true to finish with them counted as missing)"
        )
    provenance = getattr(judge.score, "provenance", None)
    if provenance:
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, sort_keys=True) + "\n")
    with open(out / VERDICTS_FILE, "w") as handle:
        for row, verdict in zip(rows, verdicts):
            handle.write(
                json.dumps({"id": row["id"], "value": verdict.value, "reason": verdict.reason})
                + "\n"
            )
    partial.unlink(missing_ok=True)
