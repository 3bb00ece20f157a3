"""The sandbox's battery of hostile (and normal) programs, each with the checks its result must
pass, the isolation it needs, and the small limits that keep the battery fast. ``tests/test_sandbox.py``
runs them; docs/SANDBOX.md has the table.

A case's code is a ``string.Template``: ``$project``, ``$port``, ``$mark`` and ``$trainer_pid``
come from ``Ctx.template_values``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reinflow.sandbox import MIB, SandboxLimits, SandboxResult, probe_isolation
from reinflow.sandbox.host_view import host_path_view

PROJECT = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(
    wall_seconds=2,
    cpu_seconds=1,
    memory_bytes=256 * MIB,
    max_processes=16,
    output_bytes=8192,
    file_size_bytes=4 * MIB,
    workdir_bytes=16 * MIB,
    open_files=32,
)
ISOLATION = probe_isolation()
ESCAPE_MARK = f"reinflow-sandbox-escape-{os.getpid()}"
REFUSAL = {"visible": "PermissionError", "unreachable": "PermissionError", "hidden": "FileNotFoundError"}
"""What opening a host path the code may not use raises, by how the code sees it (``host_path_view``)."""
PROJECT_VIEW = host_path_view(PROJECT / "pyproject.toml", ISOLATION)
"""How the code sees the checkout's files: visible (host permissions as another user), hidden (a
checkout under /tmp, or under a folder the interpreter's tmpfs covers) or unreachable (an ancestor
without o+x, e.g. a home folder of mode 700 or 750)."""
PROJECT_REFUSAL = REFUSAL[PROJECT_VIEW]


@dataclass
class Ctx:
    """What a case's code and checks may refer to: a listening socket and host paths."""

    listener: socket.socket
    port: int

    def template_values(self) -> dict[str, str]:
        return {"project": str(PROJECT), "port": str(self.port), "mark": ESCAPE_MARK, "trainer_pid": str(os.getpid())}


Check = Callable[[SandboxResult, Ctx], None]


@dataclass(frozen=True)
class Case:
    """A hostile (or normal) program, the checks on its result, and the isolation it needs."""

    name: str
    code: str
    checks: tuple[Check, ...]
    needs: tuple[str, ...] = ()


def case(name: str, code: str, *checks: Check, needs: tuple[str, ...] = ()) -> Case:
    return Case(name, code, checks, needs)


# ----------------------------------------------------------------------------- checks


def exits(code: int) -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.exit_code == code and not r.timed_out, r

    return check


def fails() -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.exit_code != 0, r

    return check


def stdout_is(text: str) -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.stdout == text, r

    return check


def says(text: str, stream: str = "stdout") -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert text in getattr(r, stream), r

    return check


def times_out() -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.timed_out and r.killed_signal == signal.SIGKILL, r

    return check


def dies_of(*signals: int) -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.killed_signal in signals and r.exit_code is None, r

    return check


def stopped_by_a_limit() -> Check:
    """Either the CPU limit (SIGXCPU, then SIGKILL) or the wall-clock limit ended it."""

    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.timed_out or r.killed_signal in (signal.SIGXCPU, signal.SIGKILL), r

    return check


def truncated_at_cap(stream: str) -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.truncated and len(getattr(r, stream).encode()) == LIMITS.output_bytes, r

    return check


def quick(seconds: float) -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.wall_seconds < seconds and not r.timed_out, r

    return check


def host_path_absent(path: str) -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        host_path = Path(string.Template(path).substitute(ctx.template_values()))
        assert not host_path.exists(), f"{host_path} was written on the host"

    return check


def project_file_read() -> tuple[Check, ...]:
    """Reading a world-readable project file: its text where the code sees the checkout, else the
    error of a hidden (FileNotFoundError) or unreachable (PermissionError) checkout."""
    if PROJECT_VIEW == "visible":
        return exits(0), says("[project]")
    return exits(1), says(PROJECT_REFUSAL, "stderr")


def no_connection_arrived() -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        with pytest.raises(BlockingIOError):
            ctx.listener.accept()

    return check


def trainer_pid_hidden() -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        pids = json.loads(r.stdout)
        assert str(os.getpid()) not in pids and str(os.getppid()) not in pids, r

    return check


def runs_as_sandbox_uid() -> Check:
    def check(r: SandboxResult, ctx: Ctx) -> None:
        assert r.sandbox_uid is not None and f"uid={r.sandbox_uid}\n" in r.stdout, r

    return check


# ----------------------------------------------------------------------------- the battery

PRIV = ("drops_privileges",)
NET = ("network_isolated",)
TMP = ("private_tmp",)
PIDNS = ("pid_namespace",)

CASES = [
    # programs that must simply work
    case("print_sum", "print(2 + 3)", exits(0), stdout_is("5\n")),
    case("stdlib_math", "import math, fractions\nprint(math.factorial(20), fractions.Fraction(1, 3) * 3)",
         exits(0), stdout_is("2432902008176640000 1\n")),
    case("loop_sum", "total = 0\nfor i in range(10**6):\n    total += i\nprint(total)", exits(0), stdout_is("499999500000\n")),
    case("own_file_roundtrip", "from pathlib import Path\nPath('notes.txt').write_text('kept')\n"
         "print(Path('notes.txt').read_text(), sorted(p.name for p in Path('.').iterdir()))",
         exits(0), stdout_is("kept ['main.py', 'notes.txt']\n")),
    case("unicode_output", "print('héllo ✓ 数学')", exits(0), stdout_is("héllo ✓ 数学\n")),
    case("stdin_is_empty", "input('? ')", exits(1), says("EOFError", "stderr"), quick(1.5)),
    # exits and errors
    case("sys_exit_3", "import sys\nsys.exit(3)", exits(3)),
    case("syntax_error", "def f(:\n    pass", exits(1), says("SyntaxError", "stderr")),
    case("uncaught_exception", "print('before')\n1 / 0", exits(1), stdout_is("before\n"),
         says("ZeroDivisionError", "stderr")),
    case("keyboard_interrupt", "raise KeyboardInterrupt", dies_of(signal.SIGINT), says("KeyboardInterrupt", "stderr")),
    # time
    case("infinite_loop", "while True:\n    pass", stopped_by_a_limit()),
    case("sleep_forever", "import time\ntime.sleep(10**6)", times_out()),
    case("ignores_sigterm", "import signal, time\n"
         "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n    signal.signal(s, signal.SIG_IGN)\n"
         "print('ignoring', flush=True)\nwhile True:\n    time.sleep(0.05)", times_out(), says("ignoring")),
    case("threads_spinning", "import threading\n"
         "def spin():\n    while True:\n        pass\n"
         "for _ in range(4):\n    threading.Thread(target=spin).start()", stopped_by_a_limit()),
    case("output_then_hang", "print('partial answer: 42')\nimport time\ntime.sleep(60)",
         times_out(), stdout_is("partial answer: 42\n")),
    # memory
    case("memory_bomb_one_block", "x = bytearray(10**10)", exits(1), says("MemoryError", "stderr")),
    case("memory_bomb_growing", "chunks = []\nwhile True:\n    chunks.append(b'x' * 10**7)",
         exits(1), says("MemoryError", "stderr")),
    case("deep_recursion", "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)", fails()),
    case("c_level_recursion", "import json\njson.loads('[' * 10**6 + ']' * 10**6)", fails()),
    # processes
    case("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
         stopped_by_a_limit(), needs=PRIV),
    case("thread_bomb", "import threading, time\nn = 0\ntry:\n    while True:\n"
         "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
         "except RuntimeError as e:\n    print(n < 16, e)", exits(0), says("True can't start new thread"), needs=PRIV),
    case("orphan_daemon", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
         "        time.sleep(300)\n    os._exit(0)\nos.wait()\nprint('parent done')",
         exits(0), stdout_is("parent done\n"), quick(1.5), needs=PRIV),
    case("spawn_shell", "import os\nos.system('echo uid=$$(id -u)')", exits(0), runs_as_sandbox_uid(), needs=PRIV),
    case("subprocess_python", "import subprocess, sys\n"
         "print(subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout)",
         exits(0), stdout_is("42\n\n")),
    case("kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('survived')",
         exits(0), stdout_is("survived\n"), needs=PIDNS),  # its parent is the namespace's init
    case("kill_trainer_by_pid", "import os, signal\ntry:\n    os.kill($trainer_pid, signal.SIGKILL)\n"
         "except OSError as e:\n    print(type(e).__name__)", exits(0), says("Error\n"), needs=PRIV),
    case("kill_everything", "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\n"
         "except ProcessLookupError:\n    print('nothing else to kill')", exits(0), stdout_is("nothing else to kill\n"),
         needs=PIDNS),  # without a pid namespace it can kill its own reaper (and so itself), nothing else
    case("killpg_own_group", "import os, signal\nos.killpg(0, signal.SIGKILL)", dies_of(signal.SIGKILL), quick(1.5)),
    # filesystem
    case("write_project_dir", "try:\n    open('$project/$mark', 'w').write('x')\nexcept OSError as e:\n"
         "    print(type(e).__name__)", stdout_is(f"{PROJECT_REFUSAL}\n"), host_path_absent("$project/$mark"), needs=PRIV),
    case("write_root_home", "try:\n    open('/root/$mark', 'w').write('x')\nexcept OSError as e:\n"
         "    print(type(e).__name__)", stdout_is("PermissionError\n"), host_path_absent("/root/$mark"), needs=PRIV),
    case("write_tmp", "open('/tmp/$mark', 'w').write('x')\nprint('written')", stdout_is("written\n"),
         host_path_absent("/tmp/$mark"), needs=TMP),
    case("write_dev_shm", "open('/dev/shm/$mark', 'w').write('x')\nprint('written')", stdout_is("written\n"),
         host_path_absent("/dev/shm/$mark"), needs=TMP),
    case("write_run_lock", "open('/run/lock/$mark', 'w').write('x')\nprint('written')", stdout_is("written\n"),
         host_path_absent("/run/lock/$mark"), needs=TMP),
    case("chmod_project", "import os\ntry:\n    os.chmod('$project', 0o777)\nexcept OSError as e:\n"
         "    print(type(e).__name__)", stdout_is(f"{REFUSAL[host_path_view(PROJECT, ISOLATION)]}\n"), needs=PRIV),
    case("read_root_only_file", "try:\n    print(open('/etc/shadow').read())\nexcept OSError as e:\n"
         "    print(type(e).__name__)", stdout_is("PermissionError\n"), needs=PRIV),
    case("read_world_readable_project_file", "print(open('$project/pyproject.toml').read()[:200])",
         *project_file_read()),  # documented: world-readable files stay readable where the code can reach them
    case("disk_fill_one_file", "open('big.bin', 'wb').write(b'x' * 100 * 2**20)", exits(1), says("File too large", "stderr")),
    case("disk_fill_many_files", "for i in range(100):\n    open(f'f{i}.bin', 'wb').write(b'x' * 3 * 2**20)",
         exits(1), says("No space left on device", "stderr"), needs=TMP),
    case("fd_exhaustion", "files = []\nwhile True:\n    files.append(open('main.py'))", exits(1),
         says("Too many open files", "stderr")),
    # environment and /proc
    case("environ_dump", "import os\nprint(sorted(os.environ))", exits(0), stdout_is("['HOME', 'LANG', 'PATH', 'TMPDIR']\n")),
    case("read_parent_environ", "import os\ntry:\n    print(open(f'/proc/{os.getppid()}/environ').read())\n"
         "except OSError as e:\n    print(type(e).__name__)", exits(0), says("Error"), needs=PRIV),
    case("list_processes", "import json, os\nprint(json.dumps([p for p in os.listdir('/proc') if p.isdigit()]))",
         exits(0), trainer_pid_hidden(), needs=PIDNS),
    # network
    case("connect_to_trainer_port", "import socket\ntry:\n    socket.create_connection(('127.0.0.1', $port), timeout=1)\n"
         "    print('connected')\nexcept OSError as e:\n    print(e)", exits(0), says("unreachable"),
         no_connection_arrived(), needs=NET),
    case("nested_user_namespace", "import ctypes, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "print('unshare', libc.unshare(0x10000000 | 0x40000000))  # its own user + network namespace\n"
         "try:\n    open('/etc/shadow').read()\nexcept OSError as e:\n    print(type(e).__name__)\n"
         "try:\n    socket.create_connection(('127.0.0.1', $port), timeout=1)\nexcept OSError as e:\n    print(e)",
         exits(0), says("PermissionError\n"), says("unreachable"), no_connection_arrived(), needs=PRIV + NET),
    # ctypes
    case("ctypes_segfault", "import ctypes\nctypes.string_at(0)", dies_of(signal.SIGSEGV)),
    case("ctypes_setuid_root", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "print(libc.setuid(0), ctypes.get_errno())", exits(0), stdout_is("-1 1\n"), needs=PRIV),
    case("ctypes_mount", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "print(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())", exits(0), stdout_is("-1 1\n"),
         needs=PRIV),
    case("capabilities_gone", "print(open('/proc/self/status').read())", exits(0),
         says("CapEff:\t0000000000000000"), says("NoNewPrivs:\t1"), needs=PRIV),
    # output
    case("huge_stdout", "import sys\nwhile True:\n    sys.stdout.write('x' * 2**20)", truncated_at_cap("stdout")),
    case("huge_stderr", "import sys\nwhile True:\n    sys.stderr.write('e' * 2**20)", truncated_at_cap("stderr")),
    case("endless_output_no_newline", "while True:\n    print('a', end='')", truncated_at_cap("stdout")),
    case("binary_garbage", "import sys\nsys.stdout.buffer.write(bytes(range(256)))", exits(0), says("\ufffd")),
]
