"""Run a planned matrix (one cell or many) on an executor, then write and print the results.

The scheduler submits a stage once every input is complete and the executor has room, shows
stages done / running / left with the elapsed time, and keeps going past a failed stage (skipping
only what depends on it), so one bad cell does not stop the others. Every finished stage stays
on disk: re-running the same command resumes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forgetbench.errors import ForgetbenchError
from forgetbench.executors import Executor
from forgetbench.planner import CellPlan, MatrixPlan
from forgetbench.results import cell_rows, write_table
from forgetbench.stages.store import Interrupted, Outcome, prepare
from forgetbench.stages import Stage


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's pre-emption, `kill`) stops as cleanly as Ctrl-C."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Display:
    """Log lines always; a live bar (done / running / left, elapsed) when on a terminal."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.progress = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]stages[/]"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
                TextColumn("{task.fields[current]}"), console=console, transient=True)
            self.task = self.progress.add_task("stages", total=total, state="", current="")

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def update(self, done: int, running: dict, left: int) -> None:
        if self.progress:
            current = ", ".join(running.values())
            self.progress.update(self.task, completed=done, state=f"done · {len(running)} running"
                                 f" · {left} left", current=current[:80])


def run_stages(matrix: MatrixPlan, root: Path, executor: Executor, console: Console) -> dict:
    """Bring every stage of ``matrix`` to completion; returns stage -> Outcome (failed and
    skipped stages included)."""
    stages = matrix.stages
    number = {stage: index for index, stage in enumerate(stages, start=1)}
    total = len(stages)

    def say(stage: Stage, text: str) -> None:
        console.print(f"[{number[stage]}/{total}] {matrix.name(stage)}: {text}",
                      highlight=False, markup=True)

    outcomes: dict[Stage, Outcome] = {}
    for stage in stages:
        if stage.is_done(root):
            outcomes[stage] = Outcome("reused")
            say(stage, f"[green]re-used[/] {stage.folder(root).name}")
    pending = [stage for stage in stages if stage not in outcomes]
    started = time.monotonic()
    if not pending:
        _report(console, outcomes, total, started, "nothing to run")
        return outcomes
    executor.open(root)
    where = executor.describe()
    try:
        with _Display(console, total) as display, _sigterm_as_interrupt():
            while pending or executor.in_flight():
                for stage in list(pending):
                    inputs = [outcomes.get(dep) for dep in stage.inputs.values()]
                    if any(o is not None and o.status in ("failed", "skipped") for o in inputs):
                        pending.remove(stage)
                        outcomes[stage] = Outcome("skipped", error="an input failed")
                        say(stage, "[yellow]skipped[/] (an input failed)")
                    elif all(o is not None for o in inputs) and executor.has_capacity():
                        pending.remove(stage)
                        executor.submit(stage)
                        if stage in executor.in_flight():
                            say(stage, f"{executor.in_flight()[stage]} ...")
                for stage, outcome in executor.poll(timeout=0.5):
                    outcomes[stage] = outcome
                    running = len(executor.in_flight())
                    say(stage, f"{_ended(stage, outcome, root)} [dim]({len(outcomes)}/{total} "
                               f"done, {running} running, {len(pending)} left, "
                               f"{_clock(time.monotonic() - started)} elapsed)[/]")
                display.update(len(outcomes), {s: matrix.name(s) for s in executor.in_flight()},
                               len(pending))
    except KeyboardInterrupt:
        busy = [s.label for s in executor.in_flight()]
        executor.abort()
        at = f"during stage '{busy[0]}'" if len(busy) == 1 else \
            f"during stages {', '.join(repr(b) for b in busy)}" if busy else "between stages"
        raise Interrupted(f"interrupted {at}; nothing half-written was kept. Re-run the "
                          "same command to resume.") from None
    finally:
        executor.close()
    _report(console, outcomes, total, started, where)
    return outcomes


def _report(console: Console, outcomes: dict, total: int, started: float, where: str) -> None:
    console.print(f"{total} stages: {_count(outcomes, 'reused')} re-used, "
                  f"{_count(outcomes, 'ran')} computed, {_count(outcomes, 'failed')} failed, "
                  f"{_count(outcomes, 'skipped')} skipped; {time.monotonic() - started:.0f} s "
                  f"({where})", highlight=False)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def _ended(stage: Stage, outcome: Outcome, root: Path) -> str:
    if outcome.status == "ran":
        return (f"[bold]done[/] in {outcome.seconds:.0f} s, peak RSS "
                f"{outcome.peak_rss_mib:.0f} MiB")
    if outcome.status == "reused":  # it was not done when this runner started
        return f"[green]re-used[/] {stage.folder(root).name} (computed by another runner)"
    return f"[red]failed[/] after {outcome.seconds:.0f} s: {escape(outcome.error)}"


def _count(outcomes: dict, *statuses: str) -> int:
    return sum(o.status in statuses for o in outcomes.values())


def table_name(cell_plan: CellPlan) -> str:
    cell = cell_plan.cell
    return (f"{cell.method_label.replace('/', '-')}__{cell.attack_label.replace('/', '-')}"
            f"__seed{cell.resolved['seed']}__{cell.config_hash}")


def write_cell_table(cell_plan: CellPlan, root: Path) -> Path:
    """The cell's rows as Parquet and CSV, with its resolved config beside them."""
    name = table_name(cell_plan)
    folder = root / "results"
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{name}.config.json"
    tmp = config_path.with_name(f".{config_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cell_plan.cell.resolved, indent=1))
    os.replace(tmp, config_path)
    rows = cell_rows(cell_plan, root, config_file=config_path.name)
    return write_table(rows, folder, name)


def run_matrix(matrix: MatrixPlan, root: Path, executor: Executor, console: Console) -> list[Path]:
    """Run every stage, then write one results table per complete cell and print a summary.
    Raises (after writing what it could) if a stage failed."""
    prepare(root)
    outcomes = run_stages(matrix, root, executor, console)
    tables, all_rows = [], []
    for cell_plan in matrix.cells:
        if all(outcomes[stage].status in ("ran", "reused") for stage in cell_plan.targets()):
            path = write_cell_table(cell_plan, root)
            tables.append(path)
            import pandas as pd

            all_rows.extend(pd.read_parquet(path).to_dict("records"))
    if all_rows:
        table = before_after_table(all_rows) if len(matrix.cells) == 1 else \
            matrix_table(all_rows)
        # off a terminal (a log, a pipe) nothing needs to fit a screen: print the table whole
        wide = console if console.is_terminal else \
            Console(file=console.file, width=max(console.width, 240), highlight=False)
        wide.print(table)
        if len(matrix.cells) == 1 and any(row["phase"] == "during" for row in all_rows):
            wide.print(steps_table(all_rows))
    if tables:
        where = tables[0] if len(tables) == 1 else root / "results"
        console.print(f"results: {where}{' (+ .csv)' if len(tables) == 1 else ''}; "
                      f"`forgetbench results --output-dir {root}` prints, filters and exports "
                      "them", highlight=False, soft_wrap=True)
    failed = [(stage, o) for stage, o in outcomes.items() if o.status == "failed"]
    if failed:
        stage, outcome = failed[0]
        error = " ".join(outcome.error.split())
        more = f" (and {len(failed) - 1} more stage(s) failed)" if len(failed) > 1 else ""
        skipped = _count(outcomes, "skipped")
        after = f"; {skipped} stage(s) depending on it were skipped" if skipped else ""
        failure = ForgetbenchError(f"stage '{stage.label}' failed: {error}{more}{after}. "
                                   "Fix it and re-run the same command: finished stages are "
                                   "re-used")
        failure.exit_code = outcome.exit_code or 1
        raise failure
    return tables


def _fmt(value: float, low: float, high: float) -> str:
    if value != value:  # NaN: no such row
        return "-"
    return f"{value:.2f} [{low:.2f},{high:.2f}]"


def before_after_table(rows: list[dict]) -> Table:
    import pandas as pd

    from forgetbench.results import before_after

    first = rows[0]
    table = Table(title=f"{first['method']} attacked by {first['attack']} (seed {first['seed']}): "
                  "95% CI, Wilson for rates")
    for column in ("eval", "judge", "metric", "better", "before (P0)", "after (P1)", "change",
                   "n"):
        table.add_column(column, justify="left" if column in ("eval", "judge", "metric")
                         else "right", no_wrap=True)
    for pair in before_after(pd.DataFrame(rows)).to_dict("records"):
        table.add_row(pair["eval"], pair["judge"], pair["metric"], pair["direction"],
                      _fmt(pair["before"], pair["before_low"], pair["before_high"]),
                      _fmt(pair["after"], pair["after_low"], pair["after_high"]),
                      "-" if pair["change"] != pair["change"] else f"{pair['change']:+.2f}",
                      f"{pair['n_before']}/{pair['n_after'] if pair['n_after'] else '-'}")
    return table


def steps_table(rows: list[dict]) -> Table:
    """One line per (eval, metric), one column per scored attack step (step 0 = P0)."""
    steps = sorted({row["step"] for row in rows})
    table = Table(title="during the attack: value at each optimiser step")
    for column in ("eval", "metric", *(f"step {step}" for step in steps)):
        table.add_column(column, no_wrap=True, justify="left" if column in ("eval", "metric")
                         else "right")
    values = {(r["eval"], r["metric"], r["step"]): r["value"] for r in rows}
    for eval_name, metric in dict.fromkeys((r["eval"], r["metric"]) for r in rows):
        table.add_row(eval_name, metric, *(f"{values[(eval_name, metric, step)]:.3f}"
                                           if (eval_name, metric, step) in values else "-"
                                           for step in steps))
    return table


def matrix_table(rows: list[dict]) -> Table:
    """One line per (method, attack, seed, eval, judge, metric): before, after, change."""
    import pandas as pd

    from forgetbench.results import before_after, sort_rows

    table = Table(title="before (P0) and after (P1) the attack, 95% CI (Wilson for rates)")
    for column in ("method", "attack", "seed", "eval", "judge", "metric", "better", "before",
                   "after", "change"):
        table.add_column(column, no_wrap=True,
                         justify="right" if column in ("seed", "before", "after", "change")
                         else "left")
    for pair in before_after(sort_rows(pd.DataFrame(rows))).to_dict("records"):
        table.add_row(*(str(pair[k]) for k in ("method", "attack", "seed", "eval", "judge",
                                               "metric")), pair["direction"],
                      _fmt(pair["before"], pair["before_low"], pair["before_high"]),
                      _fmt(pair["after"], pair["after_low"], pair["after_high"]),
                      "-" if pair["change"] != pair["change"] else f"{pair['change']:+.2f}")
    return table


__all__ = ["before_after_table", "matrix_table", "steps_table", "run_matrix", "run_stages"]
