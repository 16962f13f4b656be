"""Run a planned matrix (one cell or many) on an executor, then write and print the results
(``forgetbench.results``: the rows and tables).

The scheduler submits a stage once every input is complete and the executor has room, shows
stages done / running / left with the elapsed time, and keeps going past a failed stage (skipping
only what depends on it), so one bad cell does not stop the others. Every finished stage stays
on disk: re-running the same command resumes.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forgetbench.errors import ForgetbenchError
from forgetbench.executors import Executor
from forgetbench.planner import MatrixPlan
from forgetbench.results import print_run_tables, read_table, write_cell_table
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
                TextColumn("[bold]stages[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[state]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[current]}"),
                console=console,
                transient=True,
            )
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
            self.progress.update(
                self.task,
                completed=done,
                state=f"done · {len(running)} running · {left} left",
                current=current[:80],
            )


def run_stages(matrix: MatrixPlan, root: Path, executor: Executor, console: Console) -> dict:
    """Bring every stage of ``matrix`` to completion; returns stage -> Outcome (failed and
    skipped stages included)."""
    stages = matrix.stages
    number = {stage: index for index, stage in enumerate(stages, start=1)}
    total = len(stages)

    def say(stage: Stage, text: str) -> None:
        console.print(
            f"[{number[stage]}/{total}] {matrix.name(stage)}: {text}", highlight=False, markup=True
        )

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
                    elif all(o is not None for o in inputs) and executor.has_capacity(stage):
                        pending.remove(stage)
                        executor.submit(stage)
                        if stage in executor.in_flight():
                            say(stage, f"{executor.in_flight()[stage]} ...")
                for stage, outcome in executor.poll(timeout=0.5):
                    outcomes[stage] = outcome
                    running = len(executor.in_flight())
                    say(
                        stage,
                        f"{_ended(stage, outcome, root)} [dim]({len(outcomes)}/{total} "
                        f"done, {running} running, {len(pending)} left, "
                        f"{_clock(time.monotonic() - started)} elapsed)[/]",
                    )
                display.update(
                    len(outcomes), {s: matrix.name(s) for s in executor.in_flight()}, len(pending)
                )
    except KeyboardInterrupt:
        busy = [s.label for s in executor.in_flight()]
        executor.abort()
        at = (
            f"during stage '{busy[0]}'"
            if len(busy) == 1
            else f"during stages {', '.join(repr(b) for b in busy)}"
            if busy
            else "between stages"
        )
        raise Interrupted(
            f"interrupted {at}; nothing half-written was kept. Re-run the same command to resume."
        ) from None
    finally:
        executor.close()
    _report(console, outcomes, total, started, where)
    return outcomes


def _report(console: Console, outcomes: dict, total: int, started: float, where: str) -> None:
    console.print(
        f"{total} stages: {_count(outcomes, 'reused')} re-used, "
        f"{_count(outcomes, 'ran')} computed, {_count(outcomes, 'failed')} failed, "
        f"{_count(outcomes, 'skipped')} skipped; {time.monotonic() - started:.0f} s "
        f"({where})",
        highlight=False,
    )


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def _ended(stage: Stage, outcome: Outcome, root: Path) -> str:
    if outcome.status == "ran":
        return f"[bold]done[/] in {outcome.seconds:.0f} s, peak RSS {outcome.peak_rss_mib:.0f} MiB"
    if outcome.status == "reused":  # it was not done when this runner started
        return f"[green]re-used[/] {stage.folder(root).name} (computed by another runner)"
    return f"[red]failed[/] after {outcome.seconds:.0f} s: {escape(outcome.error)}"


def _count(outcomes: dict, *statuses: str) -> int:
    return sum(o.status in statuses for o in outcomes.values())


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
            # read back: the table as written (typed by its schema) is what is shown
            all_rows.extend(read_table(path).to_dict("records"))
    if all_rows:
        print_run_tables(all_rows, len(matrix.cells), console)
    if tables:
        where = tables[0] if len(tables) == 1 else root / "results"
        console.print(
            f"results: {where}{' (+ .csv)' if len(tables) == 1 else ''}; "
            f"`forgetbench results --output-dir {root}` prints, filters and exports "
            "them",
            highlight=False,
            soft_wrap=True,
        )
    failed = [(stage, o) for stage, o in outcomes.items() if o.status == "failed"]
    if failed:
        stage, outcome = failed[0]
        error = " ".join(outcome.error.split())
        more = f" (and {len(failed) - 1} more stage(s) failed)" if len(failed) > 1 else ""
        skipped = _count(outcomes, "skipped")
        after = f"; {skipped} stage(s) depending on it were skipped" if skipped else ""
        failure = ForgetbenchError(
            f"stage '{stage.label}' failed: {error}{more}{after}. "
            "Fix it and re-run the same command: finished stages are "
            "re-used"
        )
        failure.exit_code = outcome.exit_code or 1
        raise failure
    return tables


__all__ = ["run_matrix", "run_stages"]
