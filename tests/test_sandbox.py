"""The code sandbox on real hazards: each program really runs, and each hazard is contained."""

from __future__ import annotations

import functools
import os
import sys
import uuid
from pathlib import Path

import pytest
from conftest import needs_namespaces

from forgetbench.sandbox import (
    ISOLATIONS,
    MARKER_VARIABLE,
    IsolationUnavailable,
    SandboxError,
    _pids_cgroup_base,
    check_isolation,
    process_containment,
    run_python,
    user_task_count,
)


@pytest.fixture(params=ISOLATIONS)
def sandbox(request):
    """run_python under each isolation: the kernel walls (default) and the Python walls alone."""
    if request.param == "namespaces":
        needs_namespaces()
    runner = functools.partial(run_python, isolation=request.param)
    runner.isolation = request.param
    return runner


def marked_processes(token: str) -> list[int]:
    """Live processes started with this run's marker in their environment."""
    needle = f"{MARKER_VARIABLE}={token}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def token_of(output: str) -> str:
    return next(line.split("=", 1)[1] for line in output.splitlines() if line.startswith("TOKEN="))


PRINT_TOKEN = f"import os\nprint('TOKEN=' + os.environ['{MARKER_VARIABLE}'], flush=True)\n"


def test_a_passing_program_and_its_folder_is_removed(sandbox):
    result = sandbox("import os\nprint(os.getcwd())\nassert sorted([3, 1, 2]) == [1, 2, 3]\n")
    assert result.passed and result.reason is None and result.returncode == 0
    folder = Path(result.output.strip())
    assert folder.name == "work" and "forgetbench-sandbox-" in str(folder)
    assert not folder.exists() and not folder.parent.exists()
    assert 0 < result.duration_s < 10


def test_a_failing_assert_gives_the_exception_as_reason(sandbox):
    result = sandbox("def add(a, b):\n    return a - b\n\nassert add(1, 2) == 3\n")
    assert not result.passed and result.returncode == 1
    assert result.reason == "exit code 1: AssertionError"
    assert 'File "program.py", line 4' in result.output


def test_early_exit_before_the_tests_is_not_a_pass(sandbox):
    result = sandbox("import sys\nsys.exit(0)\nassert False\n")
    assert not result.passed and result.returncode == 0
    assert "before its end" in result.reason
    assert not sandbox("import os\nos._exit(0)\n").passed


def test_isolated_interpreter_and_clean_environment(monkeypatch, sandbox):
    monkeypatch.setenv("PYTHONPATH", "/nonexistent-forgetbench-path")
    monkeypatch.setenv("FORGETBENCH_SECRET_FOR_TEST", "do-not-leak")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    result = sandbox(
        "import os, sys\n"
        "assert sys.flags.isolated == 1 and sys.flags.no_user_site == 1\n"
        "assert '/nonexistent-forgetbench-path' not in sys.path\n"
        "assert 'FORGETBENCH_SECRET_FOR_TEST' not in os.environ\n"
        "assert os.environ['HTTPS_PROXY'] == '' and os.environ['https_proxy'] == ''\n"
        "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n"
        "assert os.path.basename(os.getcwd()) == 'work'\n"
    )
    assert result.passed, result.reason


def test_infinite_loop_is_killed_at_the_timeout(sandbox):
    result = sandbox("while True:\n    pass\n", timeout_s=1.5)
    assert not result.passed
    assert "timed out after 1.5 s" in result.reason or "CPU time limit" in result.reason
    assert result.duration_s < 6


def test_cpu_time_limit_kills_a_busy_loop_before_the_wall_clock(sandbox):
    result = sandbox("while True:\n    pass\n", timeout_s=30, cpu_s=1)
    assert not result.passed and result.returncode < 0
    assert result.reason.startswith("CPU time limit of 1 s exceeded")
    assert result.duration_s < 25


def test_sleeping_program_is_killed_at_the_timeout(sandbox):
    result = sandbox("import time\ntime.sleep(60)\n", timeout_s=1)
    assert not result.passed and result.returncode == -9
    assert result.reason.startswith("timed out after 1 s")
    assert result.duration_s < 5


def test_memory_hog_hits_the_address_space_limit(sandbox):
    result = sandbox(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 2**20))\n",
        memory_mb=256,
        timeout_s=20,
    )
    assert not result.passed
    assert result.reason == "memory limit of 256 MB exceeded (MemoryError)"
    assert result.duration_s < 15


def test_file_size_limit(sandbox):
    result = sandbox(
        "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (8 * 2**20))\n", file_size_mb=1
    )
    assert not result.passed and "file size limit of 1 MB exceeded" in result.reason


def test_writes_inside_the_folder_are_allowed(sandbox):
    result = sandbox(
        "import os, pathlib, shutil, tempfile\n"
        "open('a.txt', 'w').write('x')\n"
        "pathlib.Path('d/e').mkdir(parents=True)\n"
        "pathlib.Path('d/e/f.txt').write_text('y')\n"
        "os.replace('a.txt', 'd/a.txt')\n"
        "with tempfile.NamedTemporaryFile('w') as t:\n    t.write('z')\n"
        "shutil.rmtree('d')\n"
        "print('x', file=open(os.devnull, 'w'))\n"
    )
    assert result.passed, result.reason


@pytest.mark.parametrize(
    "how",
    [
        "open(TARGET, 'w').write('escaped')",
        "open(TARGET, 'a').write('escaped')",
        "import pathlib; pathlib.Path(TARGET).write_text('escaped')",
        "import os; os.close(os.open(TARGET, os.O_CREAT | os.O_WRONLY))",
        "import io; io.FileIO(TARGET, 'w').write(b'escaped')",
        "import os; os.symlink(TARGET, 'link'); open('link', 'w').write('escaped')",
        "import os; os.chdir('/tmp'); open(os.path.basename(TARGET), 'w').write('escaped')",
    ],
)
def test_writes_outside_the_folder_are_blocked(how, tmp_path, sandbox):
    for target in (tmp_path / "outside.txt", Path(f"/tmp/forgetbench-outside-{uuid.uuid4().hex}")):
        if "chdir('/tmp')" in how and target.parent != Path("/tmp"):
            continue
        result = sandbox(f"TARGET = {str(target)!r}\n{how}\n")
        assert not result.passed
        assert result.reason.startswith("blocked by the sandbox") and "outside" in result.reason
        assert not target.exists()


def test_removing_or_renaming_files_outside_is_blocked(tmp_path, sandbox):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for how in (
        "import os; os.remove(V)",
        "import os; os.rename(V, 'stolen')",
        "import shutil; shutil.rmtree(os.path.dirname(V))",
        "import os; os.chmod(V, 0)",
    ):
        result = sandbox(f"import os\nV = {str(victim)!r}\n{how}\n")
        # in the namespaces the kernel wall can come first: the folder is not there at all
        absent = sandbox.isolation == "namespaces" and "No such file or directory" in result.reason
        assert not result.passed and ("outside" in result.reason or absent), how
        assert victim.read_text() == "precious"


@pytest.mark.parametrize(
    "how",
    [
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
        "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9', timeout=1)",
        "import _socket; _socket.socket()",
    ],
)
def test_network_is_blocked(how, sandbox):
    result = sandbox(how + "\n")
    assert not result.passed
    assert "network access is not allowed" in result.reason


def test_starting_processes_is_refused_by_default(sandbox):
    for how in (
        "import os; os.fork()",
        "import subprocess; subprocess.run(['true'])",
        "import os; os.system('true')",
        "import os; os.kill(1, 0)",
        "import multiprocessing as m; p = m.Process(target=print); p.start()",
    ):
        result = sandbox(how + "\n")
        assert not result.passed and "is not allowed" in result.reason, (how, result.reason)
    raising = sandbox("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert "changing resource limits is not allowed" in raising.reason


def needs_process_limit(isolation):
    if process_containment(isolation) == "none":
        pytest.skip(
            "running as root without a writable pids cgroup: no kernel limit on the "
            "number of processes here (RLIMIT_NPROC does not apply to root)"
        )


def test_process_count_is_bounded_by_the_kernel(sandbox):
    """With the Python guard off, forking stops at the limit (pids cgroup or RLIMIT_NPROC)."""
    needs_process_limit(sandbox.isolation)
    program = PRINT_TOKEN + (
        "import time\n"
        "children = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as error:\n"
        "        print('FORK_FAILED', error.errno, flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    children += 1\n"
        "print('CHILDREN', children, flush=True)\n"
    )
    result = sandbox(program, max_processes=8, block_processes=False, timeout_s=20)
    children = int(result.output.split("CHILDREN")[1].split()[0])
    assert "FORK_FAILED 11" in result.output  # EAGAIN at the limit
    assert 0 < children < 8
    assert result.duration_s < 10  # the sleeping children did not keep it waiting
    assert marked_processes(token_of(result.output)) == []  # and were killed afterwards


def test_fork_bomb_is_contained_and_cleaned_up(sandbox, monkeypatch):
    import forgetbench.sandbox as sandbox_module

    needs_process_limit(sandbox.isolation)
    # This run's own pids cgroup (not a glob of all of them: another test process may have one
    # of its own open at the same moment).
    made, make = [], sandbox_module._make_cgroup
    monkeypatch.setattr(sandbox_module, "_make_cgroup", lambda n: made.append(make(n)) or made[-1])
    program = PRINT_TOKEN + (
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = sandbox(program, max_processes=12, block_processes=False, timeout_s=2)
    assert not result.passed and result.reason.startswith("timed out after 2 s")
    assert marked_processes(token_of(result.output)) == []  # nothing of the bomb is left
    if process_containment(sandbox.isolation) == "cgroup":
        assert len(made) == 1 and made[0] is not None and made[0].parent == _pids_cgroup_base()
        assert not made[0].exists()


def test_background_children_are_killed_when_the_program_ends(sandbox):
    needs_process_limit(sandbox.isolation)
    program = PRINT_TOKEN + (
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # leaves the process group
        "    import time; time.sleep(60)\n"
    )
    result = sandbox(program, block_processes=False)
    assert result.passed, result.reason
    assert marked_processes(token_of(result.output)) == []


def test_a_missing_interpreter_is_a_sandbox_error(sandbox):
    with pytest.raises(SandboxError, match="cannot start the sandbox interpreter"):
        sandbox("pass", python="/nonexistent/python3")


def test_threads_run_sandboxes_concurrently(sandbox):
    from concurrent.futures import ThreadPoolExecutor

    programs = [f"assert {i} + 1 == {i + 1}\n" for i in range(6)] + ["assert False\n"]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(sandbox, programs))
    assert [r.passed for r in results] == [True] * 6 + [False]


def test_runs_with_the_current_interpreter_and_counts_tasks(sandbox):
    result = sandbox(f"import sys\nassert sys.version_info[:2] == {tuple(sys.version_info[:2])}\n")
    assert result.passed, result.reason
    assert user_task_count() >= 1  # this test process at least


# ---- a determined program: libc through ctypes, past every Python guard ------------------------
# Each of these runs once with the kernel walls (must hold) and once with the Python walls alone
# (where the same program gets through: the test can tell a hole from a wall).

LIBC = "import ctypes, os, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def test_ctypes_cannot_write_outside_its_folder(tmp_path, namespaces):
    targets = [
        tmp_path / "escaped.txt",
        Path(f"/tmp/forgetbench-escaped-{uuid.uuid4().hex}"),
        Path(sys.prefix) / f"forgetbench-escaped-{uuid.uuid4().hex}",
    ]
    program = LIBC + (
        "for path in TARGETS + ['inside.txt']:\n"
        "    fd = libc.open(path.encode(), os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "    written = libc.write(fd, b'escaped', 7) if fd >= 0 else -1\n"
        "    print('OPEN', path, fd, written, ctypes.get_errno(), flush=True)\n"
        "assert os.path.exists('inside.txt')\n"
    )  # the same call works in its own folder
    program = f"TARGETS = {[str(t) for t in targets]!r}\n" + program
    try:
        result = run_python(program)
        assert result.passed, result.reason
        assert not any(target.exists() for target in targets)
        opened = [line.split() for line in result.output.splitlines() if line.startswith("OPEN /")]
        assert len(opened) == 3 and all(fields[2:4] == ["-1", "-1"] for fields in opened)
        weak = run_python(program, isolation="python-guards")
        assert weak.passed and targets[0].read_text() == "escaped"  # the hole the walls close
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


def test_ctypes_cannot_connect_to_a_local_listening_socket(namespaces):
    import socket
    import threading

    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    abstract = f"forgetbench-test-{uuid.uuid4().hex}"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind("\0" + abstract)  # an abstract Unix socket: no file, only the network namespace
    unix.listen(8)
    accepted = []

    def accept(server):
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except (socket.timeout, OSError):
                continue

    stop = threading.Event()
    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in (tcp, unix)]
    for thread in threads:
        thread.start()
    program = LIBC + (
        f"port, name = {tcp.getsockname()[1]}, {abstract!r}\n"
        "s = libc.socket(2, 1, 0)\n"  # AF_INET, SOCK_STREAM
        "addr = struct.pack('=H', 2) + struct.pack('!H', port) + bytes([127, 0, 0, 1]) + bytes(8)\n"
        "print('TCP', s, libc.connect(s, addr, len(addr)), ctypes.get_errno(), flush=True)\n"
        "u = libc.socket(1, 1, 0)\n"  # AF_UNIX
        "addr = struct.pack('=H', 1) + b'\\0' + name.encode()\n"
        "print('UNIX', u, libc.connect(u, addr, len(addr)), ctypes.get_errno(), flush=True)\n"
    )
    try:
        result = run_python(program)
        assert result.passed, result.reason
        assert "TCP 3 -1" in result.output and "UNIX 4 -1" in result.output, result.output
        assert accepted == []
        weak = run_python(program, isolation="python-guards")
        assert "TCP 3 0" in weak.output and "UNIX 4 0" in weak.output, weak.output
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for connection in [tcp, unix] + accepted:
            connection.close()


SNOOP = (  # what the program did: look for the user's key in every visible environ
    "import os\n"
    "found = []\n"
    "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
    "    try:\n"
    "        if SECRET.encode() in open(f'/proc/{pid}/environ', 'rb').read():\n"
    "            found.append(pid)\n"
    "    except OSError:\n"
    "        pass\n"
    "print('FOUND', found)\n"
    "print('SEEN', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    "print('PARENT', os.path.exists(f'/proc/{PARENT}'))\n"
    "print('MINE', 'FORGETBENCH_FAKE_API_KEY' in os.environ)\n"
)
# The judge as a user starts it: a process whose environment holds an exported API key.
JUDGE = (
    "import os, sys\nfrom forgetbench.sandbox import run_python\n"
    'program = f\'SECRET, PARENT = {os.environ["FORGETBENCH_FAKE_API_KEY"]!r}, '
    "{os.getpid()}\\n' + sys.argv[2]\n"
    "result = run_python(program, isolation=sys.argv[1])\n"
    "print(result.reason)\nprint(result.output)\n"
)


def test_the_program_cannot_see_the_parents_environment_or_pid(namespaces):
    import subprocess

    secret = f"sk-forgetbench-fake-{uuid.uuid4().hex}"
    env = {**os.environ, "FORGETBENCH_FAKE_API_KEY": secret}
    outputs = {}
    for isolation in ISOLATIONS:
        judged = subprocess.run(
            [sys.executable, "-c", JUDGE, isolation, SNOOP],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert judged.returncode == 0, judged.stderr
        outputs[isolation] = judged.stdout
    strong = outputs["namespaces"]
    assert strong.startswith("None\n")  # passed
    assert "FOUND []" in strong and "PARENT False" in strong and "MINE False" in strong
    seen = eval(strong.split("SEEN ")[1].splitlines()[0])
    assert len(seen) <= 3 and min(seen) == 1  # bwrap's init, the program: nothing else
    # the same program with the Python walls alone: the hole the issue found
    weak = outputs["python-guards"]
    assert "PARENT True" in weak and "FOUND []" not in weak and "MINE False" in weak
    assert secret not in weak  # only pids were printed


def test_the_program_cannot_signal_another_process(namespaces):
    import subprocess

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        program = LIBC + (
            f"pid = {sleeper.pid}\n"
            "try:\n"
            "    os.kill(pid, 9)\n"
            "    print('OS_KILL sent', flush=True)\n"
            "except OSError as error:\n"
            "    print('OS_KILL', error.errno, flush=True)\n"
            "print('LIBC_KILL', libc.kill(pid, 9), ctypes.get_errno(), flush=True)\n"
        )
        result = run_python(program, block_processes=False)
        assert result.passed, result.reason
        assert "OS_KILL 3" in result.output and "LIBC_KILL -1 3" in result.output  # ESRCH
        assert sleeper.poll() is None  # still asleep
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_double_forked_child_does_not_outlive_the_wall_clock(namespaces):
    program = PRINT_TOKEN + (
        "import time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        while True:\n"
        "            time.sleep(1)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    result = run_python(program, block_processes=False, timeout_s=2)
    assert not result.passed and result.reason.startswith("timed out after 2 s")
    assert result.duration_s < 6
    assert marked_processes(token_of(result.output)) == []


def test_filling_the_folder_is_a_bounded_failure(namespaces):
    program = (
        "i = 0\n"
        "while True:\n"
        "    with open(f'f{i}.bin', 'wb') as f:\n"
        "        f.write(b'x' * 2**20)\n"
        "    i += 1\n"
    )
    result = run_python(program, folder_mb=8, timeout_s=20)
    assert not result.passed
    assert result.reason.startswith("folder size limit of 8 MB exceeded"), result.reason
    assert result.duration_s < 10


def test_megabytes_of_output_give_a_bounded_reason(sandbox):
    flood = sandbox("while True:\n    print('x' * 1000)\n", timeout_s=20)
    assert (
        not flood.passed and flood.reason == "output limit of 16 MB exceeded (the file size limit)"
    )
    assert len(flood.output) <= 4000
    shout = sandbox("print('y' * 5_000_000)\nraise AssertionError('z' * 5_000_000)\n")
    assert shout.reason.startswith("exit code 1: zzz") and len(shout.reason) < 400
    assert len(shout.output) <= 4000


def test_output_is_sanitised_and_secret_values_redacted(monkeypatch, sandbox):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890abcdef")
    result = sandbox("print('\\x1b[31mred\\x07 \\r tok-1234567890abcdef')\nassert False\n")
    assert "\x1b" not in result.output and "\x07" not in result.output and "\r" not in result.output
    assert "tok-1234567890abcdef" not in result.output
    assert "red  [MY_SERVICE_TOKEN redacted]" in result.output


# ---- bad input: no kernel isolation here -------------------------------------------------------


def test_missing_bwrap_is_a_one_line_error_and_python_guards_still_run(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    with pytest.raises(IsolationUnavailable) as caught:
        run_python("pass")
    message = str(caught.value)
    assert "bubblewrap (`bwrap`) is not installed" in message and "\n" not in message
    assert "apt-get install bubblewrap" in message and "isolation: python-guards" in message
    with pytest.raises(IsolationUnavailable, match="not installed"):
        check_isolation()
    assert run_python("pass", isolation="python-guards").passed


def test_namespaces_refused_by_the_kernel_is_a_one_line_error(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"  # what bwrap says in a container that forbids namespaces
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely "
        "because the kernel does not allow non-privileged user namespaces.' >&2\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    for attempt in (lambda: run_python("pass"), check_isolation):
        with pytest.raises(IsolationUnavailable) as caught:
            attempt()
        message = str(caught.value)
        assert "did not start" in message and "No permissions to creating new namespace" in message
        assert "isolation: python-guards" in message and "\n" not in message
    with pytest.raises(SandboxError, match="unknown sandbox isolation 'docker'"):
        run_python("pass", isolation="docker")
