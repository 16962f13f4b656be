"""Training settings reach TRL as configured."""

import pytest


@pytest.mark.parametrize("setting", [True, False])
def test_gradient_checkpointing_is_a_setting_trl_receives(tmp_path, setting):
    from trl import GRPOConfig, SFTConfig

    from forgetbench.training.common import OptimConfig, trainer_args

    args = trainer_args(OptimConfig(gradient_checkpointing=setting), tmp_path, seed=0)
    assert SFTConfig(**args).gradient_checkpointing is setting
    assert GRPOConfig(**args).gradient_checkpointing is setting
