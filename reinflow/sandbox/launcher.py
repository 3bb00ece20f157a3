"""The source of the sandbox's launcher (process A) and reaper (process B), run as
``python -I -S -c LAUNCHER_SOURCE <config json>``; `reinflow.sandbox.runner` says what each process does.

It is a string, not a module: it runs in a fresh interpreter that imports nothing of reinflow.
"""

LAUNCHER_SOURCE = r"""
import ctypes, json, os, resource, signal, sys

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 262144
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 38, 36
CLONE_NEWNS = 0x00020000
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def check(rc, what):
    if rc != 0:
        sys.stderr.write(f"reinflow sandbox setup failed: {what}: {os.strerror(ctypes.get_errno())}\n")
        os._exit(125)


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def die_with_parent():
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")


def first_blocked_ancestor(path):
    parts = path.strip("/").split("/")
    ancestors = ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]
    return next((a for a in ancestors if not os.stat(a).st_mode & 1), None)


def expose(paths):
    # Make `paths` reachable for the sandbox uid: a tmpfs over each first non-traversable ancestor
    # (e.g. /root for a pyenv Python), holding bind mounts of the paths themselves.
    blocked = {p: first_blocked_ancestor(p) for p in paths}
    fds = {p: os.open(p, os.O_PATH) for p in paths if blocked[p]}
    tops = sorted({b for b in blocked.values() if b})
    for top in tops:
        if not any(top.startswith(other + "/") for other in tops):
            mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path, fd in sorted(fds.items()):
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)


def private_tmp(workdir):
    with open(os.path.join(workdir, "main.py"), "rb") as f:
        code = f.read()
    mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, cfg["tmpfs_options"])
    with open(os.path.join(workdir, "main.py"), "wb") as f:
        f.write(code)
    targets = [os.path.realpath(t) for t in cfg["scratch_dirs"] if os.path.isdir(t)]
    for target in sorted(set(targets), key=lambda t: t == "/tmp"):  # /tmp last: it hides `workdir`
        mount(workdir, target, None, MS_BIND)


def lock_down():
    for which, soft, hard in cfg["rlimits"]:
        old_hard = resource.getrlimit(which)[1]
        fit = lambda v: v if old_hard == resource.RLIM_INFINITY else min(v, old_hard)
        resource.setrlimit(which, (fit(soft), fit(hard)))
    os.nice(cfg["nice"])
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])


def reaper(report_fd):
    # B: pid 1 of the run's pid namespace (or a subreaper): runs the code as C, reaps orphans,
    # kills everything left once C is gone, then reports C's status to A.
    die_with_parent()
    if cfg["pid_namespace"]:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    lock_down()
    die_with_parent()  # a uid change clears it
    if cfg["kill_all"]:
        check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")
    code_pid = os.fork()
    if code_pid == 0:
        os.close(report_fd)
        try:
            os.chdir(cfg["cwd"])
            os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
        except OSError as e:
            sys.stderr.write(f"reinflow sandbox setup failed: cannot start {cfg['argv'][0]}: {e}\n")
            os._exit(125)
    while (reaped := os.wait())[0] != code_pid:
        pass
    while cfg["kill_all"]:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.wait()
        except ChildProcessError:
            break
    os.write(report_fd, str(os.waitstatus_to_exitcode(reaped[1])).encode())
    os._exit(0)


# A: root, in the trainer's session. Namespaces apply to A's children, so B does the rest.
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
die_with_parent()
if os.getppid() != cfg["parent_pid"]:
    os._exit(125)
os.umask(0o022)
if cfg["unshare_flags"]:
    check(libc.unshare(cfg["unshare_flags"]), "unshare")
if cfg["unshare_flags"] & CLONE_NEWNS:
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done below may leak to the host
    expose(cfg["expose"])
if cfg["private_tmp"]:
    private_tmp(cfg["workdir"])
read_fd, write_fd = os.pipe()
reaper_pid = os.fork()
if reaper_pid == 0:
    os.close(read_fd)
    reaper(write_fd)
os.close(write_fd)
report = os.read(read_fd, 64)
status = os.waitstatus_to_exitcode(os.waitpid(reaper_pid, 0)[1])
status = int(report) if report else status
if status < 0:  # die of the same signal, so the trainer sees what killed the code
    if -status != signal.SIGKILL:
        signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
    status = 128 - status
os._exit(status)
"""
