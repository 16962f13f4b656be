"""Submission bundles: one method's results packed for the leaderboard, and read back safely.

A bundle is a ``.tar.gz`` holding::

    MANIFEST.json                  bundle version, forgetbench version and revision, the method,
                                   its track, and the SHA-256 of every other file
    method.yaml                    who, what, which hyper-parameters and how they were chosen
    rows.parquet                   the method's current results rows (the results schema)
    configs/<name>.config.json     the resolved config of each cell
    stages/<key>.json              the stage.json of every stage a row comes from
    generations/<key>.jsonl.gz     the generations each row was scored on
    verdicts/<key>.jsonl.gz        per-prompt verdicts (judge stages) or KL values (kl stages)

Reading never extracts: members are read into memory after checking that each is a regular file
whose name stays inside the bundle.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from forgetbench.atomic import atomic_path
from forgetbench.errors import ForgetbenchError

BUNDLE_VERSION = 1
MANIFEST = "MANIFEST.json"
MAX_MEMBER_BYTES = 512 * 1024 * 1024


class BundleError(ForgetbenchError):
    """A bundle the leaderboard refuses (exit code 2, one line naming the first problem)."""

    exit_code = 2


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Bundle:
    path: Path
    files: dict  # name -> bytes

    def json(self, name: str):
        return json.loads(self.files[name])

    def jsonl(self, name: str) -> list[dict]:
        data = self.files[name]
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

    def rows(self):
        from forgetbench.results import read_table

        return read_table(self.files["rows.parquet"], "rows.parquet")


def _safe_name(name: str) -> str | None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith("\\") or not path.parts:
        return None
    return str(path)


def read_bundle(path: Path) -> Bundle:
    """Every member of the bundle in memory, refused in one line if it is not a tar archive or a
    member is not a plain file inside it."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"bundle {path}: no such file")
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BundleError(
            f"bundle {path} is not a tar archive ({error}); make one with `forgetbench submit`"
        ) from None
    files = {}
    with archive:
        try:
            members = archive.getmembers()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise BundleError(f"bundle {path} is a damaged tar archive ({error})") from None
        for member in members:
            if member.isdir():
                continue
            name = _safe_name(member.name)
            if name is None:
                raise BundleError(
                    f"bundle {path}: member {member.name!r} points outside the bundle; refused"
                )
            if not member.isfile():
                raise BundleError(
                    f"bundle {path}: member {member.name!r} is not a regular file "
                    "(links and devices are refused)"
                )
            if member.size > MAX_MEMBER_BYTES:
                raise BundleError(
                    f"bundle {path}: member {name!r} is larger than {MAX_MEMBER_BYTES >> 20} MiB"
                )
            files[name] = archive.extractfile(member).read()
    if MANIFEST not in files:
        raise BundleError(
            f"bundle {path} has no {MANIFEST}; make bundles with `forgetbench submit`"
        )
    return Bundle(path, files)


def write_bundle(files: dict, manifest: dict, out: Path) -> Path:
    """``files`` (name -> bytes) plus a manifest of their hashes, as a .tar.gz written to a
    temporary name and renamed into place."""
    manifest = {**manifest, "files": {name: sha256(data) for name, data in sorted(files.items())}}
    everything = {MANIFEST: json.dumps(manifest, indent=1).encode(), **files}
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as archive:
        for name, data in sorted(everything.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0  # the same inputs give the same archive bytes
            archive.addfile(info, io.BytesIO(data))
    return out


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)
