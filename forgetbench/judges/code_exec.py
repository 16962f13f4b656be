"""The ``code_exec`` judge: pass@1 by running the response's code against the row's tests.

Each response is scored 1 when its code and the row's tests run to the end and exit 0 in the
sandbox (:mod:`forgetbench.sandbox`: kernel namespaces by default -- no network, no other process
visible, a read-only file system but its own size-limited folder, user ``nobody`` -- plus
wall-clock and CPU limits, memory, file-size and process limits and Python-level guards), else 0
with the sandbox's reason (the failing assert, a timeout, a blocked write, ...; a bounded,
sanitised excerpt of the program's output).

``isolation: namespaces`` (the default) needs bubblewrap: where it is missing or cannot create
namespaces, the judge refuses to start with one line naming the fix, unless the config opts in to
``isolation: python-guards`` (the weaker walls only). The judge stage records which one scored
the verdicts (the results table's ``sandbox`` column).

The code is the first ```` ```python ```` (or ```` ```py ````, or unlabelled) fenced block of the
response that defines a function the tests call (HumanEval: the ``entry_point``), else the first
such block, else the whole response as raw text (a completion that continues the prompt). An
unclosed fence (a response cut by ``max_new_tokens``) counts up to the end of the response.

Eval rows give the tests (map them with the eval's ``dataset.fields``):

* ``tests`` (required): a string or a list of strings (MBPP's ``test_list`` asserts), run after
  the code;
* ``test_setup`` (optional): code run between the candidate's code and the tests (MBPP's
  ``test_setup_code``, which builds inputs with the candidate's classes);
* ``code_prefix`` (optional): code the response continues (HumanEval's ``prompt``: imports,
  signature and docstring). A response whose code defines ``entry_point`` itself is run after the
  prefix (the stub is then redefined); otherwise the code is appended to the prefix;
* ``entry_point`` (optional): the function name; ``check(<entry_point>)`` is run after the tests
  (HumanEval's ``test`` defines ``check``).

An empty response is a wrong answer: 0 with the reason ``empty response`` (not missing: the policy
failed the task, and leaving it out would raise the pass rate).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Literal, Optional, Sequence

from forgetbench.config import Field, StrictModel
from forgetbench.errors import ForgetbenchError
from forgetbench.judges import Verdict, check_lengths, is_empty, rows_with
from forgetbench.registry import judge
from forgetbench.sandbox import check_isolation, run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_LABELS = {"python", "python3", "py", ""}
_CALLED = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


def called_names(tests: str) -> set[str]:
    """Names the tests call (``assert f(1) == 2`` -> {"f"}); builtins included, harmlessly."""
    return set(_CALLED.findall(tests))


def defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def extract_code(response: str, wanted: Iterable[str] = ()) -> str:
    """The program text of a response: see the module docstring for the rule."""
    blocks = [body for label, body in _FENCE.findall(response) if label.lower() in _PYTHON_LABELS]
    if not blocks:
        return response
    wanted = list(wanted)
    for block in blocks:
        if any(defines(block, name) for name in wanted):
            return block
    return blocks[0]


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def build_program(response: str, row: dict) -> str:
    """Candidate code + the row's test setup, tests and ``check(entry_point)``."""
    if "tests" not in row:
        raise ForgetbenchError(
            f"code_exec: eval row {row.get('id', '?')!r} has no `tests` field; "
            "map the dataset's test column to `tests` in the eval's "
            "dataset.fields"
        )
    tests = _text(row["tests"])
    entry_point = str(row.get("entry_point") or "").strip()
    wanted = [entry_point] if entry_point else sorted(called_names(tests))
    code = extract_code(response, wanted)
    prefix = _text(row.get("code_prefix"))
    if prefix:
        joiner = "\n\n" if entry_point and defines(code, entry_point) else ""
        code = prefix + joiner + code
    parts = [code, _text(row.get("test_setup")), tests]
    if entry_point:
        parts.append(f"check({entry_point})")
    return "\n\n".join(part for part in parts if part.strip()) + "\n"


class CodeExecConfig(StrictModel):
    """Limits of each sandboxed run (see forgetbench/sandbox.py)."""

    timeout_s: float = Field(
        10.0,
        gt=0,
        description="Wall-clock seconds per program (code + its "
        "tests); the process group is killed after it.",
    )
    cpu_s: Optional[int] = Field(
        None,
        ge=1,
        description="CPU seconds per program (RLIMIT_CPU); None: the timeout rounded up, plus 1.",
    )
    memory_mb: int = Field(
        1024, ge=64, description="Address-space limit per process (RLIMIT_AS), MiB."
    )
    file_size_mb: int = Field(
        16,
        ge=1,
        description="Largest file a program may write "
        "(RLIMIT_FSIZE), MiB; also caps its captured output.",
    )
    max_processes: int = Field(
        16,
        ge=1,
        description="Tasks (threads included) a program may "
        "have at once: a pids cgroup per run, or RLIMIT_NPROC above the "
        "user's current count.",
    )
    block_processes: bool = Field(
        True,
        description="Also refuse, in Python, to start or signal "
        "processes (os.fork, subprocess, os.kill, ...): benchmark "
        "solutions never need to.",
    )
    isolation: Literal["namespaces", "python-guards"] = Field(
        "namespaces",
        description="`namespaces`: each program runs under bubblewrap in its own "
        "network, PID, mount, IPC and UTS namespaces as user nobody (needs `bwrap`; the judge "
        "refuses to start without it). `python-guards`: the Python-level guards and limits "
        "only, which a determined program (ctypes) gets around.",
    )
    folder_mb: int = Field(
        64,
        ge=1,
        description="Size of the program's folder, a tmpfs, MiB "
        "(namespaces only): bounds what a program can write in total.",
    )
    concurrency: int = Field(2, ge=1, description="Programs run at once.")


@judge("code_exec", config=CodeExecConfig)
def code_exec(config: CodeExecConfig):
    """pass@1: runs the response's code against the row's tests in the sandbox (1 = all pass)."""
    if config.isolation == "namespaces":
        check_isolation()  # refuse before any row runs: one line naming the fix

    def run_one(item: tuple[str, dict]) -> Verdict:
        response, row = item
        if is_empty(response):
            return Verdict(0.0, "empty response")
        program = build_program(str(response), row)
        result = run_python(
            program,
            timeout_s=config.timeout_s,
            cpu_s=config.cpu_s,
            memory_mb=config.memory_mb,
            file_size_mb=config.file_size_mb,
            max_processes=config.max_processes,
            block_processes=config.block_processes,
            isolation=config.isolation,
            folder_mb=config.folder_mb,
        )
        if result.passed:
            return Verdict(1.0, f"passed in {result.duration_s:.2f} s")
        return Verdict(0.0, result.reason)

    def score(
        prompts: Sequence[str], responses: Sequence[str], rows: Optional[Sequence[dict]] = None
    ) -> list[Verdict]:
        check_lengths("code_exec", prompts, responses, rows)
        rows = rows_with("code_exec", rows, "tests")  # fail on a bad row before running any
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            return list(pool.map(run_one, zip(responses, rows)))

    score.provenance = {"sandbox": config.isolation}  # the judge stage records it
    return score
