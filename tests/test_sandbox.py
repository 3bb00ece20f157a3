"""The sandbox against a battery of hostile programs (see docs/SANDBOX.md for the table).

Each case is a program and the checks its result must pass. After every case the trainer (this
pytest process) must be unharmed: its environment intact, no process of the run's uid alive, no
working directory left behind, no planted secret in the output. Small limits keep the file fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reinflow.sandbox import (
    MIB,
    SandboxIsolation,
    SandboxLimits,
    SandboxResult,
    format_tool_output,
    probe_isolation,
    run_python,
    run_python_async,
)
from reinflow.sandbox.host_view import first_blocked_ancestor, host_path_view
from reinflow.sandbox.launch_config import exposed_paths
from reinflow.sandbox.processes import live_pids_of_uid

PROJECT = Path(__file__).resolve().parents[1]
SECRET_VAR = "REINFLOW_TEST_API_KEY"
SECRET = "sk-planted-secret-7f3a9c1e5b"
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


# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(autouse=True)
def planted_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET)


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    yield Ctx(listener=listener, port=listener.getsockname()[1])
    listener.close()


def workdirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"reinflow-sandbox-{os.getpid()}-*")}


def sandbox_uids_alive() -> list[tuple[int, int]]:
    """(pid, uid) of live processes whose uid is in this process's sandbox uid range."""
    low = 2**30 + os.getpid() * 256
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        status = Path(f"/proc/{pid}/status")
        lines = status.read_text().splitlines() if status.exists() else []
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        if fields and fields["State"].split()[0] != "Z" and low <= int(fields["Uid"].split()[0]) < low + 256:
            found.append((pid, int(fields["Uid"].split()[0])))
    return found


def assert_trainer_unharmed(result: SandboxResult, dirs_before: set[str]) -> None:
    """The trainer's env is intact, nothing of the run survives, nothing secret leaked."""
    assert os.environ[SECRET_VAR] == SECRET
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert result.wall_seconds < LIMITS.wall_seconds + 1.5, result
    assert result.isolation == ISOLATION
    if result.sandbox_uid is not None:
        assert live_pids_of_uid(result.sandbox_uid) == []
    assert workdirs() <= dirs_before


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_hostile_program_is_contained(c: Case, ctx: Ctx) -> None:
    missing = [need for need in c.needs if not getattr(ISOLATION, need)]
    if missing:
        pytest.skip(f"this machine's sandbox lacks {missing}: see docs/SANDBOX.md")
    dirs_before = workdirs()
    result = run_python(string.Template(c.code).substitute(ctx.template_values()), LIMITS)
    for check in c.checks:
        check(result, ctx)
    assert_trainer_unharmed(result, dirs_before)


def test_battery_is_big_enough() -> None:
    assert len(CASES) >= 25


def test_root_gets_full_isolation() -> None:
    """As root on Linux every protection should be available (this is what CI runs as)."""
    if os.geteuid() != 0:
        pytest.skip("not root: see docs/SANDBOX.md for what a normal user gets")
    assert ISOLATION == SandboxIsolation(
        drops_privileges=True, network_isolated=True, private_tmp=True, pid_namespace=True
    )


SEEN = {"visible": "ok", "hidden": "FileNotFoundError", "unreachable": "PermissionError"}


def test_host_path_view_is_what_the_code_sees() -> None:
    """``host_path_view`` (what the tests above and docs/SANDBOX.md go by) against ``os.stat`` in a
    real run: the checkout, a world-readable system file, a file in a mode-700 folder, a file under
    the host's /tmp, and a neighbour of the interpreter under its non-traversable ancestor."""
    locked = PROJECT / ".pytest_cache" / f"sandbox-view-{os.getpid()}" / "locked"
    locked.mkdir(parents=True, exist_ok=True)
    (locked / "file").write_text("x")
    locked.chmod(0o700)
    try:
        with tempfile.NamedTemporaryFile(dir="/tmp") as in_tmp:
            paths = [PROJECT / "pyproject.toml", Path("/etc/passwd"), locked / "file", Path(in_tmp.name)]
            tops = {top for top in map(first_blocked_ancestor, exposed_paths()) if top}
            paths += [Path(top) / name for top in sorted(tops) for name in sorted(os.listdir(top))[:1]
                      if not any(e.startswith(f"{top}/{name}") for e in exposed_paths())]
            code = ("import os\nfor p in %r:\n    try:\n        os.stat(p)\n        print('ok')\n"
                    "    except OSError as e:\n        print(type(e).__name__)" % [str(p) for p in paths])
            result = run_python(code, LIMITS)
            expected = [SEEN[host_path_view(p, ISOLATION)] for p in paths]
    finally:
        locked.chmod(0o755)
        (locked / "file").unlink()
        locked.rmdir()
        locked.parent.rmdir()
    assert result.stdout.split() == expected, (paths, result)
    if ISOLATION.private_tmp:  # the cases the view tells apart, where this machine has them
        assert expected[3] == "FileNotFoundError"
    if ISOLATION.drops_privileges and PROJECT_VIEW == "visible":
        assert expected[2] == "PermissionError"


def test_secret_in_real_parent_environ_is_not_readable(tmp_path: Path) -> None:
    """A trainer started with a secret in its environment (so /proc/<pid>/environ holds it)."""
    program = (
        "import os\n"
        "for pid in [os.getppid()] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        "            print(open(f'/proc/{pid}/{name}', 'rb').read())\n"
        "        except OSError as e:\n"
        "            print(pid, name, type(e).__name__)\n"
    )
    trainer = (
        "import json, sys\nfrom reinflow.sandbox.runner import SandboxLimits, run_python\n"
        f"assert {SECRET!r}.encode() in open('/proc/self/environ', 'rb').read()\n"
        f"r = run_python({program!r}, SandboxLimits(wall_seconds=5))\n"
        "print(json.dumps([r.stdout, r.stderr, r.exit_code]))\n"
    )
    env = {**os.environ, SECRET_VAR: SECRET}
    done = subprocess.run(
        [sys.executable, "-c", trainer], env=env, cwd=PROJECT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    stdout, stderr, exit_code = json.loads(done.stdout)
    assert exit_code == 0 and stdout, stderr
    assert SECRET not in stdout + stderr and SECRET_VAR not in stdout + stderr


def test_without_network_namespace_the_connection_arrives(ctx: Ctx) -> None:
    """The fallback, shown honestly: with no network namespace loopback is reachable."""
    weaker = ISOLATION.model_copy(update={"network_isolated": False})
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {ctx.port}), timeout=1)\nprint('connected')"
    result = run_python(code, LIMITS, isolation=weaker)
    assert result.stdout == "connected\n", result
    ctx.listener.accept()[0].close()


@pytest.mark.parametrize("name", ["orphan_daemon", "kill_everything", "fork_bomb"])
def test_without_pid_namespace_the_uid_sweep_still_kills_everything(name: str) -> None:
    """The fallback when PID namespaces are not allowed: the per-run uid is what finds escapees."""
    if not ISOLATION.drops_privileges:
        pytest.skip("needs a per-run uid (root)")
    weaker = ISOLATION.model_copy(update={"pid_namespace": False})
    code = string.Template(next(c.code for c in CASES if c.name == name)).substitute({})
    dirs_before = workdirs()
    result = run_python(code, LIMITS, isolation=weaker)
    assert result.sandbox_uid is not None and live_pids_of_uid(result.sandbox_uid) == []
    assert sandbox_uids_alive() == [] and workdirs() <= dirs_before
    assert result.wall_seconds < LIMITS.wall_seconds + 1.5, result


def test_async_runs_eight_programs_concurrently() -> None:
    programs = [f"import time\ntime.sleep(1)\nprint({i} * {i})" for i in range(6)]
    programs += ["import time\ntime.sleep(10**6)", "1 / 0"]

    async def main() -> list[SandboxResult]:
        return await asyncio.gather(*(run_python_async(p, LIMITS) for p in programs))

    started = time.monotonic()
    results = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert [r.stdout for r in results[:6]] == [f"{i * i}\n" for i in range(6)]
    assert results[6].timed_out and "ZeroDivisionError" in results[7].stderr
    assert elapsed < LIMITS.wall_seconds + 3, elapsed  # one after another: over 6 × 1 s + 2 s
    assert len({r.sandbox_uid for r in results}) == len(results)
    assert sandbox_uids_alive() == []


def test_cancelled_async_run_is_killed_and_cleaned() -> None:
    dirs_before = workdirs()

    async def main() -> None:
        task = asyncio.create_task(run_python_async("import time\ntime.sleep(10**6)", LIMITS))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sandbox_uids_alive() == []
    assert workdirs() <= dirs_before


def test_trainer_can_still_run_code_after_the_battery() -> None:
    assert run_python("print('still fine')", LIMITS).stdout == "still fine\n"
    assert os.environ[SECRET_VAR] == SECRET


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("print(5)", "5\n"),
        ("pass", "[no output: the code printed nothing; use print() to show values]\n"),
        ("print('a')\n1 / 0", "a\n[stderr]\n"),
        ("import sys\nsys.exit(3)", "[exit code 3]\n"),
        ("import time\ntime.sleep(60)", "[timed out after"),
        ("import sys\nsys.stdout.write('x' * 10**6)", "[output limit reached"),
        ("import ctypes\nctypes.string_at(0)", "[the program died of SIGSEGV: segmentation fault]\n"),
        ("while True:\n    pass", "[the program died of SIGXCPU: CPU time limit exceeded]\n"),
    ],
)
def test_format_tool_output(code: str, expected: str) -> None:
    limits = LIMITS if "sleep" in code else LIMITS.model_copy(update={"wall_seconds": 10})  # CPU limit first
    text = format_tool_output(run_python(code, limits))
    assert expected in text, text


def test_format_tool_output_keeps_the_stderr_tail() -> None:
    result = run_python("import sys\nsys.stderr.write('head ' + 'x' * 5000 + ' tail')\nsys.exit(1)", LIMITS)
    text = format_tool_output(result, stderr_tail_chars=100)
    assert text.endswith(" tail\n[exit code 1]\n") and "head" not in text and "[stderr]\n…" in text


@pytest.mark.parametrize(
    "bad", [{"wall_seconds": 0}, {"memory_bytes": 1024}, {"max_processes": 0}, {"cpu_seconds": -1}, {"typo": 1}]
)
def test_limits_are_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        SandboxLimits(**bad)
