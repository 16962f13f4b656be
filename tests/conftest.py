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


# CI installs bubblewrap (scripts/install.sh) and sets this: tests that run code in the kernel
# sandbox fail there instead of skipping when it is missing or cannot create namespaces.
REQUIRE_BWRAP = os.environ.get("FORGETBENCH_REQUIRE_BWRAP") == "1"


def needs_namespaces() -> None:
    """Skip (fail under FORGETBENCH_REQUIRE_BWRAP=1) where the kernel sandbox cannot run."""
    from forgetbench.sandbox import IsolationUnavailable, check_isolation

    try:
        check_isolation()
    except IsolationUnavailable as error:
        (pytest.fail if REQUIRE_BWRAP else pytest.skip)(str(error))


@pytest.fixture
def namespaces():
    needs_namespaces()


def require_or_skip(module: str, switch: str, how: str):
    """Import ``module``, or skip the test with ``how`` to install it; CI installs every extra
    and sets ``switch`` (e.g. FORGETBENCH_REQUIRE_RAY=1), so there a broken import fails."""
    import importlib

    if os.environ.get(switch) == "1":
        try:
            return importlib.import_module(module)
        except Exception as error:  # a broken install raises more than ImportError
            pytest.fail(f"{module} does not import under {switch}=1 ({type(error).__name__}: "
                        f"{error}); {how}", pytrace=False)
    return pytest.importorskip(module, reason=f"{module} is not installed: {how}")


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
