"""Pipeline stages. Each is a pure function of its resolved config and its inputs' outputs, so its
folder is named by a hash of exactly those (plus STAGE_FORMAT, bumped when outputs change shape).

A stage module exposes ``run(config: dict, inputs: dict[str, Path], out: Path) -> None``.
"""

STAGE_FORMAT = 1
STAGE_KINDS = ("warmup", "train", "attack", "generate", "judge", "kl")
