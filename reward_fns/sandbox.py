"""Run untrusted (model-written) Python code in a resource-limited, network-less, throwaway sandbox.

    result = run(code, stdin="", limits=Limits(cpu_s=2, wall_s=5))
    result.returncode, result.stdout, result.stderr, result.timed_out, result.truncated, result.isolation

    with Session(code, limits) as s:       # the same run, talked to while it runs (code_remote.py)
        s.send(b"request\n"); line = s.recv_line(timeout=5)

How a run works: the caller starts a small supervisor, the *launcher* (sandbox_launcher.py run as a
script, `python -I -S sandbox_launcher.py --launch ...`), in a new session. The launcher sets up the
isolation (sandbox_isolation.py with sandbox_cgroup.py, sandbox_root.py, sandbox_seccomp.py), forks
the *init* of the run's PID namespace, which forks the program (a fresh `python -I -S` interpreter
in its own process group), waits for it under the wall-clock limit, then kills everything else in
the namespace; the launcher reports back on a status pipe ("started" carries init's pid: killing
its process group ends the whole run at once).
No preexec_fn runs in the caller, so calling run() from threaded processes (Ray actors, pools) is safe.

Layers, and what each falls back to (Result.isolation says which ones a run actually got; a value
with "WEAK" marks a fallback):

limits    RLIMIT_CPU (SIGXCPU at the limit, SIGKILL one second later), RLIMIT_AS (memory, per
          process), RLIMIT_NPROC (processes + threads), RLIMIT_NOFILE, RLIMIT_FSIZE, RLIMIT_STACK,
          RLIMIT_CORE=0, RLIMIT_MEMLOCK=0, RLIMIT_MSGQUEUE=0; a wall-clock limit enforced by init
          (and, as backstops, by the launcher and the caller); stdout and stderr capped (the
          program is killed at the cap).
memory    One cgroup per run, below the launcher's own (isolation["memory"]): memory_mb for all of
          the run's processes together, page cache, tmpfs, memfd and shared memory included
          (v1: memory.limit_in_bytes and memory.memsw.limit_in_bytes; v2: memory.max,
          memory.swap.max=0, memory.oom.group), pids.max = max_procs; the cgroup OOM killer
          SIGKILLs at the limit. The program moves itself in before exec (v1: `tasks`, which
          avoids the global lock; v2: moved while its interpreter starts, behind a gate in the
          prelude). Root only (or a delegated v2 tree). FALLBACK: RLIMIT_AS per process only
          (WEAK: several processes, memfd or shared memory add up), every tmpfs sized, new user
          namespaces denied by seccomp.
user      As root: every run gets a dedicated, otherwise unused uid/gid from a pool
          (RLENGINE_SANDBOX_UID_BASE, default 1_600_000_000; held through an abstract unix socket
          so concurrent runs never share one). RLIMIT_NPROC counts per uid, so this caps a fork
          bomb; the program cannot signal the caller, read other processes' /proc/<pid>/environ,
          or write anybody's files; no_new_privs (setuid binaries stay unprivileged).
          Not root: the caller's own uid. RLIMIT_NPROC is then set to the user's current task
          count + max_procs: weaker (it shares the count with the user's other processes).
          Root never runs the program as root: if no interpreter is reachable, run() refuses.
net       A fresh network namespace: no interface is up, not even loopback, so every connect()
          fails (ENETUNREACH); abstract unix sockets of the host are out of reach too. As root:
          unshare(CLONE_NEWNET). Not root: inside an unprivileged user namespace, where the
          kernel allows that. FALLBACK when neither works: an audit hook in the program's
          interpreter that refuses non-AF_UNIX sockets, ctypes, exec and subprocesses. That is
          WEAK (e.g. a C extension bypasses it); isolation["net"] says so.
fs        A private mount namespace with a new root (sandbox_root.py): a read-only tmpfs holding
          only the interpreter's install tree (site-packages hidden), /usr/lib and /usr/lib64 as
          read-only overlay mounts (own inodes: no flock/fcntl lock is shared with the host or
          other runs), /dev with fresh null/zero/full/random/urandom nodes, a private /etc
          (passwd, group, hosts), /proc; no /sys, /run, /home, project or data. Fresh
          size-capped tmpfs on /tmp (the working directory /tmp/sandbox), /var/tmp and
          /dev/shm; then pivot_root (chroot where refused) with the old root detached. Whatever
          the program writes vanishes with the namespace. The directories above the interpreter
          tree are fresh, so an interpreter under a 0700 /root is reachable by the sandbox uid.
          FALLBACKS: no overlayfs: read-only bind mounts (WEAK: host inodes, locks shared); no
          new root: / made read-only recursively (mount_setattr, or per-mount remounts before
          5.12) with the tmpfs above (WEAK: host files visible); no mount namespace: the working
          directory is a fresh temporary directory owned by the sandbox uid, and after the run
          every file that uid owns under /tmp, /var/tmp and /dev/shm is deleted (as root; not
          root: working directory only, nothing stops writes elsewhere the user may write).
pid/proc  A PID namespace whose init is a child of the launcher (root, outside the run's cgroup
          and out of the program's reach); its /proc, mounted from inside, with hidepid=2 (Linux
          >= 5.8): the program sees only the run's own processes. FALLBACK (no PID namespace,
          WEAK): the host's PID namespace, /proc with hidepid=2 where the mount namespace allows.
ipc/uts   Fresh IPC namespace (SysV shm and queues die with it) and UTS namespace.
keyring   A fresh anonymous session keyring per run, and the uid's persistent user keyrings
          emptied first (a uid is reused by later runs).
seccomp   A classic-BPF filter (sandbox_seccomp.py; x86_64 and aarch64) installed just before the
          program's exec: EPERM for new namespaces (unshare, setns, clone with CLONE_NEW*; clone3
          gets ENOSYS so libc falls back to clone), the mount API, keyctl/add_key/request_key,
          ptrace, process_vm_*, bpf, perf_event_open, userfaultfd, io_uring, kexec, modules,
          open_by_handle_at, swap, reboot, syslog, acct, quotactl; other syscall ABIs ENOSYS.
env       The program sees only PATH (the interpreter's bin first), LANG, LC_ALL, HOME, TMPDIR.
cleanup   With the PID namespace: when the program's main process ends (exit, crash, limit, wall
          time, output cap), init kills every other process in the namespace (kill(-1) from a
          namespace's init reaches exactly those) and reaps them; when init exits, for whatever
          reason, the kernel kills anything left; a killed launcher takes init with it
          (PDEATHSIG). Then the run's cgroup is emptied (frozen first) and removed. FALLBACK (no
          PID namespace, WEAK): the launcher, a child subreaper, kills the process group, the
          cgroup, then every process of the run: as root, a helper running as the sandbox uid
          calls kill(-1, SIGKILL) until none is left (a process of the run can kill that
          helper, hence WEAK); not root, every descendant. As root that sweep also runs before a
          uid is used, and `--sweep UID` is the caller's backstop for a killed launcher.

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
    memory_mb: int = 1024  # per process (RLIMIT_AS) and, where a cgroup is possible, for the whole run
    max_procs: int = 16  # processes + threads of the run, the program's own included (RLIMIT_NPROC, pids.max)
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

    def failure(self) -> str:
        """Why the program did not end well, in a few words (the last stderr line for an exit)."""
        if self.timed_out:
            return "wall-clock timeout"
        if self.cpu_exceeded:
            return "CPU time limit"
        if self.truncated:
            return "output limit"
        if self.killed_by_signal:
            return f"killed by signal {self.killed_by_signal}"
        last = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return f"exit {self.returncode}" + (f": {last[-1][:200]}" if last else "")


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
    s = Session(code, limits, stdin=stdin, python=python, _disable=_disable)
    try:
        s._pump_until(None)
    except BaseException:  # e.g. the caller's own timeout: nothing of the run may outlive it
        try:
            s.kill()
        except SandboxError:
            pass
        raise
    return s.close()


class Session:
    """A sandboxed program that the caller talks to while it runs: lines written to its stdin
    (`send`), lines read from its stdout (`recv_line`). `close()` ends it (stdin closed, then the
    usual wall-clock limit, cleanup and Result); use it as a context manager. Same limits and
    isolation as `run()`, which is a Session with all of its stdin given up front (from a file).

    Nothing the program writes is trusted: `recv_line` hands back bytes for the caller to parse."""

    def __init__(self, code: str, limits: Limits | None = None, *, stdin: str | bytes | None = None,
                 python: str | None = None, _disable: tuple = ()):
        import subprocess
        import tempfile

        self.limits = limits = limits or Limits()
        if isinstance(stdin, str):
            stdin = stdin.encode("utf-8", "surrogatepass")
        is_root = os.geteuid() == 0
        self.uid, self._uid_lock = _acquire_uid() if is_root else (None, None)
        self._tmp = tempfile.mkdtemp(prefix="rlengine-sandbox-")
        self._proc = None
        self._status_r = status_w = self._stdin_f = None
        self._started = self._exit_ev = self._error_ev = None
        self._truncated = self._kill_pending = self._backstop_hit = self._closed = False
        self._bufs = {"stdout": bytearray(), "stderr": bytearray()}
        self._status = bytearray()
        self._read_at = 0  # recv_line's position in stdout
        self._sel = None
        self._t0 = time.monotonic()
        try:
            tmp = self._tmp
            os.chmod(tmp, 0o711)  # the sandbox uid may pass through to its workdir, not list or read
            code_path = os.path.join(tmp, "code.py")
            with open(os.open(code_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                # a lone surrogate cannot be UTF-8: written as is, the interpreter refuses the source
                f.write(code.encode("utf-8", "surrogatepass"))
            workdir = os.path.join(tmp, "work")
            os.mkdir(workdir, 0o700)
            if self.uid is not None:
                os.chown(workdir, self.uid, self.uid)
            if stdin is None:
                stdin_arg = subprocess.PIPE
            elif stdin:
                stdin_path = os.path.join(tmp, "stdin")
                with open(os.open(stdin_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(stdin)
                stdin_arg = self._stdin_f = open(stdin_path, "rb")
            else:
                stdin_arg = subprocess.DEVNULL
            self._status_r, status_w = os.pipe()
            launcher_python = os.path.realpath(sys.executable)
            uid = self.uid
            cfg = {"status_fd": status_w, "uid": uid, "parent": os.getpid(), "code_path": code_path, "workdir": workdir,
                   "python": os.path.realpath(python) if python else launcher_python, "strict": limits.strict,
                   "disable": list(_disable),
                   **{k: getattr(limits, k) for k in ("cpu_s", "wall_s", "memory_mb", "max_procs", "max_open_files",
                                                      "max_file_mb", "stack_mb", "scratch_mb")}}
            self._proc = subprocess.Popen(
                [launcher_python, "-I", "-S", _LAUNCHER_FILE, "--launch", json.dumps(cfg)],
                stdin=stdin_arg, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,), cwd=tmp,
                start_new_session=True, env={"PATH": _CHILD_PATH, "LANG": "C.UTF-8"})
            os.close(status_w)
            status_w = None
            self._open_streams()
        except BaseException:
            if status_w is not None:
                os.close(status_w)
            self.close()
            raise

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.kill()

    def send(self, data: bytes, timeout: float = 10.0) -> bool:
        """Write to the program's stdin; False when it no longer reads (exited, or did not take the
        bytes within `timeout` seconds)."""
        import select

        pipe = self._proc.stdin if self._proc is not None else None
        if pipe is None or pipe.closed:
            return False
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                return False
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
            except OSError:  # EPIPE: the program is gone
                return False
        return True

    def kill(self) -> Result | None:
        """Stop the program now (it is not waited for) and close the session."""
        if self._closed:
            return None
        if self._started:
            _kill(self._started.get("pid"), group=True)
        else:
            self._kill_pending = True
        return self.close()

    def recv_line(self, timeout: float) -> bytes | None:
        """The program's next stdout line (without its newline), or None when none came within
        `timeout` seconds or the program's stdout closed first."""
        deadline = time.monotonic() + timeout
        out = self._bufs["stdout"]
        while True:
            nl = out.find(b"\n", self._read_at)
            if nl >= 0:
                line = bytes(out[self._read_at:nl])
                self._read_at = nl + 1
                return line
            if self._truncated or not self._pump_until(deadline, until_stdout=True):
                return None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and not self._truncated

    def _open_streams(self) -> None:
        import selectors

        self._sel = selectors.DefaultSelector()
        for fd, name in ((self._proc.stdout.fileno(), "stdout"), (self._proc.stderr.fileno(), "stderr"),
                         (self._status_r, "status")):
            os.set_blocking(fd, False)
            self._sel.register(fd, selectors.EVENT_READ, name)

    def _pump_until(self, deadline: float | None, until_stdout: bool = False) -> bool:
        """Read stdout/stderr (capped) and the launcher's status events until everything is closed
        (False), `deadline` passes (False), or, with `until_stdout`, new stdout bytes came (True)."""
        sel = self._sel
        backstop = self._t0 + float(self.limits.wall_s) + _BACKSTOP_GRACE_S
        cap = int(self.limits.max_output_bytes)
        while sel.get_map():
            end = backstop if deadline is None else min(deadline, backstop)
            timeout = end - time.monotonic()
            if timeout <= 0:
                self._backstop_hit = self._backstop_hit or end == backstop
                return False
            got_stdout = False
            for key, _ in sel.select(timeout):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                if key.data == "status":
                    self._on_status(data)
                    continue
                buf = self._bufs[key.data]
                room = cap - len(buf)
                if room > 0:
                    buf += data[:room]
                    got_stdout = got_stdout or key.data == "stdout"
                if len(data) > room and not self._truncated:
                    self._truncated = True  # stop the program; keep draining so its writes don't block
                    if self._started:
                        _kill(self._started["pid"], group=True)
                    else:
                        self._kill_pending = True
            if until_stdout and got_stdout:
                return True
        return False

    def _on_status(self, data: bytes) -> None:
        self._status += data
        while b"\n" in self._status:
            line, _, rest = self._status.partition(b"\n")
            self._status = bytearray(rest)
            ev = json.loads(line)
            if ev["event"] == "started":
                self._started = ev
                if self._kill_pending:
                    _kill(ev["pid"], group=True)
            elif ev["event"] == "exit":
                self._exit_ev = ev
            else:
                self._error_ev = ev

    def close(self) -> Result | None:
        """End the run (stdin closed; the program then has what is left of its wall-clock limit)
        and clean up; the Result, or SandboxError as for `run()`. Idempotent (None after the first)."""
        import shutil
        import subprocess

        if self._closed:
            return None
        self._closed = True
        proc = self._proc
        try:
            if proc is not None and proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            if self._sel is not None:
                self._pump_until(None)
        finally:
            if proc is not None and proc.poll() is None:
                _kill(proc.pid, group=True)
                if self._started:
                    _kill(self._started.get("pid"), group=True)
                if self.uid is not None and self._exit_ev is None:
                    _backstop_sweep(self.uid)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if self._sel is not None:
                self._sel.close()
            for f in (proc.stdout if proc else None, proc.stderr if proc else None, self._stdin_f):
                if f is not None:
                    f.close()
            if self._status_r is not None:
                os.close(self._status_r)
            shutil.rmtree(self._tmp, ignore_errors=True)
            if self._uid_lock is not None:
                self._uid_lock.close()
        if proc is None:
            return None
        return self._result()

    def _result(self) -> Result:
        stderr_text = self._bufs["stderr"].decode("utf-8", "replace")
        if self._error_ev is not None:
            raise SandboxError(self._error_ev.get("message", "sandbox refused to run"))
        if self._exit_ev is None and not self._backstop_hit:
            raise SandboxError(f"sandbox launcher exited with {self._proc.returncode} without a result; stderr:\n"
                               f"{stderr_text[-4000:]}")
        isolation = (self._started or {}).get("isolation", {})
        for key in ("net", "fs", "user", "pid", "memory", "seccomp", "keyring", "cleanup"):
            if "WEAK" in isolation.get(key, "") or "not root" in isolation.get(key, ""):
                _warn_once(f"{key}: {isolation[key]}")
        ev = self._exit_ev or {}
        sig = ev.get("signal")
        cpu_s = float(ev.get("cpu_s", 0.0))
        cpu_limit = max(1, int(-(-float(self.limits.cpu_s) // 1)))
        return Result(
            returncode=ev.get("returncode"),
            stdout=self._bufs["stdout"].decode("utf-8", "replace"),
            stderr=stderr_text,
            timed_out=bool(ev.get("timed_out")) or self._backstop_hit,
            killed_by_signal=sig,
            wall_s=float(ev.get("wall_s", time.monotonic() - self._t0)),
            cpu_s=cpu_s,
            truncated=self._truncated,
            cpu_exceeded=sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= cpu_limit - 0.05),
            leftovers_killed=bool(ev.get("leftovers")),
            isolation=isolation,
            uid=self.uid,
        )


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
