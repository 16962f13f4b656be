"""Base-training methods.

A method plugin is ``train(config, model_path, out_dir, seed) -> Path``, registered with
``@forgetbench.method("name", config=MyConfig)``. It trains the policy starting from ``model_path``
(the warm-up policy or the base model) and must save it as a full model folder (merged, with its
tokenizer) at ``out_dir / "model"`` and return that path: ``save_policy``, ``run_grpo`` and
``run_sft`` do both. The train stage checks the returned folder (``stages.policy.run_policy_plugin``):
a method that raises, returns nothing, or saves elsewhere fails its own stage with one line naming
it. ``out_dir / "log_history.json"`` (transformers' log history, written by the loops) is
optional for a method. ``config`` is the plugin's validated config: a preset's shared ``method:``
fields reach it only where its config class declares them.
"""
