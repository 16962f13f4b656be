"""Planning: cells -> their stages -> one stage graph for the whole matrix.

    warmup -> train(method) = P0 -> attack = P1 (and checkpoints P1@k every k steps)
    P0, P1@k, P1 -> generate(eval) -> judge -> results
                      and -> kl(P0 || policy) on the same greedy rollouts -> results

:func:`plan_cell` lays out one cell's stages (a :class:`CellPlan`); :func:`plan_matrix` resolves
every cell of a matrix spec, plans it, and merges the graphs so that stages with the same key
(the warm-up of a seed, a (method, seed) policy, its before-attack scores) are one object, run
once. A plan runs nothing: the runner (``forgetbench.runner``) brings its stages to completion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from forgetbench.cell import Cell, resolve
from forgetbench.config import dump, stable_hash
from forgetbench.matrix import MatrixSpec
from forgetbench.stages import STAGE_KINDS, Stage
from forgetbench.tasks import load_train_task


def _task_version(train_task: Optional[str]) -> dict:
    """A training task's version, in the key of the stages that read its data: bumping it (its
    data changed) makes them run again instead of reusing stale ones."""
    if train_task is None:  # a third-party method without a training task
        return {}
    from forgetbench.task_sources import is_builtin

    task = load_train_task(train_task)
    if is_builtin("train_task", train_task):
        return {"train_task_version": task.version}
    # A task from elsewhere is keyed by its whole content, its data's SHA-256 included.
    return {"train_task_version": task.version, "train_task": stable_hash(dump(task))}


@dataclass
class CellPlan:
    """Every scored policy is a (phase, step): ``before`` is P0 at step 0, ``during`` an attack
    checkpoint, ``after`` the final P1. ``judged`` and ``kl`` hold, per scored policy and eval,
    its judge stages and its KL-from-P0 stage."""

    cell: Cell
    policies: dict[str, Stage]  # phase ("before", "after") -> policy stage
    judged: list[tuple[str, int, str, str, Stage]]  # (phase, step, eval, judge, judge stage)
    kl: list[tuple[str, int, str, Stage]]  # (phase, step, eval, kl stage)

    def targets(self) -> list[Stage]:
        return [stage for *_, stage in self.judged] + [stage for *_, stage in self.kl]


def plan_cell(cell: Cell) -> CellPlan:
    """The stages of one cell (each cell's own objects; :func:`plan_matrix` merges equal ones)."""
    r = cell.resolved
    base = {"model": r["model"], "seed": r["seed"]}
    inputs = {}
    if r["warmup"]["enabled"]:
        inputs["policy"] = Stage(
            "warmup",
            "warmup",
            {**base, "warmup": r["warmup"], **_task_version(r["warmup"]["task"])},
        )
    method = r["method"]["name"]
    trained = Stage(
        "train",
        f"train {method}",
        {**base, "method": r["method"], **_task_version(r["method"]["config"].get("train_task"))},
        inputs,
    )
    attacked = Stage(
        "attack",
        f"attack {method}+{r['attack']['name']}",
        {"seed": r["seed"], "attack": r["attack"]},
        {"policy": trained},
    )
    policies = {"before": trained, "after": attacked}
    final = r["attack"].get("total_steps")
    points = [
        ("before", 0, trained, None),
        *(("during", step, attacked, step) for step in r["attack"].get("checkpoints", [])),
        ("after", final, attacked, None),
    ]
    judged, kl = [], []
    for phase, step, policy, checkpoint in points:
        at = {} if checkpoint is None else {"checkpoint": checkpoint}
        where = phase if checkpoint is None else f"step {checkpoint}"
        for eval_name, eval_config in r["evals"].items():
            generated = Stage(
                "generate",
                f"generate {eval_name} {where}",
                {"eval": {"name": eval_name, "config": eval_config}, "backend": r["backend"], **at},
                {"policy": policy},
            )
            for judge_name in sorted({m["judge"] for m in eval_config["metrics"]}):
                judged.append(
                    (
                        phase,
                        step,
                        eval_name,
                        judge_name,
                        Stage(
                            "judge",
                            f"judge {eval_name} {where} {judge_name}",
                            {
                                "judge": {"name": judge_name, "config": r["judges"][judge_name]},
                                "eval": eval_name,
                            },
                            {"generations": generated},
                        ),
                    )
                )
            kl.append(
                (
                    phase,
                    step,
                    eval_name,
                    Stage(
                        "kl",
                        f"kl {eval_name} {where}",
                        {"eval": eval_name, **at},
                        {"reference": trained, "policy": policy, "generations": generated},
                    ),
                )
            )
    return CellPlan(cell, policies, judged, kl)


@dataclass
class MatrixPlan:
    """Every cell's plan, with each stage shared by several cells being one and the same object."""

    spec: MatrixSpec
    cells: list[CellPlan]
    stages: list[Stage]  # every stage once, inputs first
    names: dict[Stage, str] = field(default_factory=dict)  # display name of each stage

    def counts(self) -> dict[str, int]:
        found = {kind: sum(s.kind == kind for s in self.stages) for kind in STAGE_KINDS}
        return {kind: n for kind, n in found.items() if n}

    def name(self, stage: Stage) -> str:
        return self.names.get(stage, stage.label)


def plan_matrix(spec: MatrixSpec) -> MatrixPlan:
    """Resolve every cell (so any bad name or value fails here, before any work) and merge their
    stage graphs: stages with the same key become one."""
    seeds: list[Optional[int]] = list(spec.seeds) if spec.seeds else [None]
    cells = []
    for method in spec.methods:
        for seed in seeds:
            for attack in spec.attacks:
                cell = resolve(
                    method.plugin,
                    attack.plugin,
                    spec.preset,
                    spec.overrides,
                    seed,
                    method_set=method.set,
                    attack_set=attack.set,
                    method_label=method.label,
                    attack_label=attack.label,
                )
                cells.append(plan_cell(cell))
    canonical: dict[str, Stage] = {}

    def canon(stage: Stage) -> Stage:
        if stage.key in canonical:
            return canonical[stage.key]
        stage.inputs = {name: canon(dep) for name, dep in stage.inputs.items()}
        canonical[stage.key] = stage
        return stage

    for cell_plan in cells:
        cell_plan.policies = {phase: canon(stage) for phase, stage in cell_plan.policies.items()}
        cell_plan.judged = [(*head, canon(stage)) for *head, stage in cell_plan.judged]
        cell_plan.kl = [(*head, canon(stage)) for *head, stage in cell_plan.kl]
    stages = ordered([stage for cell_plan in cells for stage in cell_plan.targets()])
    matrix = MatrixPlan(spec, cells, stages)
    matrix.names = _display_names(matrix)
    return matrix


def _display_names(matrix: MatrixPlan) -> dict[Stage, str]:
    """A stage's label plus the matrix coordinates (method, attack, seed) that all cells using it
    share and that the label does not already say: `train frpo · seed 1`."""
    users: dict[Stage, list] = {}
    for cell_plan in matrix.cells:
        cell = cell_plan.cell
        coords = (cell.method_label, cell.attack_label, f"seed {cell.resolved['seed']}")
        for stage in ordered(cell_plan.targets()):
            users.setdefault(stage, []).append(coords)
    varying = [
        len({cell_coords[i] for cells in users.values() for cell_coords in cells}) > 1
        for i in range(3)
    ]
    names = {}
    for stage, cells in users.items():
        words = set(re.split(r"[ +]", stage.label))
        shown = [
            cells[0][i]
            for i in range(3)
            if varying[i] and len({c[i] for c in cells}) == 1 and cells[0][i] not in words
        ]
        names[stage] = f"{stage.label} · {' '.join(shown)}" if shown else stage.label
    return names


def describe(matrix: MatrixPlan) -> str:
    """One line: the matrix's shape."""
    spec = matrix.spec
    seeds = sorted({cell_plan.cell.resolved["seed"] for cell_plan in matrix.cells})

    def plural(n, word):
        return f"{n} {word}{'' if n == 1 else 's'}"

    return (
        f"{plural(len(spec.methods), 'method')} ({', '.join(v.label for v in spec.methods)}) "
        f"x {plural(len(spec.attacks), 'attack')} "
        f"({', '.join(v.label for v in spec.attacks)}) x {plural(len(seeds), 'seed')} "
        f"({', '.join(map(str, seeds))}) = {plural(len(matrix.cells), 'cell')}, preset "
        f"{spec.preset}"
    )


def summary(matrix: MatrixPlan, root: Path) -> str:
    """`31 stages planned (warmup 1, train 2, ...): 5 done, 26 to run`."""
    counts = ", ".join(f"{kind} {n}" for kind, n in matrix.counts().items())
    done = sum(stage.is_done(root) for stage in matrix.stages)
    return (
        f"{len(matrix.stages)} stages planned ({counts}): {done} done, "
        f"{len(matrix.stages) - done} to run"
    )


def ordered(targets: list[Stage]) -> list[Stage]:
    """Every stage the targets need, each once, dependencies first."""
    seen: dict[str, Stage] = {}

    def visit(stage: Stage) -> None:
        if stage.key in seen:
            return
        for dependency in stage.inputs.values():
            visit(dependency)
        seen[stage.key] = stage

    for target in targets:
        visit(target)
    return list(seen.values())
