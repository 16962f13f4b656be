import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, timeout=900, **kwargs):
    """Run the real console entry point in a fresh process."""
    full_env = {**os.environ, "FORGETBENCH_THREADS": os.environ.get("FORGETBENCH_THREADS", "2"),
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "forgetbench", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT, **kwargs)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def baselines_site(tmp_path_factory):
    """The baselines/ package installed (a wheel's copy, entry point included) into a private
    folder, put on sys.path for this process; pass ``{"PYTHONPATH": str(site)}`` to CLI runs."""
    from forgetbench import registry

    site = tmp_path_factory.mktemp("baselines-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(ROOT / "baselines")],
                   check=True)
    sys.path.insert(0, str(site))
    registry._loaded_entry_points.discard("baselines")  # looked up before it was installed
    return site
