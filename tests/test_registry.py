"""One registry for all kinds: in-tree decorators, entry-point packages, clear unknown-name errors."""

import subprocess
import sys

import pytest

from forgetbench import registry
from forgetbench.errors import UsageError


def test_builtin_plugins_of_every_kind_are_listed(cli):
    result = cli("list")
    assert result.returncode == 0, result.stderr
    for kind, name in [("method", "frpo"), ("method", "grpo"), ("attack", "alpaca"),
                       ("eval", "harmbench"), ("eval", "xstest"), ("judge", "refusal"),
                       ("reward", "safety"), ("backend", "hf")]:
        assert name in registry.names(kind)
        assert name in result.stdout
    assert "entropic-risk" in result.stdout  # descriptions come from the plugin docstrings


def test_list_imports_no_heavy_backend():
    code = ("import sys; from forgetbench.cli import main; main(['list']); "
            "heavy = [m for m in ('torch', 'trl', 'vllm', 'ray') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize("args, known", [
    (("run", "--method", "frp"), "Did you mean 'frpo'"),
    (("run", "--attack", "alpacca"), "Did you mean 'alpaca'"),
    (("run", "--preset", "tinny"), "Did you mean 'tiny'"),
    (("list", "methd"), "kinds are method"),
])
def test_unknown_names_exit_2_with_suggestion(cli, args, known):
    result = cli(*args, "--print-config") if args[0] == "run" else cli(*args)
    assert result.returncode == 2
    assert known in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_eval_lists_known_ones():
    with pytest.raises(UsageError, match="Known evals: .*harmbench, .*xstest"):
        registry.get("eval", "harmbnch")


def test_same_name_twice_is_an_error():
    registry.register("judge", "dup_test", len)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("judge", "dup_test", max)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Build and install tests/plugin_package into a private folder put on PYTHONPATH."""
    from pathlib import Path

    target = tmp_path_factory.mktemp("site")
    package = Path(__file__).parent / "plugin_package"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(package)], check=True)
    return target


def test_third_party_package_registers_through_entry_point(cli, installed_plugin):
    env = {"PYTHONPATH": str(installed_plugin)}
    listing = cli("list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "fbtest/grpo_large_beta" in listing.stdout and "fbtest/keyword_judge" in listing.stdout
    plan = cli("run", "--preset", "smoke", "--method", "fbtest/grpo_large_beta",
               "--print-config", env=env)
    assert plan.returncode == 0, plan.stderr
    assert '"beta": 0.5' in plan.stdout and "train fbtest/grpo_large_beta" in plan.stdout
    unknown = cli("run", "--method", "fbtest/nope", "--print-config", env=env)
    assert unknown.returncode == 2 and "fbtest/grpo_large_beta" in unknown.stderr
