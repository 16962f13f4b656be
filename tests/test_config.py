"""Typed configs: unknown keys and wrong types rejected, layered overrides, stable hashes."""

import pytest

from forgetbench.config import parse_override, stable_hash
from forgetbench.errors import UsageError
from forgetbench.cell import resolve
from forgetbench.planner import plan_cell


def test_preset_and_method_layers_and_set_override():
    cell = resolve("frpo", "alpaca", "smoke", ("method.lam=2", "attack.learning_rate=3e-5"))
    method = cell.resolved["method"]["config"]
    assert method["lam"] == 2.0 and method["beta"] == 5e-4  # paper table pairs lam 2 with 5e-4
    assert method["max_steps"] == 2  # from the smoke preset's shared `method:` section
    assert cell.resolved["attack"]["config"]["learning_rate"] == 3e-5
    assert cell.resolved["attack"]["config"]["lr_scheduler"] == "constant_with_warmup"  # task YAML


def test_tiny_is_frpo_with_lambda_half_and_paper_beta():
    method = resolve("frpo", "alpaca", "tiny").resolved["method"]["config"]
    assert (method["lam"], method["beta"], method["jackknife"], method["baseline"]) == (
        0.5,
        2e-3,
        True,
        True,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.learning_rte=1e-5", "unknown key 'learning_rte'"),
        ("method.max_steps=many", "max_steps"),
        ("method.lam=0", "lam"),
        ("method.lam=0.3", "no paper beta for lam=0.3"),
        ("attack.batch_size=-1", "batch_size"),
        ("eval.harmbench.limit=zero", "limit"),
        ("bogus.field=1", "unknown section 'bogus'"),
        ("seed=abc", "seed must be an integer"),
    ],
)
def test_bad_overrides_are_rejected(override, message):
    with pytest.raises(UsageError, match=message):
        resolve("frpo", "alpaca", "smoke", (override,))


def test_grpo_rejects_frpo_only_fields():
    with pytest.raises(UsageError, match="unknown key 'lam'"):
        resolve("grpo", "alpaca", "smoke", ("method.lam=2",))


def test_jackknife_with_one_generation_is_rejected():
    with pytest.raises(UsageError, match="jackknife needs num_generations >= 2"):
        resolve("frpo", "alpaca", "smoke", ("method.num_generations=1",))
    resolve(
        "frpo",
        "alpaca",
        "smoke",
        ("method.num_generations=1", "method.jackknife=false", "method.lam=0.5"),
    )


@pytest.mark.parametrize("text", ["attack.learning_rate", "=3", "attack..x=1", "a.b=[1, 2"])
def test_malformed_set_is_rejected(text):
    with pytest.raises(UsageError, match="malformed"):
        parse_override(text)


def test_set_values_are_typed():
    assert parse_override("attack.learning_rate=1e-5") == (["attack", "learning_rate"], 1e-5)
    assert parse_override("method.jackknife=false") == (["method", "jackknife"], False)
    assert parse_override("evals=[harmbench]") == (["evals"], ["harmbench"])


def test_malformed_preset_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nmethod: {max_steps: 2\n")
    with pytest.raises(UsageError, match=r"malformed YAML in .*bad.yaml at line \d+"):
        resolve("frpo", "alpaca", str(bad))


def test_preset_with_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model: smollm2-135m-instruct\nmethdos: {}\n")
    with pytest.raises(UsageError, match="unknown key 'methdos'"):
        resolve("frpo", "alpaca", str(bad))


def test_hashes_are_stable_and_sensitive():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    first = plan_cell(resolve("frpo", "alpaca", "smoke"))
    again = plan_cell(resolve("frpo", "alpaca", "smoke"))
    assert [s.key for s in first.targets()] == [s.key for s in again.targets()]
    changed = plan_cell(resolve("frpo", "alpaca", "smoke", ("attack.learning_rate=2e-5",)))
    assert changed.policies["before"].key == first.policies["before"].key  # P0 is shared
    assert changed.policies["after"].key != first.policies["after"].key
    grpo = plan_cell(resolve("grpo", "alpaca", "smoke"))
    assert (
        grpo.policies["before"].inputs["policy"].key
        == first.policies["before"].inputs["policy"].key
    )  # the warm-up is shared by every method


def test_every_preset_resolves_for_every_method_and_attack():
    # Every registered plugin, third-party ones included: a preset's shared sections must not
    # push one method's fields into another's config (a non-GRPO method fails here otherwise).
    from forgetbench import registry
    from forgetbench.config import preset_names

    methods, attacks = registry.names("method"), registry.names("attack")
    assert {"grpo", "frpo", "alpaca"} <= set(methods) | set(attacks)
    for preset in preset_names():
        for method in methods:
            resolve(method, "alpaca", preset)
        for attack in attacks:
            resolve("grpo", attack, preset)


def test_each_preset_layer_wins_over_the_one_below(tmp_path):
    """README "Using it": plugin defaults < preset `method:` < preset `methods.<name>:` < --set.
    Every value here differs from the code default (frpo: lam 0.5, jackknife on, 8 generations,
    lr 1e-5, 64 completion tokens), so ignoring any layer changes the result."""
    preset = tmp_path / "layers.yaml"
    preset.write_text(
        "model: smollm2-135m-instruct\n"
        "method: {num_generations: 4, learning_rate: 3.0e-6, max_completion_length: 16}\n"
        "methods:\n"
        "  frpo: {lam: 0.2, jackknife: false, learning_rate: 4.0e-6, max_completion_length: 24}\n"
        "  grpo: {adv_norm: none}\n"
        "evals: [harmbench]\n"
    )
    frpo = resolve("frpo", "alpaca", str(preset), ("method.learning_rate=7e-6",))
    method = frpo.resolved["method"]["config"]
    assert method["num_generations"] == 4  # `method:`
    assert (
        method["lam"],
        method["beta"],
        method["jackknife"],
        method["max_completion_length"],
    ) == (0.2, 5e-3, False, 24)  # `methods.frpo:` over `method:` and the defaults
    assert method["learning_rate"] == 7e-6  # --set beats both preset layers
    assert method["baseline"] is True  # no layer sets it: the code default
    grpo = resolve("grpo", "alpaca", str(preset), ("method.learning_rate=7e-6",))
    method = grpo.resolved["method"]["config"]
    assert method["adv_norm"] == "none" and method["max_completion_length"] == 16
    assert method["learning_rate"] == 7e-6


def test_shared_section_skips_undeclared_fields_but_per_plugin_sections_stay_strict(tmp_path):
    from forgetbench import registry
    from forgetbench.config import Field, StrictModel

    class OnlyRate(StrictModel):
        learning_rate: float = Field(1e-5, gt=0, description="Learning rate.")

    registry.register("method", "cfgtest_only_rate", lambda *a: None, config=OnlyRate)
    # smoke's shared `method:` holds GRPO's num_generations etc.; only learning_rate is declared.
    preset = tmp_path / "p.yaml"
    preset.write_text("method: {num_generations: 2, learning_rate: 3.0e-5}\n")
    cell = resolve("cfgtest_only_rate", "alpaca", str(preset))
    assert cell.resolved["method"]["config"] == {"learning_rate": 3e-5}
    with pytest.raises(UsageError, match="unknown key 'num_generations'"):
        resolve("cfgtest_only_rate", "alpaca", str(preset), ("method.num_generations=4",))
    preset.write_text("methods: {cfgtest_only_rate: {num_generations: 2}}\n")
    with pytest.raises(UsageError, match="unknown key 'num_generations'"):
        resolve("cfgtest_only_rate", "alpaca", str(preset))
    preset.write_text("method: {num_generatoins: 2}\n")  # declared by no method: a typo
    with pytest.raises(UsageError, match="unknown key.*num_generatoins"):
        resolve("grpo", "alpaca", str(preset))


def test_speed_only_settings_leave_stage_keys_and_track_unchanged():
    """Gradient checkpointing changes speed and memory, never the weights (checked bit for bit
    in test_training_settings.py): switching it keeps every stage key, so finished stages are
    re-used, while a setting that changes the work (the learning rate) changes the keys."""

    def keys(*overrides):
        cell_plan = plan_cell(resolve("frpo", "alpaca", "smoke", overrides))
        return [stage.key for stage in cell_plan.targets()] + [
            stage.key for stage in cell_plan.policies.values()
        ]

    default = keys()
    off = keys(
        "warmup.gradient_checkpointing=false",
        "method.gradient_checkpointing=false",
        "attack.gradient_checkpointing=false",
    )
    on = keys(
        "warmup.gradient_checkpointing=true",
        "method.gradient_checkpointing=true",
        "attack.gradient_checkpointing=true",
    )
    assert default == off == on
    # the loss through the model's own head: the same to float rounding (test_training_settings)
    head = ("warmup", "method", "attack")
    assert keys(*(f"{stage}.fused_lm_head=true" for stage in head)) == default
    assert keys(*(f"{stage}.fused_lm_head=false" for stage in head)) == default
    changed = keys("attack.learning_rate=3e-5")
    assert changed[-1] != default[-1] and changed[-2] == default[-2]  # the attack's, not train's


def test_generation_batch_size_is_hashed_as_16_and_keeps_stages_and_track():
    """The hf back-end's prompts per generate() call change speed only (the tokens, checked in
    test_backend_hf.py): any value keeps the config hash, every stage key and the protocol (track)
    that 16 gave, the value stages were keyed with before; a training batch size still counts."""
    from forgetbench.results.rows import protocol

    def fingerprint(*overrides):
        cell = resolve("frpo", "alpaca", "tiny", overrides)
        cell_plan = plan_cell(cell)
        keys = [stage.key for stage in cell_plan.targets()]
        return cell.config_hash, keys, stable_hash(protocol(cell.resolved, {}))

    at_16 = fingerprint("generation.batch_size=16")
    assert fingerprint() == at_16  # the tiny preset's 64
    assert fingerprint("generation.batch_size=3") == at_16
    trained = fingerprint("attack.batch_size=4")
    assert trained[0] != at_16[0] and trained[1] != at_16[1]
    assert fingerprint("generation.max_new_tokens=32")[2] != at_16[2]  # decoding still counts


def test_generation_dtype_auto_is_hashed_as_float32_and_keeps_stages_and_track():
    """`tiny` generates at `dtype: auto` (bfloat16 only where the CPU has it in hardware): auto
    keeps the config hash, the stage keys and the track that float32, the value its stages were
    keyed with, gave; an explicit bfloat16 is other work and changes them."""
    from forgetbench.results.rows import protocol

    def fingerprint(*overrides):
        cell = resolve("frpo", "alpaca", "tiny", overrides)
        keys = [stage.key for stage in plan_cell(cell).targets()]
        return cell.config_hash, keys, stable_hash(protocol(cell.resolved, {}))

    at_float32 = fingerprint("generation.dtype=float32")
    assert fingerprint() == at_float32  # the tiny preset's auto
    assert fingerprint("generation.dtype=auto") == at_float32
    bf16 = fingerprint("generation.dtype=bfloat16")
    assert bf16[0] != at_float32[0] and bf16[1] != at_float32[1]
