"""The sandbox against a battery of hostile programs (``helpers.hostile_programs``; see
docs/SANDBOX.md for the table).

Each case is a program and the checks its result must pass. After every case the trainer (this
pytest process) must be unharmed: its environment intact, no process of the run's uid alive, no
working directory left behind, no planted secret in the output.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hostile_programs import CASES, ISOLATION, LIMITS, PROJECT, PROJECT_VIEW, Case, Ctx

from reinflow.sandbox import (
    SandboxIsolation,
    SandboxLimits,
    SandboxResult,
    format_tool_output,
    run_python,
    run_python_async,
)
from reinflow.sandbox.host_view import first_blocked_ancestor, host_path_view
from reinflow.sandbox.launch_config import exposed_paths
from reinflow.sandbox.processes import live_pids_of_uid

SECRET_VAR = "REINFLOW_TEST_API_KEY"
SECRET = "sk-planted-secret-7f3a9c1e5b"


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
