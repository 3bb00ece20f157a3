"""Hostile programs against ``reinflow.sandbox.runner``: each contained, with a result that says why, and
the trainer (this test process) unharmed: alive, its environment unchanged, no stray process left.

Complements ``tests/test_sandbox.py`` (the sandbox's own battery) with the reliability table's
cases; docs/SANDBOX.md says what is promised and what is not.
"""

from __future__ import annotations

import os
import signal
import socket
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from reinflow.sandbox import MIB, SandboxLimits, SandboxResult, probe_isolation, run_python
from reinflow.sandbox.host_view import host_path_view

PROMISE = "sandbox: hostile code contained, trainer unharmed"
PROJECT = Path(__file__).resolve().parents[2]
SECRET = "sk-reinflow-planted-sandbox-5e1f"
LIMITS = SandboxLimits(wall_seconds=3, cpu_seconds=1, memory_bytes=256 * MIB, max_processes=16,
                       output_bytes=16 * 1024, file_size_bytes=4 * MIB, workdir_bytes=16 * MIB, open_files=32)
ISOLATION = probe_isolation()
FULL = ISOLATION.drops_privileges and ISOLATION.network_isolated and ISOLATION.private_tmp and ISOLATION.pid_namespace
REFUSAL = {"visible": "PermissionError", "unreachable": "PermissionError", "hidden": "FileNotFoundError"}
"""What opening a host path the code may not use raises, by how the code sees it (``host_path_view``:
a checkout under /tmp is hidden, one under a home folder of mode 700 or 750 unreachable)."""
SECRET_DIR = PROJECT / ".pytest_cache" / f"reliability-secret-{os.getpid()}"
pytestmark = pytest.mark.skipif(not FULL, reason=f"this machine's sandbox is weaker ({ISOLATION}): see docs/SANDBOX.md")


@dataclass
class Host:
    """What the hostile code is told about the trainer, and what the checks look at afterwards."""

    tcp: socket.socket
    udp: socket.socket
    secret_file: Path
    mark: str

    def values(self) -> dict[str, str]:
        return {"trainer_pid": str(os.getpid()), "tcp_port": str(self.tcp.getsockname()[1]),
                "udp_port": str(self.udp.getsockname()[1]), "secret_file": str(self.secret_file),
                "project": str(PROJECT), "mark": self.mark, "home": str(Path.home())}


Check = Callable[[SandboxResult, Host], None]


def says(*texts: str) -> Check:
    def check(r: SandboxResult, host: Host) -> None:
        assert all(text in r.stdout + r.stderr for text in texts), r

    return check


def never_says(text: str) -> Check:
    def check(r: SandboxResult, host: Host) -> None:
        assert text not in r.stdout, r

    return check


def limit_hit(r: SandboxResult, host: Host) -> None:
    assert r.timed_out or r.killed_signal in (signal.SIGXCPU, signal.SIGKILL) or r.exit_code not in (0, None), r


def timed_out(r: SandboxResult, host: Host) -> None:
    assert r.timed_out and r.killed_signal == signal.SIGKILL, r


def truncated(r: SandboxResult, host: Host) -> None:
    assert r.truncated and max(len(r.stdout.encode()), len(r.stderr.encode())) == LIMITS.output_bytes, r


def died_of(sig: int) -> Check:
    def check(r: SandboxResult, host: Host) -> None:
        assert r.killed_signal == sig, r

    return check


def nothing_on_host(template: str) -> Check:
    def check(r: SandboxResult, host: Host) -> None:
        assert not Path(string.Template(template).substitute(host.values())).exists()

    return check


def no_tcp_connection(r: SandboxResult, host: Host) -> None:
    with pytest.raises(BlockingIOError):
        host.tcp.accept()


def no_udp_datagram(r: SandboxResult, host: Host) -> None:
    with pytest.raises(BlockingIOError):
        host.udp.recvfrom(64)


def runs_as_other_uid(r: SandboxResult, host: Host) -> None:
    assert r.sandbox_uid is not None and f"uid={r.sandbox_uid}" in r.stdout, r


def exits_zero(r: SandboxResult, host: Host) -> None:
    assert r.exit_code == 0 and not r.timed_out, r


TRY = "try:\n{body}\nexcept BaseException as e:\n    print('refused', type(e).__name__, e)\n"


def attempt(body: str) -> str:
    """Code that runs ``body`` and prints ``refused <error>`` when it raises."""
    return TRY.format(body="\n".join("    " + line for line in body.splitlines()))


# (name, code, checks)
CASES = [
    ("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", [limit_hit]),
    ("memory_bomb", "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))", [says("MemoryError")]),
    ("infinite_loop", "while True:\n    pass", [limit_hit]),
    ("cpu_spin_in_threads", "import threading\ndef spin():\n    while True:\n        pass\n"
     "for _ in range(8):\n    threading.Thread(target=spin).start()", [limit_hit]),
    ("huge_stdout", "import sys\nwhile True:\n    sys.stdout.write('o' * 2**20)", [truncated]),
    ("huge_stderr", "import sys\nwhile True:\n    sys.stderr.write('e' * 2**20)", [truncated]),
    ("deep_recursion", "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1) + 1\nf(0)", [limit_hit]),
    ("write_home", attempt("open('$home/$mark', 'w').write('x')"), [says("refused PermissionError"),
                                                                   nothing_on_host("$home/$mark")]),
    ("write_tmp", "open('/tmp/$mark', 'w').write('x')\nprint('wrote')", [says("wrote"), nothing_on_host("/tmp/$mark")]),
    ("write_project", attempt("open('$project/$mark', 'w').write('x')"),
     [says(f"refused {REFUSAL[host_path_view(PROJECT / 'pyproject.toml', ISOLATION)]}"), nothing_on_host("$project/$mark")]),
    ("write_dev_shm", "open('/dev/shm/$mark', 'w').write('x')\nprint('wrote')",
     [says("wrote"), nothing_on_host("/dev/shm/$mark")]),
    ("read_parent_environ", attempt("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())"),
     [says("refused PermissionError")]),
    ("read_trainer_environ_by_pid", attempt("print(open('/proc/$trainer_pid/environ').read())"), [says("refused")]),
    ("read_planted_secret_file", attempt("print(open('$secret_file').read())"),
     [says(f"refused {REFUSAL[host_path_view(SECRET_DIR, ISOLATION)]}")]),  # mode 600; hidden where the checkout is
    ("read_os_environ", "import os\nprint(sorted(os.environ), 'API' in str(os.environ))",
     [says("['HOME', 'LANG', 'PATH', 'TMPDIR'] False")]),
    ("tcp_connect_loopback", attempt("import socket\nsocket.create_connection(('127.0.0.1', $tcp_port), timeout=1)\n"
                                     "print('connected')"), [says("refused", "unreachable"), no_tcp_connection]),
    ("udp_send_loopback", attempt("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                                  "s.sendto(b'leak', ('127.0.0.1', $udp_port))\nprint('sent')"),
     [says("refused", "unreachable"), no_udp_datagram]),
    ("listen_on_trainer_port", "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', $tcp_port))\ns.listen()\n"
     "print('listening in its own namespace')", [says("listening in its own namespace"), no_tcp_connection]),
    ("spawn_shell_subprocess", "import subprocess\nprint(subprocess.run(['/bin/sh', '-c', 'echo uid=$$(id -u)'], "
     "capture_output=True, text=True).stdout)", [runs_as_other_uid]),
    ("spawn_shell_os_system", "import os\nos.system('echo uid=$$(id -u); env')", [runs_as_other_uid]),
    ("kill_parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('parent still there')",
     [says("parent still there")]),
    ("kill_trainer_pid", attempt("import os, signal\nos.kill($trainer_pid, signal.SIGKILL)"), [says("refused")]),
    ("shell_kill_9_trainer", "import os\nprint('status', os.system('kill -9 $trainer_pid 2>/dev/null'))",
     [exits_zero, says("status 256")]),
    ("kill_all_processes", attempt("import os, signal\nos.kill(-1, signal.SIGKILL)"),
     [says("refused ProcessLookupError")]),
    ("ctypes_libc_setuid_root", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
     "print('setuid', libc.setuid(0), 'errno', ctypes.get_errno())", [says("setuid -1 errno 1")]),
    ("ctypes_segfault", "import ctypes\nctypes.string_at(0)", [died_of(signal.SIGSEGV)]),
    ("fill_disk_one_file", "open('big', 'wb').write(b'x' * 100 * 2**20)", [says("File too large")]),
    ("fill_disk_many_files", "for i in range(10**6):\n    open(f'f{i}', 'wb').write(b'x' * 2**20)",
     [says("No space left on device")]),
    ("huge_number_of_files", "for i in range(10**6):\n    open(f'n{i}', 'w').close()", [says("No space left on device")]),
    ("sleep_past_timeout", "import time\ntime.sleep(3600)", [timed_out]),
    ("ignore_sigterm", "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
     "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)", [timed_out]),
    ("daemonised_grandchild", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
     "        time.sleep(3600)\n    os._exit(0)\nos.wait()\nprint('left a daemon behind')", [says("left a daemon behind")]),
    ("setsid_escape", "import os, time\nos.setsid()\nfor _ in range(3):\n    if os.fork() == 0:\n"
     "        time.sleep(3600)\nprint('children forked')", [says("children forked")]),
    ("setrlimit_raise_own_limits", "import resource\nfor r in (resource.RLIMIT_AS, resource.RLIMIT_NPROC, "
     "resource.RLIMIT_CPU, resource.RLIMIT_FSIZE):\n    try:\n"
     "        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n        print('raised', r)\n"
     "    except (ValueError, OSError) as e:\n        print('refused', e)",
     [says("refused"), never_says("raised")]),
    ("import_trainer_modules", attempt("import reinflow"), [says("refused ModuleNotFoundError")]),
]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    secret_dir = SECRET_DIR
    secret_dir.mkdir(parents=True, exist_ok=True)
    secret_file = secret_dir / "token.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    yield Host(tcp, udp, secret_file, f"reinflow-battery-escape-{os.getpid()}")
    tcp.close()
    udp.close()
    secret_file.unlink()
    secret_dir.rmdir()


def stray_processes(before: set[int]) -> list[psutil.Process]:
    """Live processes that are new descendants of this process, or run as a sandbox uid of it."""
    low = 2**30 + os.getpid() * 256
    found = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for process in psutil.process_iter(["uids", "status"]):
        if low <= process.info["uids"].real < low + 256 and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


@pytest.mark.reliability(PROMISE, tried="fork/memory bombs, loops, threads, huge output, recursion, writes outside, "
                                        "/proc and env reads, planted secret file, TCP/UDP/listen, shells, kills, "
                                        "ctypes, disk and inode filling, timeouts, ignored SIGTERM, daemons, setsid, "
                                        "setrlimit, importing trainer modules")
@pytest.mark.parametrize(("code", "checks"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_program_is_contained(host: Host, code: str, checks: list[Check]) -> None:
    environment = dict(os.environ)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = run_python(string.Template(code).substitute(host.values()), LIMITS)
    for check in checks:
        check(result, host)
    assert psutil.pid_exists(os.getpid()) and dict(os.environ) == environment
    assert stray_processes(children_before) == []
    assert SECRET not in result.stdout + result.stderr
    assert result.wall_seconds < LIMITS.wall_seconds + 2, result


def test_battery_has_at_least_25_programs() -> None:
    assert len(CASES) >= 25 and len({name for name, *_ in CASES}) == len(CASES)
