import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist (the README's `-n 2`) two test processes share the cores: each, and every
# stage process it starts, gets one torch/OpenMP thread, whatever the caller exported (CI exports
# FORGETBENCH_THREADS=2 for the slow suite). With two threads each, OpenMP's spinning threads
# fight over two cores (measured here: a 7 s training test took 100 s).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["FORGETBENCH_THREADS"] = "1"

# `precision: auto` and generation `dtype: auto` are bf16 on a CPU with it in hardware
# (AVX512-BF16, AMX) and float32 elsewhere: the suite pins float32, so the tolerances its tests
# compare at hold on every machine CI may draw, and their stages (children) inherit it.
# tests/test_precision.py checks the CPU detection itself, with this variable unset.
os.environ["FORGETBENCH_CPU_BF16"] = "0"


def run_cli(*args, env=None, timeout=900, **kwargs):
    """Run the real console entry point in a fresh process."""
    full_env = {
        **os.environ,
        "FORGETBENCH_THREADS": os.environ.get("FORGETBENCH_THREADS", "2"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "forgetbench", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )


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
            pytest.fail(
                f"{module} does not import under {switch}=1 ({type(error).__name__}: "
                f"{error}); {how}",
                pytrace=False,
            )
    return pytest.importorskip(module, reason=f"{module} is not installed: {how}")


# ----------------------------------------------------------------- the fast path (plumbing tests)

EMBEDDED = "smollm2-135m-instruct"
# The embedded model's architecture (Llama, tied embeddings) and tokenizer with a few small
# layers: every stage runs for real on it in seconds. Its outputs are noise, so it serves tests
# of plumbing (runner, planner, stage store, results, CLI), never claims about safety or cost.
TINY_SHAPE = dict(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised model folder (``save_pretrained``), the embedded tokenizer beside."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from forgetbench.models import resolve_model

    embedded = resolve_model(EMBEDDED)
    config = AutoConfig.from_pretrained(embedded)
    # Untied: with a random embedding tied to the output layer the model echoes its last input
    # token (the template's newline), so every response would be empty.
    config.tie_word_embeddings = False
    for name, value in TINY_SHAPE.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny model's folder, built once per session; pass it as ``--set model=<folder>``."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def grpo_passes(tiny_model, tmp_path_factory):
    """GRPO's passes through the network on the tiny loop of tests/test_method_training.py, the
    yardstick every method's pass counts are compared with: counted once per session."""
    from test_method_training import train_counting

    with pytest.MonkeyPatch.context() as monkeypatch:
        return train_counting(
            "grpo", tiny_model, tmp_path_factory.mktemp("grpo-passes"), monkeypatch
        )


@pytest.fixture(autouse=True)
def registry_snapshot():
    """Plugins a test registers in this process are gone after it, so none leaks into another.
    Built-ins and entry-point packages loaded meanwhile stay: their modules stay imported, and a
    second import would not register them again."""
    from forgetbench import registry

    registry._load_builtins()
    before = dict(registry._plugins)
    packages = set(registry._loaded_entry_points)
    yield
    loaded = registry._loaded_entry_points - packages
    if loaded:
        # a namespace a test only looked up (registry.get("eval", "duplab/arith")) is marked as
        # loaded too: what a test registered under it goes, or a later test finds its deleted files
        from importlib.metadata import entry_points

        loaded &= {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    for key in set(registry._plugins) - set(before):
        if key[1].split("/", 1)[0] not in loaded or "/" not in key[1]:
            del registry._plugins[key]
    registry._plugins.update(before)  # a test that replaced a plugin gets the old one back


@pytest.fixture(scope="session")
def baselines_site(tmp_path_factory):
    """The baselines/ package installed (a wheel's copy, entry point included) into a private
    folder, put on sys.path for this process; pass ``{"PYTHONPATH": str(site)}`` to CLI runs."""
    from forgetbench import registry

    site = tmp_path_factory.mktemp("baselines-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(ROOT / "baselines"),
        ],
        check=True,
    )
    sys.path.insert(0, str(site))
    registry._loaded_entry_points.discard("baselines")  # looked up before it was installed
    return site
