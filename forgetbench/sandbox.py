"""Run untrusted Python (a model's code and its tests) in a contained subprocess.

:func:`run_python` writes the program to a fresh temporary folder, runs it there with
``python -I -B`` (isolated: no ``PYTHON*`` variables, no user site, no script folder on the path)
in a new session, and removes the folder afterwards. It returns a :class:`SandboxResult`: passed,
the reason when not, the duration.

Walls, from the hardest:

* **kernel isolation** (``isolation="namespaces"``, the default): the program runs under
  bubblewrap (``bwrap``, the sandbox Flatpak uses) in its own network namespace (only a loopback
  that is down: no socket reaches anything, not even 127.0.0.1 or an abstract Unix socket of the
  host), its own PID namespace with its own ``/proc`` (no other process of the machine is
  visible, so none can be read or signalled), IPC and UTS namespaces, and a mount namespace that
  holds only ``/usr`` (and the ``/bin``, ``/lib`` links), the Python install, a minimal ``/dev``,
  all read-only, and its folder: a tmpfs of ``folder_mb`` MiB, the only writable place. It runs
  as ``nobody`` (uid/gid 65534, no supplementary groups, no capabilities, ``no_new_privs``;
  when forgetbench itself is not root, a user namespace maps it to the invoking user), with an
  environment built from scratch (nothing of the parent's), and dies with its parent
  (``--die-with-parent``). When ``bwrap`` is missing or cannot create the namespaces (a
  container that forbids them), :func:`run_python` raises :class:`IsolationUnavailable` naming
  the fix; ``isolation="python-guards"`` runs without this wall (the walls below only);
* **wall clock**: the whole process group is killed (SIGKILL) at ``timeout_s``, and so is every
  process the program left behind (its cgroup, or every process carrying its run's marker; with
  namespaces, also the whole PID namespace, which the kernel empties when its first process dies);
* **resource limits** (``resource.setrlimit``, set by the runner before the program starts):
  CPU seconds, address space (memory), size of any file written (its captured output too), open
  files, no core dumps;
* **process count**: where this process may create a child of its ``pids`` cgroup (root on a
  cgroup-v1 host, as here) the run gets its own cgroup with ``pids.max``; otherwise
  ``RLIMIT_NPROC`` set to the program's user's current task count plus ``max_processes``
  (RLIMIT_NPROC counts every task of the user, hence relative; the kernel does not apply it to
  root, which the program is only with ``python-guards`` run by root).
  :func:`process_containment` says which one is in force here;
* **Python guards** installed before the program runs: ``socket`` cannot be created or connected
  (and the proxy variables are empty), files cannot be opened for writing, created, removed,
  renamed or chmod-ed outside the folder (``open``, ``io.open``, ``os.*``, so also ``pathlib`` and
  ``shutil``), and by default no process can be started (``os.fork``/``exec*``/``spawn*``/
  ``system``, ``subprocess``, ``os.kill``), nor can the limits be raised.

The Python guards alone stop mistakes and ordinary model code, not a determined program
(``ctypes`` reaches libc directly, as in HumanEval's ``execution.py``, MBPP's and lm-eval's
``code_eval``): that is what the kernel isolation is for. What the program prints reaches the
result (and a verdict's reason) only as a bounded excerpt (its last 4,000 characters, control
characters removed, the parent's secret-looking environment values redacted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from forgetbench.errors import ForgetbenchError

MARKER_VARIABLE = "FORGETBENCH_SANDBOX"
PROGRAM_FILE = "program.py"
_OUTPUT_TAIL = 4000


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # ran to its end and exited 0
    reason: Optional[str]  # why not (None when passed)
    duration_s: float  # wall clock, start to exit or kill
    returncode: Optional[int]  # negative: killed by that signal
    output: str = ""  # the last characters of stdout + stderr


class SandboxError(ForgetbenchError):
    """The sandbox itself could not run (not the program's fault)."""


# ---- the runner: executed by the sandboxed interpreter before the program ----------------------

_RUNNER = r"""
import builtins, io, json, os, resource, sys
_cfg = json.loads(sys.argv[1])
if _cfg["cgroup"]:
    with open(os.path.join(_cfg["cgroup"], "cgroup.procs"), "w") as _f:
        _f.write(str(os.getpid()))
for _name, (_soft, _hard) in _cfg["limits"].items():
    resource.setrlimit(getattr(resource, _name), (_soft, _hard))
_status = _cfg["status_fd"]  # a pipe to the parent: "started" = the walls are up
os.write(_status, b"started\n")
_ROOT = os.path.realpath(os.getcwd())
_realpath, _join, _fspath, _fsdecode, _readlink = (os.path.realpath, os.path.join, os.fspath,
                                                   os.fsdecode, os.readlink)


def _inside(path, dir_fd=None):
    if isinstance(path, int):
        return True  # an already open descriptor
    path = _fsdecode(_fspath(path))
    if path == os.devnull:
        return True
    base = os.getcwd() if dir_fd is None else _readlink(f"/proc/self/fd/{dir_fd}")
    real = _realpath(_join(base, path))
    return real == _ROOT or real.startswith(_ROOT + os.sep)


def _deny_outside(path):
    raise PermissionError(13, "sandbox: writing outside the sandbox folder is not allowed",
                          _fsdecode(_fspath(path)) if not isinstance(path, int) else path)


_open = builtins.open


def open(file, mode="r", *args, **kwargs):
    if isinstance(mode, str) and any(c in mode for c in "wax+") and not _inside(file):
        _deny_outside(file)
    return _open(file, mode, *args, **kwargs)


builtins.open = io.open = open


class FileIO(io.FileIO):
    def __init__(self, file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax+") and not _inside(file):
            _deny_outside(file)
        super().__init__(file, mode, *args, **kwargs)


io.FileIO = FileIO
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_os_open = os.open


def _guarded_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & _WRITE_FLAGS and not _inside(path, dir_fd):
        _deny_outside(path)
    return _os_open(path, flags, mode, dir_fd=dir_fd)


os.open = _guarded_open


def _guard(function, checked, dir_fd_names):
    def guarded(*args, **kwargs):
        for index, dir_fd_name in zip(checked, dir_fd_names):
            if index < len(args) and not _inside(args[index], kwargs.get(dir_fd_name)):
                _deny_outside(args[index])
        return function(*args, **kwargs)
    return guarded


# name -> positions of the paths it writes, and the keyword giving each one's directory fd
for _name, _checked, _dirs in (
        ("remove", (0,), ("dir_fd",)), ("unlink", (0,), ("dir_fd",)),
        ("rmdir", (0,), ("dir_fd",)), ("mkdir", (0,), ("dir_fd",)),
        ("mkfifo", (0,), ("dir_fd",)), ("mknod", (0,), ("dir_fd",)),
        ("chmod", (0,), ("dir_fd",)), ("lchmod", (0,), ("dir_fd",)),
        ("chown", (0,), ("dir_fd",)), ("lchown", (0,), ("dir_fd",)),
        ("utime", (0,), ("dir_fd",)), ("truncate", (0,), ("dir_fd",)),
        ("setxattr", (0,), ("dir_fd",)), ("removexattr", (0,), ("dir_fd",)),
        ("rename", (0, 1), ("src_dir_fd", "dst_dir_fd")),
        ("replace", (0, 1), ("src_dir_fd", "dst_dir_fd")),
        ("link", (1,), ("dst_dir_fd",)), ("symlink", (1,), ("dir_fd",))):
    if hasattr(os, _name):
        setattr(os, _name, _guard(getattr(os, _name), _checked, _dirs))


def _denied(what):
    def deny(*args, **kwargs):
        raise PermissionError(13, f"sandbox: {what} is not allowed")
    return deny


import socket as _socket_module, _socket
_no_network = _denied("network access")


class _NoSocket(_socket_module.socket):
    def __init__(self, *args, **kwargs):
        _no_network()


_socket_module.socket = _socket.socket = _NoSocket
for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
              "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    for _module in (_socket_module, _socket):
        if hasattr(_module, _name):
            setattr(_module, _name, _no_network)
resource.setrlimit = resource.prlimit = _denied("changing resource limits")
if _cfg["block_processes"]:
    import subprocess, _posixsubprocess
    for _name in ("fork", "forkpty", "vfork", "system", "popen", "kill", "killpg", "execv",
                  "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnl",
                  "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                  "posix_spawn", "posix_spawnp"):
        if hasattr(os, _name):
            setattr(os, _name, _denied(f"os.{_name} (starting or signalling processes)"))
    subprocess.Popen = _denied("subprocess (starting processes)")
    _posixsubprocess.fork_exec = _denied("subprocess (starting processes)")

sys.argv = [_cfg["program"]]
with _open(_cfg["program"], encoding="utf-8") as _f:
    _code = compile(_f.read(), _cfg["program"], "exec")
import types
_main = types.ModuleType("__main__")  # the program's own globals, as if run as a script
_main.__file__ = _cfg["program"]
sys.modules["__main__"] = _main
exec(_code, _main.__dict__)
sys.stdout.flush()
os.write(_status, b"finished")
"""


# ---- process containment -----------------------------------------------------------------------


def _pids_cgroup_base() -> Optional[Path]:
    """The folder of this process's ``pids`` cgroup, when a child cgroup can be made in it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "pids" in controllers.split(","):
            base = Path("/sys/fs/cgroup/pids") / path.lstrip("/")
        elif controllers == "":
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            try:
                if "pids" not in (base / "cgroup.subtree_control").read_text().split():
                    continue
            except OSError:
                continue
        else:
            continue
        if (base / "cgroup.procs").is_file() and os.access(base, os.W_OK):
            return base
    return None


def _make_cgroup(max_processes: int) -> Optional[Path]:
    base = _pids_cgroup_base()
    if base is None:
        return None
    folder = base / f"forgetbench-sandbox-{uuid.uuid4().hex[:12]}"
    try:
        folder.mkdir()
    except OSError:
        return None
    try:
        (folder / "pids.max").write_text(str(max_processes))
        return folder
    except OSError:
        _remove_cgroup(folder)
        return None


def _cgroup_pids(folder: Path) -> list[int]:
    try:
        return [int(p) for p in (folder / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _remove_cgroup(folder: Path) -> None:
    """Kill whatever is left in the cgroup, then remove it."""
    for _ in range(200):
        pids = _cgroup_pids(folder)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    for _ in range(200):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)  # the last processes are still being reaped


def user_task_count(uid: Optional[int] = None) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) of the real user ``uid``."""
    uid = os.getuid() if uid is None else uid
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields.get("Threads", "1").strip())
        except (OSError, KeyError, ValueError):
            continue
    return total


def process_containment(isolation: str = "namespaces") -> str:
    """How the number of processes is bounded here: ``cgroup`` (a pids cgroup per run),
    ``rlimit`` (RLIMIT_NPROC relative to the program's user's tasks; that user is never root
    with namespaces) or ``none`` (python-guards run by root without a writable pids cgroup: only
    the Python guard and the wall-clock kill)."""
    if _pids_cgroup_base() is not None:
        return "cgroup"
    return "rlimit" if isolation == "namespaces" or os.geteuid() != 0 else "none"


def _kill_marked(token: str) -> None:
    """Kill every process started with this run's marker (children that left the group)."""
    needle = f"{MARKER_VARIABLE}={token}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


# ---- kernel isolation (bubblewrap) -------------------------------------------------------------

ISOLATIONS = ("namespaces", "python-guards")
SANDBOX_UID = SANDBOX_GID = 65534  # nobody / nogroup: owns nothing on the machine
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_LOADER_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
_WEAKER = (
    "or set `isolation: python-guards` on the code_exec judge "
    "(--set judges.code_exec.isolation=python-guards) to accept the weaker Python-level "
    "walls, which a determined program gets around"
)


class IsolationUnavailable(SandboxError):
    """Kernel isolation cannot run here (bwrap missing, namespaces forbidden)."""


def _interpreter_folders(python: str) -> list[str]:
    """The folders a Python interpreter needs (its install, and its venv when it is one): the
    prefix above ``bin/`` of the path as given and of its target, plus ``sys``'s own prefixes
    when it is this interpreter. Folders already under the system dirs are left out."""
    folders = {
        os.path.dirname(os.path.dirname(os.path.abspath(python))),
        os.path.dirname(os.path.dirname(os.path.realpath(python))),
    }
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        folders |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}

    def under(folder: str, others) -> bool:
        return any(folder.startswith(other.rstrip("/") + "/") for other in others)

    folders = {
        f for f in folders if f != "/" and f not in _SYSTEM_DIRS and not under(f, _SYSTEM_DIRS)
    }
    return sorted(f for f in folders if not under(f, folders))  # the outermost of nested ones


def _bwrap_command(
    bwrap: str,
    setpriv: Optional[str],
    python: str,
    workdir: Path,
    program: Path,
    cgroup: Optional[Path],
    folder_mb: int,
) -> list[str]:
    """bwrap's arguments: new namespaces, a root with only what Python needs (read-only), the
    program's folder as a size-limited tmpfs, and the switch to ``nobody``."""
    args = [
        bwrap,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--die-with-parent",
        "--new-session",
    ]
    for folder in _SYSTEM_DIRS:
        if os.path.islink(folder):
            args += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    for path in _LOADER_FILES:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    made = {"/", "/proc", "/dev", *_SYSTEM_DIRS}
    binds = [(f, "--ro-bind") for f in _interpreter_folders(python)]
    binds += [(str(workdir), None)] + ([(str(cgroup), "--bind")] if cgroup else [])
    for target, _ in binds:  # bwrap makes missing parents 0700: make them traversable by nobody
        parent = os.path.dirname(target)
        chain = []
        while parent not in made:
            chain.append(parent)
            made.add(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(chain):
            args += ["--perms", "0755", "--dir", folder]
        made.add(target)
    for target, how in binds:
        if how is None:  # the program's folder: writable by it, bounded in size
            args += [
                "--perms",
                "0777",
                "--size",
                str(folder_mb * 2**20),
                "--tmpfs",
                target,
                "--ro-bind",
                str(program),
                os.path.join(target, PROGRAM_FILE),
            ]
        else:
            args += [how, target, target]
    # the root bwrap built (a tmpfs holding the mount points) read-only too: nothing but the
    # folder (and the run's cgroup) is writable, whoever owns the root's directories
    args += ["--remount-ro", "/", "--chdir", str(workdir)]
    if setpriv is None:  # not root: an unprivileged user namespace maps nobody to this user
        return args + [
            "--unshare-user",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_GID),
            "--disable-userns",
            "--",
        ]
    # root: bwrap keeps only what setpriv needs to become nobody, and setpriv drops it all
    return args + [
        "--cap-add",
        "CAP_SETUID",
        "--cap-add",
        "CAP_SETGID",
        "--cap-add",
        "CAP_SETPCAP",
        "--",
        setpriv,
        f"--reuid={SANDBOX_UID}",
        f"--regid={SANDBOX_GID}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def _isolation_tools() -> tuple[str, Optional[str]]:
    """bwrap's path, and setpriv's when running as root; IsolationUnavailable when missing."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise IsolationUnavailable(
            "code sandbox: bubblewrap (`bwrap`) is not installed, so programs cannot run in "
            "kernel namespaces; install it (`apt-get install bubblewrap`, which "
            f"scripts/install.sh does when run as root) {_WEAKER}"
        )
    if os.geteuid() != 0:
        return bwrap, None
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if setpriv is None or not os.path.realpath(setpriv).startswith("/usr/"):
        raise IsolationUnavailable(
            "code sandbox: `setpriv` (util-linux) is not in /usr/bin, so the program cannot be "
            f"switched to an unprivileged user; install util-linux {_WEAKER}"
        )
    return bwrap, setpriv


_CHECKED: dict = {}


def check_isolation(python: Optional[str] = None) -> None:
    """Raise :class:`IsolationUnavailable` (one line naming the fix) unless a program really runs
    in the namespaces here: bwrap installed and allowed to create them. Checked once per
    interpreter and process."""
    python = python or sys.executable
    key = (shutil.which("bwrap"), python)
    if _CHECKED.get(key):
        return
    result = run_python("import os\nassert os.getuid() != 0\n", timeout_s=30, python=python)
    if not result.passed:
        raise IsolationUnavailable(
            f"code sandbox: a trivial program failed in the namespaces ({result.reason}); {_WEAKER}"
        )
    _CHECKED[key] = True


# ---- output ------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps tab and newline
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION", re.I)


def sanitise(text: str) -> str:
    """Text fit for a results file: control characters (terminal escapes) removed, and any value
    of this process's secret-looking environment variables redacted (defence in depth: the
    program never sees them)."""
    text = _CONTROL.sub("", text)
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, f"[{name} redacted]")
    return text


def _tail(path: Path, size: int = _OUTPUT_TAIL) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return sanitise(handle.read().decode("utf-8", "replace"))
    except OSError:
        return ""


# ---- running -----------------------------------------------------------------------------------


def _environment(workdir: str, token: str) -> dict:
    """Built from scratch: no variable of the parent reaches the program."""
    proxies = {
        name: ""
        for name in (
            "http_proxy",
            "https_proxy",
            "ftp_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "FTP_PROXY",
            "ALL_PROXY",
        )
    }
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "no_proxy": "*",
        "NO_PROXY": "*",
        **proxies,
        MARKER_VARIABLE: token,
    }


def _reason(
    returncode: int,
    timed_out: bool,
    finished: bool,
    output: str,
    output_full: bool,
    timeout_s: float,
    cpu_s: int,
    memory_mb: int,
    file_size_mb: int,
    folder_mb: int,
) -> Optional[str]:
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    if timed_out:
        return f"timed out after {timeout_s:g} s (wall clock); the process group was killed"
    if output_full and returncode != 0:  # Python ignores SIGXFSZ: its print fails, then its exit
        return f"output limit of {file_size_mb} MB exceeded (the file size limit)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if name == "SIGXCPU":
            return f"CPU time limit of {cpu_s} s exceeded (SIGXCPU)"
        if name == "SIGKILL":  # RLIMIT_CPU's hard limit (SIGXCPU caught), or the OOM killer
            return f"killed by SIGKILL (CPU time limit of {cpu_s} s, or out of memory)"
        if name == "SIGXFSZ":
            return f"file size limit of {file_size_mb} MB exceeded (SIGXFSZ)"
        return f"killed by {name}" + (f": {last[:300]}" if last else "")
    if returncode != 0:
        if "MemoryError" in last:
            return f"memory limit of {memory_mb} MB exceeded (MemoryError)"
        if "File too large" in last:
            return f"file size limit of {file_size_mb} MB exceeded ({last[:200]})"
        if "No space left on device" in last:
            return f"folder size limit of {folder_mb} MB exceeded ({last[:200]})"
        if "sandbox:" in last:
            return f"blocked by the sandbox: {last[:300]}"
        return f"exit code {returncode}: {last[:300]}" if last else f"exit code {returncode}"
    if not finished:
        return (
            "the program exited (code 0) before its end: sys.exit or os._exit before the tests ran"
        )
    return None


def _read_status(fd: int) -> bytes:
    """What the runner wrote to its status pipe (never blocks: a left-over child may hold it)."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < 64:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    return data


def run_python(
    program: str,
    *,
    timeout_s: float = 10.0,
    cpu_s: Optional[int] = None,
    memory_mb: int = 1024,
    file_size_mb: int = 16,
    max_processes: int = 16,
    max_open_files: int = 256,
    block_processes: bool = True,
    isolation: str = "namespaces",
    folder_mb: int = 64,
    python: Optional[str] = None,
) -> SandboxResult:
    """Run ``program`` (Python source) contained; passed when it runs to its end and exits 0.

    ``cpu_s`` defaults to ``ceil(timeout_s) + 1``. ``max_processes`` bounds the tasks (threads
    included) of the run when a cgroup or RLIMIT_NPROC can (see :func:`process_containment`);
    ``block_processes`` (default) also refuses, in Python, to start or signal any process.
    ``isolation``: ``namespaces`` (bubblewrap; ``folder_mb`` bounds the folder, a tmpfs) or
    ``python-guards`` (the other walls only). Raises :class:`SandboxError` when the sandbox
    itself cannot start (:class:`IsolationUnavailable` for the namespaces), never for the
    program's faults.
    """
    import math

    if isolation not in ISOLATIONS:
        raise SandboxError(
            f"unknown sandbox isolation {isolation!r}; use one of {', '.join(ISOLATIONS)}"
        )
    python = python or sys.executable
    if not os.access(python, os.X_OK):
        raise SandboxError(f"cannot start the sandbox interpreter {python}: not an executable file")
    namespaces = isolation == "namespaces"
    tools = _isolation_tools() if namespaces else None
    cpu_s = cpu_s if cpu_s is not None else math.ceil(timeout_s) + 1
    token = uuid.uuid4().hex
    root = Path(tempfile.mkdtemp(prefix="forgetbench-sandbox-"))
    workdir = root / "work"
    workdir.mkdir()
    (workdir / PROGRAM_FILE).write_text(program, encoding="utf-8")
    cgroup = _make_cgroup(max_processes)
    if cgroup is not None and namespaces and os.geteuid() == 0:
        os.chown(cgroup / "cgroup.procs", SANDBOX_UID, SANDBOX_GID)  # so it can join it
    limits = {
        "RLIMIT_CPU": [cpu_s, cpu_s + 1],
        "RLIMIT_AS": [memory_mb * 2**20] * 2,
        "RLIMIT_FSIZE": [file_size_mb * 2**20] * 2,
        "RLIMIT_NOFILE": [max_open_files] * 2,
        "RLIMIT_CORE": [0, 0],
    }
    if cgroup is None:
        uid = SANDBOX_UID if namespaces and os.geteuid() == 0 else None
        nproc = user_task_count(uid) + max_processes
        limits["RLIMIT_NPROC"] = [nproc, nproc]
    status_read, status_write = os.pipe()
    config = {
        "cgroup": str(cgroup) if cgroup else None,
        "limits": limits,
        "status_fd": status_write,
        "program": PROGRAM_FILE,
        "block_processes": block_processes,
    }
    command = [python, "-I", "-B", "-c", _RUNNER, json.dumps(config)]
    if namespaces:
        command = (
            _bwrap_command(*tools, python, workdir, workdir / PROGRAM_FILE, cgroup, folder_mb)
            + command
        )
    start = time.monotonic()
    timed_out = False
    process = None
    try:
        with open(root / "output", "wb") as output:
            try:
                process = subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=_environment(str(workdir), token),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(status_write,),
                )
            except OSError as error:
                raise SandboxError(f"cannot start the sandbox ({command[0]}): {error}") from None
            finally:
                os.close(status_write)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
        duration = time.monotonic() - start
    finally:
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if cgroup is not None:
                _remove_cgroup(cgroup)
            else:
                _kill_marked(token)
            process.wait()
        elif cgroup is not None:
            _remove_cgroup(cgroup)
        text = _tail(root / "output")
        try:
            output_full = (root / "output").stat().st_size >= file_size_mb * 2**20
        except OSError:
            output_full = False
        status = _read_status(status_read)
        os.close(status_read)
        shutil.rmtree(root, ignore_errors=True)
    returncode = process.returncode
    if not status.startswith(b"started") and not timed_out:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")[:300]
        error = IsolationUnavailable if namespaces else SandboxError
        raise error(
            f"code sandbox: the sandbox did not start ({command[0]} exited {returncode}: "
            f"{last or 'no output'})"
            + (
                f"; kernel namespaces may be forbidden here "
                f"(a container without user namespaces), "
                f"{_WEAKER}"
                if namespaces
                else ""
            )
        )
    if namespaces and 128 < returncode < 128 + 65:
        # bwrap exits 128 + N when the program dies of signal N (so a program's own
        # sys.exit(128 + N) reads as that signal too: a failure either way)
        returncode = 128 - returncode
    reason = _reason(
        returncode,
        timed_out,
        status.endswith(b"finished"),
        text,
        output_full,
        timeout_s,
        cpu_s,
        memory_mb,
        file_size_mb,
        folder_mb,
    )
    return SandboxResult(
        passed=reason is None,
        reason=reason,
        duration_s=duration,
        returncode=returncode,
        output=text,
    )
