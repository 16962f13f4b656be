"""The ``forgetbench leaderboard {build,check,add}`` and ``forgetbench submit`` commands: their
arguments and what they run (``forgetbench.cli`` only wires them in)."""

from __future__ import annotations

import sys
from pathlib import Path

from forgetbench.leaderboard import rank


def add_parsers(commands) -> None:
    submit = commands.add_parser(
        "submit",
        help="pack one method's runs as a leaderboard submission bundle",
        description="Pack a method's current results rows, resolved configs, stage metadata, "
        "generations and verdicts (gzip), a method.yaml to fill in, and a SHA-256 manifest into "
        "one .tar.gz (leaderboard/SUBMITTING.md).",
    )
    submit.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        metavar="RUNS",
        help="the output folder of `forgetbench matrix`",
    )
    submit.add_argument(
        "--out", type=Path, required=True, metavar="BUNDLE", help="the bundle to write (.tar.gz)"
    )
    submit.add_argument("--method", default=None, help="which method (when RUNS holds several)")
    submit.add_argument(
        "--method-yaml",
        type=Path,
        default=None,
        metavar="FILE",
        help="your filled-in method.yaml (default: a template from the run)",
    )

    board = commands.add_parser(
        "leaderboard", help="build the leaderboard; check and add submissions"
    )
    verbs = board.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser("build", help="ranked tables, plots and a static site from raw rows")
    build.add_argument(
        "--results",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a run's output folder (repeatable)",
    )
    build.add_argument(
        "--submissions",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder of accepted bundles (*.tar.gz)",
    )
    build.add_argument("--out", type=Path, required=True, metavar="DIR")
    for parser in (build,):
        parser.add_argument(
            "--resamples",
            type=int,
            default=rank.RESAMPLES,
            help=f"bootstrap resamples (default {rank.RESAMPLES})",
        )
    check = verbs.add_parser("check", help="validate a bundle: exit 0, or 2 and the first problem")
    check.add_argument("bundle", type=Path)
    check.add_argument(
        "--leaderboard",
        type=Path,
        default=Path("leaderboard"),
        help="the leaderboard folder whose site/tracks.json lists the tracks "
        "(default: ./leaderboard); --any-track skips the match",
    )
    check.add_argument(
        "--any-track",
        action="store_true",
        help="check everything but the match with a published track",
    )
    add = verbs.add_parser("add", help="check a bundle, store it under submissions/, rebuild")
    add.add_argument("bundle", type=Path)
    add.add_argument("--leaderboard", type=Path, default=Path("leaderboard"))
    for parser in (build, check, add):
        parser.add_argument(
            "--min-seeds",
            type=int,
            default=None,
            help=f"seeds a method needs (default {rank.MIN_SEEDS})",
        )


def cmd_submit(args, console) -> None:
    from forgetbench.leaderboard.submit import pack

    path = pack(args.output_dir, args.out, args.method, args.method_yaml)
    todo = (
        ""
        if args.method_yaml
        else (
            "; fill in its method.yaml's TODOs and pack again with "
            "--method-yaml (leaderboard/SUBMITTING.md)"
        )
    )
    print(f"bundle -> {path}{todo}", file=sys.stderr)


def cmd_leaderboard(args, console) -> None:
    from forgetbench.leaderboard import submit
    from forgetbench.leaderboard.build import build

    min_seeds = args.min_seeds
    if args.verb == "build":
        summary = build(
            args.results,
            args.submissions,
            args.out,
            resamples=args.resamples,
            min_seeds=min_seeds if min_seeds is not None else rank.MIN_SEEDS,
        )
        for track, board in summary.items():
            sys.stdout.write((args.out / track / "leaderboard.md").read_text())
            for note in board.notes:
                print(f"note: {note}", file=sys.stderr)
        print(f"board -> {args.out.resolve() / 'index.html'}", file=sys.stderr)
    elif args.verb == "check":
        tracks = (
            None if args.any_track else submit.published_tracks(args.leaderboard.resolve() / "site")
        )
        info = submit.check(
            args.bundle, tracks, min_seeds if min_seeds is not None else rank.MIN_SEEDS
        )
        print(
            f"bundle {args.bundle}: accepted ({info['method']}, track {info['track']}, "
            f"seeds {info['seeds']}, attacks {', '.join(info['attacks'])})"
        )
    else:
        target = submit.add(args.bundle, args.leaderboard.resolve(), min_seeds)
        print(f"added {target}; board rebuilt under {args.leaderboard / 'site'}")
