"""The code sandbox on real hazards: each program really runs, and each hazard is contained."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from forgetbench.sandbox import (MARKER_VARIABLE, SandboxError, _pids_cgroup_base,
                                 process_containment, run_python, user_task_count)


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
    return next(line.split("=", 1)[1] for line in output.splitlines()
                if line.startswith("TOKEN="))


PRINT_TOKEN = f"import os\nprint('TOKEN=' + os.environ['{MARKER_VARIABLE}'], flush=True)\n"


def test_a_passing_program_and_its_folder_is_removed():
    result = run_python("import os\nprint(os.getcwd())\nassert sorted([3, 1, 2]) == [1, 2, 3]\n")
    assert result.passed and result.reason is None and result.returncode == 0
    folder = Path(result.output.strip())
    assert folder.name == "work" and "forgetbench-sandbox-" in str(folder)
    assert not folder.exists() and not folder.parent.exists()
    assert 0 < result.duration_s < 10


def test_a_failing_assert_gives_the_exception_as_reason():
    result = run_python("def add(a, b):\n    return a - b\n\nassert add(1, 2) == 3\n")
    assert not result.passed and result.returncode == 1
    assert result.reason == "exit code 1: AssertionError"
    assert 'File "program.py", line 4' in result.output


def test_early_exit_before_the_tests_is_not_a_pass():
    result = run_python("import sys\nsys.exit(0)\nassert False\n")
    assert not result.passed and result.returncode == 0
    assert "before its end" in result.reason
    assert not run_python("import os\nos._exit(0)\n").passed


def test_isolated_interpreter_and_clean_environment(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/nonexistent-forgetbench-path")
    monkeypatch.setenv("FORGETBENCH_SECRET_FOR_TEST", "do-not-leak")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    result = run_python(
        "import os, sys\n"
        "assert sys.flags.isolated == 1 and sys.flags.no_user_site == 1\n"
        "assert '/nonexistent-forgetbench-path' not in sys.path\n"
        "assert 'FORGETBENCH_SECRET_FOR_TEST' not in os.environ\n"
        "assert os.environ['HTTPS_PROXY'] == '' and os.environ['https_proxy'] == ''\n"
        "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n"
        "assert os.path.basename(os.getcwd()) == 'work'\n")
    assert result.passed, result.reason


def test_infinite_loop_is_killed_at_the_timeout():
    result = run_python("while True:\n    pass\n", timeout_s=1.5)
    assert not result.passed
    assert "timed out after 1.5 s" in result.reason or "CPU time limit" in result.reason
    assert result.duration_s < 6


def test_cpu_time_limit_kills_a_busy_loop_before_the_wall_clock():
    result = run_python("while True:\n    pass\n", timeout_s=30, cpu_s=1)
    assert not result.passed and result.returncode < 0
    assert result.reason.startswith("CPU time limit of 1 s exceeded")
    assert result.duration_s < 25


def test_sleeping_program_is_killed_at_the_timeout():
    result = run_python("import time\ntime.sleep(60)\n", timeout_s=1)
    assert not result.passed and result.returncode == -9
    assert result.reason.startswith("timed out after 1 s")
    assert result.duration_s < 5


def test_memory_hog_hits_the_address_space_limit():
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 2**20))\n",
                        memory_mb=256, timeout_s=20)
    assert not result.passed
    assert result.reason == "memory limit of 256 MB exceeded (MemoryError)"
    assert result.duration_s < 15


def test_file_size_limit():
    result = run_python("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (8 * 2**20))\n",
                        file_size_mb=1)
    assert not result.passed and "file size limit of 1 MB exceeded" in result.reason


def test_writes_inside_the_folder_are_allowed():
    result = run_python(
        "import os, pathlib, shutil, tempfile\n"
        "open('a.txt', 'w').write('x')\n"
        "pathlib.Path('d/e').mkdir(parents=True)\n"
        "pathlib.Path('d/e/f.txt').write_text('y')\n"
        "os.replace('a.txt', 'd/a.txt')\n"
        "with tempfile.NamedTemporaryFile('w') as t:\n    t.write('z')\n"
        "shutil.rmtree('d')\n"
        "print('x', file=open(os.devnull, 'w'))\n")
    assert result.passed, result.reason


@pytest.mark.parametrize("how", [
    "open(TARGET, 'w').write('escaped')",
    "open(TARGET, 'a').write('escaped')",
    "import pathlib; pathlib.Path(TARGET).write_text('escaped')",
    "import os; os.close(os.open(TARGET, os.O_CREAT | os.O_WRONLY))",
    "import io; io.FileIO(TARGET, 'w').write(b'escaped')",
    "import os; os.symlink(TARGET, 'link'); open('link', 'w').write('escaped')",
    "import os; os.chdir('/tmp'); open(os.path.basename(TARGET), 'w').write('escaped')",
])
def test_writes_outside_the_folder_are_blocked(how, tmp_path):
    for target in (tmp_path / "outside.txt", Path(f"/tmp/forgetbench-outside-{uuid.uuid4().hex}")):
        if "chdir('/tmp')" in how and target.parent != Path("/tmp"):
            continue
        result = run_python(f"TARGET = {str(target)!r}\n{how}\n")
        assert not result.passed
        assert result.reason.startswith("blocked by the sandbox") and "outside" in result.reason
        assert not target.exists()


def test_removing_or_renaming_files_outside_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for how in ("import os; os.remove(V)", "import os; os.rename(V, 'stolen')",
                "import shutil; shutil.rmtree(os.path.dirname(V))",
                "import os; os.chmod(V, 0)"):
        result = run_python(f"import os\nV = {str(victim)!r}\n{how}\n")
        assert not result.passed and "outside" in result.reason, how
        assert victim.read_text() == "precious"


@pytest.mark.parametrize("how", [
    "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
    "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)",
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9', timeout=1)",
    "import _socket; _socket.socket()",
])
def test_network_is_blocked(how):
    result = run_python(how + "\n")
    assert not result.passed
    assert "network access is not allowed" in result.reason


def test_starting_processes_is_refused_by_default():
    for how in ("import os; os.fork()", "import subprocess; subprocess.run(['true'])",
                "import os; os.system('true')", "import os; os.kill(1, 0)",
                "import multiprocessing as m; p = m.Process(target=print); p.start()"):
        result = run_python(how + "\n")
        assert not result.passed and "is not allowed" in result.reason, (how, result.reason)
    raising = run_python("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert "changing resource limits is not allowed" in raising.reason


def needs_process_limit():
    if process_containment() == "none":
        pytest.skip("running as root without a writable pids cgroup: no kernel limit on the "
                    "number of processes here (RLIMIT_NPROC does not apply to root)")


def test_process_count_is_bounded_by_the_kernel():
    """With the Python guard off, forking stops at the limit (pids cgroup or RLIMIT_NPROC)."""
    needs_process_limit()
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
        "print('CHILDREN', children, flush=True)\n")
    result = run_python(program, max_processes=8, block_processes=False, timeout_s=20)
    children = int(result.output.split("CHILDREN")[1].split()[0])
    assert "FORK_FAILED 11" in result.output  # EAGAIN at the limit
    assert 0 < children < 8
    assert result.duration_s < 10  # the sleeping children did not keep it waiting
    assert marked_processes(token_of(result.output)) == []  # and were killed afterwards


def test_fork_bomb_is_contained_and_cleaned_up():
    needs_process_limit()
    program = PRINT_TOKEN + ("while True:\n"
                             "    try:\n"
                             "        os.fork()\n"
                             "    except OSError:\n"
                             "        pass\n")
    result = run_python(program, max_processes=12, block_processes=False, timeout_s=2)
    assert not result.passed and result.reason.startswith("timed out after 2 s")
    assert marked_processes(token_of(result.output)) == []  # nothing of the bomb is left
    if process_containment() == "cgroup":
        assert list(_pids_cgroup_base().glob("forgetbench-sandbox-*")) == []


def test_background_children_are_killed_when_the_program_ends():
    needs_process_limit()
    program = PRINT_TOKEN + ("if os.fork() == 0:\n"
                             "    os.setsid()\n"  # leaves the process group
                             "    import time; time.sleep(60)\n")
    result = run_python(program, block_processes=False)
    assert result.passed, result.reason
    assert marked_processes(token_of(result.output)) == []


def test_a_missing_interpreter_is_a_sandbox_error():
    with pytest.raises(SandboxError, match="cannot start the sandbox interpreter"):
        run_python("pass", python="/nonexistent/python3")


def test_threads_run_sandboxes_concurrently():
    from concurrent.futures import ThreadPoolExecutor

    programs = [f"assert {i} + 1 == {i + 1}\n" for i in range(6)] + ["assert False\n"]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run_python, programs))
    assert [r.passed for r in results] == [True] * 6 + [False]


def test_runs_with_the_current_interpreter_and_counts_tasks():
    result = run_python(f"import sys\nassert sys.version_info[:2] == {tuple(sys.version_info[:2])}\n")
    assert result.passed, result.reason
    assert user_task_count() >= 1  # this test process at least
