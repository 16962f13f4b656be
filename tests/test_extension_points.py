"""The core's extension points for plugin packages: the method output contract, a broken
third-party entry point, the public API, and the training loops' trainer subclass hooks.

Bad plugins are generated under tmp_path as an installed distribution (a ``*.dist-info`` with an
``entry_points.txt``) put on PYTHONPATH, so each CLI run sees exactly the package under test."""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest

from forgetbench import registry
from forgetbench.errors import ForgetbenchError
from forgetbench.stages.policy import PluginOutputError, run_policy_plugin

ROOT = Path(__file__).resolve().parents[1]


def install_fake_package(site: Path, namespace: str, module: str, source: str) -> Path:
    """An importable package ``module`` registered under entry point ``namespace``."""
    package = site / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_registry.py").write_text(textwrap.dedent(source))
    dist = site / f"{module}-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(f"[forgetbench]\n{namespace} = {module}._registry\n")
    return site


BAD_METHODS = """
    from pathlib import Path
    from forgetbench import method, save_policy

    def _save_tiny_model(folder):
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config(n_layer=1, n_head=1, n_embd=8, vocab_size=16)
        GPT2LMHeadModel(config).save_pretrained(folder)

    @method("raises")
    def raises(config, model_path, out_dir, seed):
        '''Crashes inside its training.'''
        raise ValueError("shape mismatch in my loss")

    @method("returns_nothing")
    def returns_nothing(config, model_path, out_dir, seed):
        '''Saves the policy but returns nothing.'''
        _save_tiny_model(out_dir / "model")

    @method("saves_elsewhere")
    def saves_elsewhere(config, model_path, out_dir, seed):
        '''Saves next to its output folder.'''
        target = out_dir.parent / "elsewhere-model"
        _save_tiny_model(target)
        return target
"""


# ----------------------------------------------------------------- the method output contract


class FakePlugin:
    kind, name = "method", "fake/method"

    def __init__(self, target):
        self.target = target


def _tiny_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    "target, message",
    [
        (
            lambda c, m, out, s: None,
            "method 'fake/method' returned None instead of its policy folder",
        ),
        (lambda c, m, out, s: _tiny_model(out.parent / "other"), "outside its output folder"),
        (lambda c, m, out, s: out / "model", "holds no saved model"),
        (lambda c, m, out, s: 1 / 0, "method 'fake/method' raised ZeroDivisionError"),
    ],
)
def test_method_breaking_the_output_contract_fails_with_its_name(tmp_path, target, message):
    out = tmp_path / "stage"
    out.mkdir()
    with pytest.raises(PluginOutputError, match=message) as error:
        run_policy_plugin(FakePlugin(target), None, "base", out, 0)
    assert "\n" not in str(error.value)


def test_method_returning_another_folder_inside_its_output_is_moved_to_model(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    returned = run_policy_plugin(
        FakePlugin(lambda c, m, o, s: _tiny_model(o / "final")), None, "base", out, 0
    )
    assert returned == (out / "model").resolve() and (out / "model" / "config.json").is_file()
    assert not (out / "final").exists()


def test_forgetbench_error_of_a_method_keeps_its_exit_code_and_gains_the_name(tmp_path):
    from forgetbench.errors import UsageError

    def bad(*_):
        raise UsageError("n_harmful too large; lower it")

    with pytest.raises(PluginOutputError, match="method 'fake/method': n_harmful too large") as e:
        run_policy_plugin(FakePlugin(bad), None, "base", tmp_path, 0)
    assert e.value.exit_code == 2


BAD_METHOD_ERRORS = {
    "raises": "method 'badm/raises' raised ValueError: shape mismatch in my loss; fix the plugin",
    "returns_nothing": "method 'badm/returns_nothing' returned None",
    "saves_elsewhere": "method 'badm/saves_elsewhere' saved its policy to .*elsewhere-model, "
    "outside its output folder",
}


def test_bad_methods_fail_their_own_train_stages_through_the_cli(cli, tmp_path):
    """One `forgetbench matrix` over the three bad methods (one runner, one stage fork server,
    instead of three runs): each fails its own train stage with its own message, the run ends
    with one line on stderr naming the first, and nothing later runs or is half-written."""
    import re

    site = install_fake_package(tmp_path / "site", "badm", "badm_plugin", BAD_METHODS)
    out = tmp_path / "out"
    result = cli(
        "matrix",
        "--preset",
        "smoke",
        "--methods",
        ",".join(f"badm/{name}" for name in BAD_METHOD_ERRORS),
        "--attacks",
        "alpaca",
        "--set",
        "warmup.enabled=false",
        "--output-dir",
        str(out),
        env={"PYTHONPATH": f"{site}:{ROOT}"},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "stage 'train badm/raises' failed" in lines[0]
    assert re.search(BAD_METHOD_ERRORS["raises"], lines[0]) and "2 more stage(s) failed" in lines[0]
    # Each stage's own failure, as the progress display reported it (rich may wrap the line).
    progress = " ".join(result.stdout.split())
    for name, message in BAD_METHOD_ERRORS.items():
        assert re.search(rf"train badm/{name}.*?failed after \d+ s: {message}", progress), name
    # Nothing half-written: no finished or temporary train stage, and no later stage ran.
    stages = out / "stages"
    assert not list(stages.glob("train/*/stage.json")) and not list(stages.glob(".tmp-*"))
    assert not (stages / "attack").exists() and not (stages / "generate").exists()


# ----------------------------------------------------------------- a broken entry point

BROKEN = """
    from forgetbench import method

    @method("half_registered")
    def half_registered(config, model_path, out_dir, seed):
        '''Registered before the import error below.'''

    import a_dependency_that_is_not_installed  # noqa: F401
"""


def test_broken_entry_point_is_reported_once_and_the_rest_still_works(cli, tmp_path):
    site = install_fake_package(tmp_path / "site", "brokenpkg", "brokenpkg_plugin", BROKEN)
    env = {"PYTHONPATH": f"{site}:{ROOT}"}
    listing = cli("list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "grpo" in listing.stdout and "alpaca" in listing.stdout
    assert "brokenpkg/half_registered" not in listing.stdout  # nothing half-registered
    warnings = [line for line in listing.stderr.splitlines() if "brokenpkg" in line]
    assert len(warnings) == 1, listing.stderr
    assert (
        "plugin package 'brokenpkg' (brokenpkg_plugin._registry) failed to import: "
        "ModuleNotFoundError"
        in warnings[0]
        and "pip uninstall brokenpkg_plugin" in warnings[0]
    )
    other = cli("run", "--preset", "smoke", "--method", "grpo", "--print-config", env=env)
    assert other.returncode == 0, other.stderr
    lookup = cli(
        "run",
        "--preset",
        "smoke",
        "--method",
        "brokenpkg/half_registered",
        "--print-config",
        env=env,
    )
    assert lookup.returncode == 2
    assert (
        "unknown method 'brokenpkg/half_registered': plugin package 'brokenpkg'" in lookup.stderr
        and "failed to import" in lookup.stderr
    )


# ----------------------------------------------------------------- the public API


def test_public_api_resolves_lazily_without_heavy_imports():
    import subprocess

    code = (
        "import sys, forgetbench\n"
        "light = [n for n in forgetbench.__all__ if n not in ('grpo_advantages', "
        "'frpo_advantages')]\n"
        "assert all(getattr(forgetbench, n) is not None for n in light)\n"
        "print('HEAVY', [m for m in ('torch', 'trl', 'transformers', 'vllm') "
        "if m in sys.modules])\n"
        "forgetbench.grpo_advantages\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in out.stdout and "TORCH True" in out.stdout, out.stderr
    import forgetbench

    assert forgetbench.method is registry.method
    assert forgetbench.Field.__module__ == "pydantic.fields"
    with pytest.raises(AttributeError, match="no attribute 'run_grpoo'"):
        forgetbench.run_grpoo


def test_baselines_import_only_forgetbench_public_names():
    import forgetbench

    files = sorted((ROOT / "baselines").rglob("*.py"))
    assert files, "baselines/ has no modules"
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("forgetbench"):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                assert node.module == "forgetbench", f"{where} imports private {node.module}"
                bad = [a.name for a in node.names if a.name not in forgetbench.__all__]
                assert not bad, f"{where} imports {bad}, not in forgetbench.__all__"
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("forgetbench.")], (
                    f"{path}:{node.lineno} imports a forgetbench submodule"
                )


# ----------------------------------------------------------------- trainer subclasses


def test_loops_reject_a_trainer_class_of_the_wrong_family():
    from trl import SFTTrainer

    from forgetbench import make_advantage_trainer

    with pytest.raises(ForgetbenchError, match="pass a subclass of trl.GRPOTrainer"):
        make_advantage_trainer(SFTTrainer)
    from trl import GRPOTrainer

    class Mine(GRPOTrainer):
        pass

    made = make_advantage_trainer(Mine)
    assert issubclass(made, Mine) and made.__name__ == "AdvantageMine"
    assert make_advantage_trainer(Mine) is made  # one class per base
