"""Run untrusted (model-written) Python code in a resource-limited, network-less, throwaway sandbox.

    result = run(code, stdin="", limits=Limits(cpu_s=2, wall_s=5))
    result.returncode, result.stdout, result.stderr, result.timed_out, result.truncated, result.isolation

How a run works: the caller starts a small supervisor, the *launcher* (sandbox_launcher.py run as a
script, `python -I -S sandbox_launcher.py --launch ...`), in a new session. The launcher sets up the
isolation (sandbox_isolation.py), forks the program (a fresh `python -I -S` interpreter in its own
process group), waits for it under the wall-clock limit, then kills whatever the program left behind
and reports back on a status pipe.
No preexec_fn runs in the caller, so calling run() from threaded processes (Ray actors, pools) is safe.

Layers, and what each falls back to (Result.isolation says which ones a run actually got):

limits    RLIMIT_CPU (SIGXCPU at the limit, SIGKILL one second later), RLIMIT_AS (memory),
          RLIMIT_NPROC (processes + threads), RLIMIT_NOFILE, RLIMIT_FSIZE, RLIMIT_STACK,
          RLIMIT_CORE=0, RLIMIT_MEMLOCK=0; a wall-clock limit enforced by the launcher (and, as a
          backstop, by the caller); stdout and stderr capped (the program is killed at the cap).
user      As root: every run gets a dedicated, otherwise unused uid/gid from a pool
          (RLENGINE_SANDBOX_UID_BASE, default 1_600_000_000; held through an abstract unix socket
          so concurrent runs never share one). RLIMIT_NPROC counts per uid, so this is what caps a
          fork bomb; the program cannot signal the caller (EPERM), read other processes'
          /proc/<pid>/environ, or write anybody's files; no_new_privs (setuid binaries stay
          unprivileged). If the interpreter lives where that uid cannot reach it (pyenv under a
          0700 /root), the blocking directory is covered by an empty tmpfs in the sandbox's mount
          namespace and the interpreter's install tree bind-mounted back read-only.
          Not root: the caller's own uid. RLIMIT_NPROC is then set to the user's current task
          count + max_procs: weaker (it shares the count with the user's other processes).
          Root never runs the program as root: if no interpreter is reachable, run() refuses.
net       A fresh network namespace: no interface is up, not even loopback, so every connect()
          fails (ENETUNREACH). As root: unshare(CLONE_NEWNET). Not root: inside an unprivileged
          user namespace, where the kernel allows that. FALLBACK when neither works: an audit hook
          in the program's interpreter that refuses non-AF_UNIX sockets, ctypes, exec and
          subprocesses. That is WEAK (e.g. a C extension bypasses it); isolation["net"] says so.
fs        A private mount namespace: / is made read-only recursively (mount_setattr, or per-mount
          remounts on kernels before 5.12), fresh size-capped tmpfs on /tmp, /var/tmp and
          /dev/shm, the working directory inside that /tmp; whatever the program writes vanishes
          with the namespace. FALLBACK (no mount namespace): the working directory is a fresh
          temporary directory owned by the sandbox uid, and after the run every file that uid
          owns under /tmp, /var/tmp and /dev/shm is deleted (as root; not root: working
          directory only, nothing stops writes elsewhere the user may write).
proc      With the mount namespace, as root, on Linux >= 5.8: a private /proc mounted with
          hidepid=2: the program sees only its own processes. (Before 5.8 hidepid was per
          superblock and would change the host's /proc, so it is not attempted.) Otherwise other
          users' /proc/<pid>/environ etc. are unreadable because of the uid, but their command
          lines stay visible.
ipc/uts   Fresh IPC namespace (SysV shm and queues die with it) and UTS namespace.
env       The program sees only PATH, LANG, LC_ALL, HOME and TMPDIR.
cleanup   The launcher is a child subreaper. When the program's main process ends (exit, crash,
          limit, wall time, output cap), its process group is killed, then every process of the
          run: as root, a helper running as the sandbox uid calls kill(-1, SIGKILL) until no
          process of that uid is left (this also gets processes that left the group with
          setsid()); not root, every descendant (orphans are re-parented to the subreaper) until
          the launcher has no children left. As root the same sweep runs before a uid is used,
          so nothing survives from a caller that was itself killed mid-run.

The program runs as `python -I -S` (no site-packages, no PYTHON* variables, nothing of the working
directory on sys.path) with exit()/quit() defined (site.py normally adds them).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

# The launcher side lives in sandbox_launcher.py (the script the launcher runs) and sandbox_isolation.py;
# this module is never imported there.
try:
    from reward_fns.sandbox_launcher import _CHILD_PATH, _procs_of_uid  # noqa: F401 - _procs_of_uid: for tests
except ImportError:  # loaded by file path from outside the project: use the launcher module beside this file
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "rlengine_reward_fns_sandbox_launcher", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                           "sandbox_launcher.py"))
    _launcher_module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _launcher_module
    _spec.loader.exec_module(_launcher_module)
    _CHILD_PATH, _procs_of_uid = _launcher_module._CHILD_PATH, _launcher_module._procs_of_uid

log = logging.getLogger(__name__)

_LAUNCHER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launcher.py")
_DEFAULT_UID_BASE = 1_600_000_000
_UID_SPAN = 4096
_BACKSTOP_GRACE_S = 10.0  # launcher start-up + sweep; the launcher enforces wall_s itself
_warned: set[str] = set()
_warn_lock = threading.Lock()


class SandboxError(RuntimeError):
    """The sandbox itself could not run the program (not: the program failed)."""


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 5.0  # CPU seconds (rounded up to whole seconds); SIGXCPU, then SIGKILL 1 s later
    wall_s: float = 10.0  # wall-clock seconds from the program's start
    memory_mb: int = 1024  # address space per process (RLIMIT_AS)
    max_procs: int = 16  # processes + threads of the run, the program's own included (RLIMIT_NPROC)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    stack_mb: int = 64  # RLIMIT_STACK (deep recursion with a raised recursion limit needs room)
    scratch_mb: int = 64  # size of each private tmpfs (/tmp with the workdir, /var/tmp, /dev/shm)
    max_output_bytes: int = 1 << 20  # per stream; reaching it kills the program, Result.truncated
    strict: bool = False  # refuse to run without a network namespace, mount namespace and dedicated uid

    def __post_init__(self):
        for name in ("cpu_s", "wall_s", "memory_mb", "max_procs", "max_open_files", "max_file_mb", "stack_mb",
                     "scratch_mb", "max_output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_procs < 2:
            raise ValueError("Limits.max_procs must be >= 2 (the program itself counts)")
        if self.max_open_files < 8:
            raise ValueError("Limits.max_open_files must be >= 8 (the interpreter needs a few)")


@dataclass
class Result:
    returncode: int | None  # exit status; -N when killed by signal N (as subprocess does)
    stdout: str
    stderr: str
    timed_out: bool  # the wall-clock limit was reached and the program killed
    killed_by_signal: int | None
    wall_s: float
    cpu_s: float = 0.0
    truncated: bool = False  # an output cap was reached (the program was killed there)
    cpu_exceeded: bool = False  # the CPU-time limit ended the program
    leftovers_killed: bool = False  # processes of the run outlived its main process and were killed
    isolation: dict = field(default_factory=dict)  # which layer was used (module docstring)
    uid: int | None = None  # the sandbox uid of this run (as root)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.truncated

    def to_dict(self) -> dict:
        return asdict(self)


def _uid_pool() -> tuple[int, int]:
    base = int(os.environ.get("RLENGINE_SANDBOX_UID_BASE", _DEFAULT_UID_BASE))
    span = _UID_SPAN
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [(int(a), int(c)) for a, _b, c in (line.split() for line in f if line.strip())]
    except (OSError, ValueError):
        return base, span
    if not ranges or any(s <= base and base + span <= s + c for s, c in ranges):
        return base, span
    s, c = max(ranges, key=lambda r: r[1])  # e.g. a container mapping only 0..65535
    span = max(1, min(span, c // 4))
    return s + c - 2 - span, span  # stay clear of 65534/65535 (nobody, -1 as 16 bit)


def _acquire_uid():
    """A uid no other run on this machine is using, held by binding an abstract unix socket (freed
    by the kernel when this process dies)."""
    import random
    import socket

    base, span = _uid_pool()
    start = random.randrange(span)  # (thread idents are stack addresses: useless modulo a power of two)
    for i in range(span):
        uid = base + (start + i) % span
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(f"\0rlengine-sandbox-uid-{uid}")
            return uid, s
        except OSError:
            s.close()
    raise SandboxError(f"no free sandbox uid in [{base}, {base + span})")


def _warn_once(msg: str) -> None:
    with _warn_lock:
        if msg in _warned:
            return
        _warned.add(msg)
    log.warning("sandbox: %s", msg)


def _kill(pid: int | None, group: bool) -> None:
    if pid is None:
        return
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except OSError:
        pass


def run(code: str, stdin: str | bytes = "", limits: Limits | None = None, *, python: str | None = None,
        _disable: tuple = ()) -> Result:
    """Run Python source `code` in the sandbox with `stdin` as its standard input.

    Never raises for anything the program does (crash, limits, output): that is in the Result.
    Raises SandboxError when the sandbox itself cannot run (e.g. strict mode without namespaces)."""
    import shutil
    import subprocess
    import tempfile

    limits = limits or Limits()
    if isinstance(stdin, str):
        stdin = stdin.encode()
    is_root = os.geteuid() == 0
    uid, uid_lock = _acquire_uid() if is_root else (None, None)
    tmp = tempfile.mkdtemp(prefix="rlengine-sandbox-")
    proc = None
    status_r = status_w = stdin_f = None
    started = exit_ev = error_ev = None
    truncated = backstop_hit = False
    bufs = {"stdout": bytearray(), "stderr": bytearray()}
    t0 = time.monotonic()
    try:
        os.chmod(tmp, 0o711)  # the sandbox uid may pass through to its workdir, not list or read
        code_path = os.path.join(tmp, "code.py")
        with open(os.open(code_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(code.encode("utf-8", "surrogateescape"))
        workdir = os.path.join(tmp, "work")
        os.mkdir(workdir, 0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)
        if stdin:
            stdin_path = os.path.join(tmp, "stdin")
            with open(os.open(stdin_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(stdin)
            stdin_f = open(stdin_path, "rb")
        status_r, status_w = os.pipe()
        launcher_python = os.path.realpath(sys.executable)
        cfg = {"status_fd": status_w, "uid": uid, "code_path": code_path, "workdir": workdir,
               "python": os.path.realpath(python) if python else launcher_python, "strict": limits.strict,
               "disable": list(_disable),
               **{k: getattr(limits, k) for k in ("cpu_s", "wall_s", "memory_mb", "max_procs", "max_open_files",
                                                  "max_file_mb", "stack_mb", "scratch_mb")}}
        proc = subprocess.Popen(
            [launcher_python, "-I", "-S", _LAUNCHER_FILE, "--launch", json.dumps(cfg)],
            stdin=stdin_f if stdin_f is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(status_w,), cwd=tmp, start_new_session=True,
            env={"PATH": _CHILD_PATH, "LANG": "C.UTF-8"})
        os.close(status_w)
        status_w = None
        started, exit_ev, error_ev, truncated, backstop_hit = _pump(proc, status_r, bufs, limits, t0)
    finally:
        if proc is not None and proc.poll() is None:
            _kill(proc.pid, group=True)
            if started:
                _kill(started.get("pid"), group=True)
            if uid is not None and exit_ev is None:
                _backstop_sweep(uid)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for f in (proc.stdout if proc else None, proc.stderr if proc else None, stdin_f):
            if f is not None:
                f.close()
        for fd in (status_r, status_w):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        if uid_lock is not None:
            uid_lock.close()

    stderr_text = bufs["stderr"].decode("utf-8", "replace")
    if error_ev is not None:
        raise SandboxError(error_ev.get("message", "sandbox refused to run"))
    if exit_ev is None and not backstop_hit:
        raise SandboxError(f"sandbox launcher exited with {proc.returncode} without a result; stderr:\n"
                           f"{stderr_text[-4000:]}")
    isolation = (started or {}).get("isolation", {})
    for key in ("net", "fs", "user"):
        if "WEAK" in isolation.get(key, "") or "not root" in isolation.get(key, ""):
            _warn_once(f"{key}: {isolation[key]}")
    ev = exit_ev or {}
    sig = ev.get("signal")
    cpu_s = float(ev.get("cpu_s", 0.0))
    cpu_limit = max(1, int(-(-float(limits.cpu_s) // 1)))
    return Result(
        returncode=ev.get("returncode"),
        stdout=bufs["stdout"].decode("utf-8", "replace"),
        stderr=stderr_text,
        timed_out=bool(ev.get("timed_out")) or backstop_hit,
        killed_by_signal=sig,
        wall_s=float(ev.get("wall_s", time.monotonic() - t0)),
        cpu_s=cpu_s,
        truncated=truncated,
        cpu_exceeded=sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= cpu_limit - 0.05),
        leftovers_killed=bool(ev.get("leftovers")),
        isolation=isolation,
        uid=uid,
    )


def _pump(proc, status_r: int, bufs: dict, limits: Limits, t0: float):
    """Read stdout/stderr (capped) and the launcher's status events until everything is closed."""
    import selectors

    sel = selectors.DefaultSelector()
    for fd, name in ((proc.stdout.fileno(), "stdout"), (proc.stderr.fileno(), "stderr"), (status_r, "status")):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    status = bytearray()
    started = exit_ev = error_ev = None
    truncated = kill_pending = False
    backstop = t0 + float(limits.wall_s) + _BACKSTOP_GRACE_S
    cap = int(limits.max_output_bytes)
    try:
        while sel.get_map():
            timeout = backstop - time.monotonic()
            if timeout <= 0:
                return started, exit_ev, error_ev, truncated, True
            for key, _ in sel.select(timeout):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                if key.data == "status":
                    status += data
                    while b"\n" in status:
                        line, _, rest = status.partition(b"\n")
                        status = bytearray(rest)
                        ev = json.loads(line)
                        if ev["event"] == "started":
                            started = ev
                            if kill_pending:
                                _kill(ev["pid"], group=True)
                        elif ev["event"] == "exit":
                            exit_ev = ev
                        else:
                            error_ev = ev
                    continue
                buf = bufs[key.data]
                room = cap - len(buf)
                if room > 0:
                    buf += data[:room]
                if len(data) > room and not truncated:
                    truncated = True  # stop the program; keep draining so its writes don't block
                    if started:
                        _kill(started["pid"], group=True)
                    else:
                        kill_pending = True
        return started, exit_ev, error_ev, truncated, False
    finally:
        sel.close()


def _backstop_sweep(uid: int) -> None:
    import subprocess

    try:
        subprocess.run([os.path.realpath(sys.executable), "-I", "-S", _LAUNCHER_FILE, "--sweep", str(uid)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=10, env={"PATH": _CHILD_PATH})
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("sandbox: backstop sweep of uid %s failed: %s", uid, e)


def isolation_report(limits: Limits | None = None) -> dict:
    """What this machine gives the sandbox (runs a trivial program)."""
    return run("pass", limits=limits or Limits(cpu_s=2, wall_s=10)).isolation
