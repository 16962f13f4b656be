"""``forgetbench`` command line: run one cell or a matrix, show results, list plugins."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forgetbench.errors import ForgetbenchError


def _executor_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("executor")
    group.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="local: one process per stage here (default); ray: each stage a Ray task",
    )
    group.add_argument(
        "--jobs", type=int, default=None, metavar="N", help="local: stages run at once (default 1)"
    )
    group.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="ray: an existing cluster (auto, host:port, ray://host:10001); "
        "default $RAY_ADDRESS, else a local cluster",
    )
    group.add_argument(
        "--ray-num-cpus",
        type=int,
        default=None,
        metavar="N",
        help="ray: CPUs of the local cluster it starts (default: all)",
    )
    group.add_argument(
        "--ray-num-gpus",
        type=int,
        default=None,
        metavar="N",
        help="ray: GPUs of the local cluster it starts (default: detected)",
    )
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forgetbench", description="How much alignment survives downstream fine-tuning?"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    executor = _executor_options()

    run = commands.add_parser(
        "run",
        parents=[executor],
        help="train a method, attack it, score before and after (one cell)",
    )
    run.add_argument("--method", default="frpo", help="method plugin (default: frpo)")
    run.add_argument("--attack", default="alpaca", help="attack plugin (default: alpaca)")
    run.add_argument(
        "--preset", default="tiny", help="smoke | tiny | paper, or a YAML path (default: tiny)"
    )
    run.add_argument("--seed", type=int, default=None, help="overrides the preset's seed")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, repeatable",
    )
    run.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where stages and results go (default: $FORGETBENCH_OUTPUT or ./runs)",
    )
    run.add_argument(
        "--print-config",
        "--dry-run",
        dest="print_config",
        action="store_true",
        help="print the resolved config and the stage plan, run nothing",
    )

    matrix = commands.add_parser(
        "matrix",
        parents=[executor],
        help="every method x attack x seed, sharing stages",
        description="Run methods x attacks x seeds as one stage graph: the warm-up, each (method, "
        "seed) policy and its before-attack scores are computed once and shared. Re-running the "
        "same command resumes. Lists on the command line replace a matrix file's.",
    )
    matrix.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="a matrix YAML file (keys: preset, "
        "methods, attacks, seeds, set, output_dir, executor)",
    )
    matrix.add_argument("--methods", default=None, help="comma-separated method plugins")
    matrix.add_argument("--attacks", default=None, help="comma-separated attack plugins")
    matrix.add_argument(
        "--seeds", default=None, help="comma-separated integer seeds (default: the preset's seed)"
    )
    matrix.add_argument(
        "--preset",
        default=None,
        help="smoke | tiny | paper, or a YAML path (default: the file's, else tiny)",
    )
    matrix.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field in every cell, repeatable",
    )
    matrix.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where stages and results go (default: the file's output_dir, "
        "$FORGETBENCH_OUTPUT or ./runs)",
    )
    matrix.add_argument(
        "--dry-run",
        action="store_true",
        help="print the stage plan, marking stages already done; run nothing",
    )

    results = commands.add_parser("results", help="print, filter and export the results table")
    results.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="the run's output folder (default: $FORGETBENCH_OUTPUT or ./runs)",
    )
    results.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="COLUMN=VALUE[,VALUE]",
        help="keep matching rows, repeatable (all must match; a comma means any of)",
    )
    results.add_argument(
        "--format",
        choices=("table", "csv", "parquet", "markdown"),
        default=None,
        help="table (default on screen), csv, parquet (needs --out), markdown; "
        "default for --out: from its suffix",
    )
    results.add_argument("--out", type=Path, default=None, help="write to this file")
    results.add_argument(
        "--columns",
        default=None,
        help="comma-separated columns, or `all` "
        "(default: a summary on screen and in markdown, all in csv/parquet)",
    )
    results.add_argument(
        "--all",
        dest="all_rows",
        action="store_true",
        help="also the stale rows of cells re-run since with another config",
    )

    lmeval = commands.add_parser(
        "lmeval",
        help="run lm-evaluation-harness tasks on a policy (lm-eval's own API)",
        description="Evaluate a policy with lm-eval (pip install 'forgetbench[lmeval]'): metric "
        "rows with n, stderr and a 95% bootstrap CI. See forgetbench/lmeval_bridge.py.",
    )
    lmeval.add_argument(
        "--model",
        required=True,
        help="embedded model name, model folder, LoRA "
        "adapter folder, or a stage folder holding model/",
    )
    lmeval.add_argument(
        "--task",
        dest="tasks",
        action="append",
        required=True,
        metavar="NAME_OR_YAML",
        help="a task YAML, a name in tasks/lmeval/ "
        "(e.g. gsm8k_local), or an lm-eval task name; repeatable",
    )
    lmeval.add_argument(
        "--limit", type=_limit, default=None, help="documents per task (below 1: a fraction)"
    )
    lmeval.add_argument("--num-fewshot", type=int, default=None)
    lmeval.add_argument("--batch-size", type=int, default=8)
    lmeval.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    lmeval.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    lmeval.add_argument(
        "--apply-chat-template",
        action="store_true",
        help="render prompts with the model's chat template",
    )
    lmeval.add_argument(
        "--gen-kwargs",
        default=None,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="generation settings for generate_until tasks, e.g. max_gen_toks=64",
    )
    lmeval.add_argument(
        "--out", type=Path, default=None, help="write every column to FILE (.csv, .parquet or .md)"
    )

    from forgetbench.leaderboard.commands import add_parsers

    add_parsers(commands)  # `submit` and `leaderboard build|check|add`

    listing = commands.add_parser("list", help="list plugins with a one-line description")
    listing.add_argument("kind", nargs="?", help="method, attack, eval, judge, reward, backend")
    return parser


def _output_dir(value: Path | None) -> Path:
    from forgetbench import environment

    return (value or environment.output_dir()).resolve()


def _executor_values(args) -> dict:
    values = {
        "name": args.executor,
        "jobs": args.jobs,
        "address": args.ray_address,
        "num_cpus": args.ray_num_cpus,
        "num_gpus": args.ray_num_gpus,
    }
    return {key: value for key, value in values.items() if value is not None}


def print_plan(matrix, root: Path, console) -> None:
    from forgetbench.planner import summary

    console.print(summary(matrix, root), highlight=False)
    for stage in matrix.stages:
        done = "[green]done[/]" if stage.is_done(root) else "todo"
        folder = stage.folder(root)
        shown = folder.relative_to(root) if folder.is_relative_to(root) else folder
        console.print(f"{done}  {matrix.name(stage):48s} {shown}", highlight=False, soft_wrap=True)


def _execute(matrix, root: Path, console) -> None:
    from forgetbench.executors import make_executor
    from forgetbench.runner import run_matrix
    from forgetbench.stages.store import check_layout

    check_layout(root)
    _check_code_sandbox(matrix, root)
    _check_devices(matrix)
    run_matrix(matrix, root, make_executor(matrix.spec.executor), console)


def _check_devices(matrix) -> None:
    """Precision, tensor-parallel size and vLLM settings against this machine's devices, before
    the first stage (local executor only: a Ray cluster's workers have their own devices, and
    each stage checks again where it runs)."""
    if matrix.spec.executor.name != "local":
        return
    from forgetbench.devices import check_resolved

    for planned in matrix.cells:
        check_resolved(planned.cell.resolved)


def _check_code_sandbox(matrix, root: Path) -> None:
    """Refuse before training, not at the first code_exec judge stage an hour later, when this
    machine cannot run its programs in the kernel sandbox (local executor only: a Ray cluster's
    workers are other machines)."""
    if matrix.spec.executor.name != "local":
        return
    for stage in matrix.stages:
        judge = stage.config.get("judge", {}) if stage.kind == "judge" else {}
        if (
            judge.get("name") == "code_exec"
            and not stage.is_done(root)
            and judge.get("config", {}).get("isolation", "namespaces") == "namespaces"
        ):
            from forgetbench.sandbox import check_isolation

            check_isolation()
            return


def cmd_run(args, console) -> None:
    import json

    from forgetbench.matrix import make_spec
    from forgetbench.planner import plan_matrix
    from forgetbench.stages.store import check_layout

    spec = make_spec(
        methods=[args.method],
        attacks=[args.attack],
        seeds=None if args.seed is None else [args.seed],
        preset=args.preset,
        overrides=tuple(args.overrides),
        executor=_executor_values(args),
    )
    matrix = plan_matrix(spec)
    cell = matrix.cells[0].cell
    root = _output_dir(args.output_dir)
    check_layout(root)
    if args.print_config:
        from forgetbench.resource_plan import estimate_stages, format_plan

        console.print_json(json.dumps(cell.resolved))
        print_plan(matrix, root, console)
        console.print(format_plan(estimate_stages(matrix)), highlight=False, soft_wrap=True)
        return
    console.print(
        f"forgetbench run: method={args.method} attack={args.attack} preset="
        f"{args.preset} seed={cell.resolved['seed']} config={cell.config_hash} -> {root}",
        highlight=False,
    )
    _execute(matrix, root, console)


def cmd_matrix(args, console) -> None:
    from forgetbench.matrix import make_spec, parse_names, parse_seeds
    from forgetbench.planner import describe, plan_matrix
    from forgetbench.stages.store import check_layout

    spec = make_spec(
        file=args.file,
        methods=parse_names(args.methods, "methods") if args.methods is not None else None,
        attacks=parse_names(args.attacks, "attacks") if args.attacks is not None else None,
        seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
        preset=args.preset,
        overrides=tuple(args.overrides),
        executor=_executor_values(args),
        output_dir=args.output_dir,
    )
    matrix = plan_matrix(spec)
    root = _output_dir(spec.output_dir)
    check_layout(root)
    console.print(f"forgetbench matrix: {describe(matrix)} -> {root}", highlight=False)
    if args.dry_run:
        print_plan(matrix, root, console)
        return
    _execute(matrix, root, console)


def cmd_results(args, console) -> None:
    from forgetbench.errors import UsageError
    from forgetbench.results import (
        SUFFIXES,
        current,
        export,
        filter_results,
        load_results,
        print_table,
        select_columns,
        with_interval,
    )

    fmt = args.format
    if fmt is None:
        fmt = SUFFIXES.get(args.out.suffix.lower()) if args.out else "table"
        if fmt is None:
            raise UsageError(
                f"--out {args.out}: cannot tell the format from its suffix; pass "
                "--format csv|parquet|markdown"
            )
    if fmt == "table" and args.out:
        raise UsageError(
            "--format table is for the screen; use csv, parquet or markdown with --out"
        )
    root = _output_dir(args.output_dir)
    frame = load_results(root)
    if not args.all_rows:
        frame, note = current(frame)
        if note:
            print(f"forgetbench: {note}", file=sys.stderr)
    frame = filter_results(frame, args.filters)
    summary = fmt in ("table", "markdown") and args.columns is None
    frame = select_columns(
        with_interval(frame) if summary else frame,
        args.columns,
        default_summary=fmt in ("table", "markdown"),
    )
    if fmt != "table":
        text = export(frame, fmt, args.out)
        if text is not None:
            sys.stdout.write(text)
        else:
            print(f"{len(frame)} rows -> {args.out}", file=sys.stderr)
        return
    title = f"{len(frame)} rows from {root / 'results'}"
    print_table(frame, title + (" (95% CI: Wilson for rates)" if summary else ""), console)


def _limit(text: str):
    value = float(text)
    return int(value) if value.is_integer() and value >= 1 else value


def cmd_lmeval(args, console) -> None:
    import pandas as pd
    import yaml

    from forgetbench.errors import UsageError
    from forgetbench.lmeval_bridge import run_lmeval
    from forgetbench.results import SUFFIXES, export

    gen_kwargs = {}
    for item in filter(None, (args.gen_kwargs or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--gen-kwargs {args.gen_kwargs!r}: expected KEY=VALUE[,KEY=VALUE]")
        gen_kwargs[key.strip()] = yaml.safe_load(value)
    fmt = SUFFIXES.get(args.out.suffix.lower()) if args.out else None
    if args.out and fmt is None:
        raise UsageError(f"--out {args.out}: use a .csv, .parquet or .md file")
    rows = run_lmeval(
        args.model,
        args.tasks,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        apply_chat_template=args.apply_chat_template,
        gen_kwargs=gen_kwargs,
    )
    frame = pd.DataFrame(rows)
    shown = [
        c
        for c in (
            "eval",
            "judge",
            "metric",
            "value",
            "ci_low",
            "ci_high",
            "n",
            "stderr",
            "direction",
        )
        if c in frame.columns
    ]
    sys.stdout.write(export(frame[shown], "markdown", None))
    if args.out:
        export(frame, fmt, args.out)
        print(f"{len(frame)} rows -> {args.out}", file=sys.stderr)


def cmd_list(args, console) -> None:
    from rich.table import Table

    from forgetbench import registry
    from forgetbench.errors import UsageError

    kinds = [args.kind] if args.kind else list(registry.KINDS)
    if args.kind and args.kind not in registry.KINDS:
        raise UsageError(
            f"unknown plugin kind {args.kind!r}; kinds are {', '.join(registry.KINDS)}"
        )
    table = Table(show_header=True)
    for column in ("kind", "name", "description"):
        table.add_column(column)
    for kind in kinds:
        for plugin in registry.plugins(kind):
            table.add_row(kind, plugin.name, plugin.description)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from forgetbench.leaderboard.commands import cmd_leaderboard, cmd_submit

    args = _parser().parse_args(argv)
    console = Console(highlight=False, width=max(Console().width, 100), soft_wrap=True)
    try:
        from forgetbench import environment

        environment.check()  # a bad FORGETBENCH_* value is one line here, not a failed stage
        {
            "run": cmd_run,
            "matrix": cmd_matrix,
            "results": cmd_results,
            "lmeval": cmd_lmeval,
            "list": cmd_list,
            "submit": cmd_submit,
            "leaderboard": cmd_leaderboard,
        }[args.command](args, console)
    except ForgetbenchError as error:
        print(f"forgetbench: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("forgetbench: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
