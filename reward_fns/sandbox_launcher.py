"""Sandbox launcher, part 2: the script that runs one program (see sandbox.py for how a run works).

The caller starts `python -I -S sandbox_launcher.py --launch CONFIG_JSON` in a new session. The
launcher sets up the isolation (sandbox_isolation.py), forks the program (rlimits, uid drop,
no_new_privs, a fresh `python -I -S` interpreter in its own process group), waits for it under the
wall-clock limit, then kills whatever the program left behind and reports back on a status pipe.
`--sweep UID` is the caller's backstop when a launcher had to be killed.

Everything here runs in the launcher, so it only uses modules that are cheap to import (the launcher
starts once per run).
"""
from __future__ import annotations

import json
import os
import select
import signal
import stat
import sys
import time

try:
    from reward_fns.sandbox_isolation import (_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS, _PR_SET_PDEATHSIG,
                                              _SCRATCH_DIRS, _Refused, _prctl, _prepare)
except ImportError:  # run as the launcher script (`python -I -S`: the project is not on sys.path), or loaded by
    # file path from outside the project: use the module beside this file
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "rlengine_reward_fns_sandbox_isolation", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                            "sandbox_isolation.py"))
    _isolation = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _isolation
    _spec.loader.exec_module(_isolation)
    from rlengine_reward_fns_sandbox_isolation import (_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS,
                                                       _PR_SET_PDEATHSIG, _SCRATCH_DIRS, _Refused, _prctl,
                                                       _prepare)

_CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"

# Run before the program's code in the program's interpreter: exit()/quit() (site.py's, which -S
# skips), then the program itself as __main__ (its file name in tracebacks).
_PRELUDE = (
    "import builtins as _b, sys as _s\n"
    "def _quit(code=None):\n"
    "    raise SystemExit(code)\n"
    "_b.exit = _b.quit = _quit\n"
    "__file__ = _s.argv[1]\n"
    "_s.argv = _s.argv[1:]\n"
    "del _b, _s, _quit\n"
    "exec(compile(open(__file__, 'rb').read(), __file__, 'exec'))\n"
)

# The weak network fallback (no network namespace could be made): refuse what reaches the network
# from Python code. A program can get around this (e.g. a C extension), which is why
# isolation["net"] says "WEAK" when it is used.
_NET_HOOK = (
    "import sys as _s\n"
    "def _sandbox_deny(ev, args):\n"
    "    if ev == 'socket.__new__' and args[1] not in (1, -1):\n"
    "        raise PermissionError('network access is disabled in the sandbox')\n"
    "    if ev in ('socket.connect', 'socket.sendto', 'socket.bind') and not isinstance(args[1], (str, bytes)):\n"
    "        raise PermissionError('network access is disabled in the sandbox')\n"
    "    if ev in ('ctypes.dlopen', 'os.exec', 'os.posix_spawn', 'os.spawn', 'os.system', 'subprocess.Popen'):\n"
    "        raise PermissionError(ev + ' is disabled in the sandbox (no network namespace here)')\n"
    "_s.addaudithook(_sandbox_deny)\n"
    "del _s, _sandbox_deny\n"
)


def _exec_program(cfg: dict, plan: dict, status_fd: int) -> None:
    """In the forked child: limits, drop privileges, exec the program's interpreter. Never returns."""
    try:
        import resource

        os.setpgid(0, 0)
        os.close(status_fd)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        cpu = max(1, int(-(-float(cfg["cpu_s"]) // 1)))  # ceil: RLIMIT_CPU is whole seconds
        mib = 1 << 20
        limits = [
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_AS, int(cfg["memory_mb"]) * mib, int(cfg["memory_mb"]) * mib),
            (resource.RLIMIT_NPROC, plan["nproc"], plan["nproc"]),
            (resource.RLIMIT_NOFILE, int(cfg["max_open_files"]), int(cfg["max_open_files"])),
            (resource.RLIMIT_FSIZE, int(cfg["max_file_mb"]) * mib, int(cfg["max_file_mb"]) * mib),
            (resource.RLIMIT_STACK, int(cfg["stack_mb"]) * mib, int(cfg["stack_mb"]) * mib),
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_MEMLOCK, 0, 0),
        ]
        if hasattr(resource, "RLIMIT_MSGQUEUE"):
            limits.append((resource.RLIMIT_MSGQUEUE, 0, 0))
        for res, soft, hard in limits:
            resource.setrlimit(res, (soft, hard))
        if plan["drop_uid"]:
            uid = int(cfg["uid"])
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # set after the uid change, which clears it
        os.chdir(plan["workdir"])
        os.closerange(3, 1 << 16)
        env = {"PATH": _CHILD_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": plan["workdir"],
               "TMPDIR": "/tmp" if plan["fs_private"] else plan["workdir"]}
        prelude = (_NET_HOOK if plan["net_hook"] else "") + _PRELUDE
        python = plan["python"]
        os.execve(python, [python, "-I", "-S", "-X", "utf8", "-c", prelude, plan["main_path"]], env)
    except BaseException as e:  # noqa: BLE001 - report anything, then leave
        try:
            os.write(2, f"sandbox: could not start the program: {e!r}\n".encode())
        finally:
            os._exit(127)
    os._exit(127)


def _procs_of_uid(uid: int, exclude: int, zombies: bool = True) -> list[int]:
    """Pids whose real uid is `uid`."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != exclude:
            try:
                with open(f"/proc/{name}/status") as f:
                    zombie = False
                    for line in f:
                        if line.startswith("State:"):
                            zombie = line.split()[1] in ("Z", "X")
                        elif line.startswith("Uid:"):
                            if int(line.split()[1]) == uid and (zombies or not zombie):
                                out.append(int(name))
                            break
            except (OSError, ValueError):
                continue
    return out


def _sweep_uid(uid: int, reap: bool) -> bool:
    """Kill every process of `uid`: a helper running as that uid calls kill(-1, SIGKILL), which
    reaches exactly the processes it may signal, i.e. those of its own uid, until /proc shows that
    no live one is left (kill(-1) itself cannot tell: it reports success while any other process
    exists). Zombies are dead already: with `reap` (in the launcher, a subreaper, to which every
    orphan of the run is re-parented) they are reaped, meanwhile and once more at the end; zombies
    of a killed launcher's orphans are init's to reap. Returns whether there was anything to kill."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            me = os.getpid()
            found = bool(_procs_of_uid(uid, me, zombies=False))
            for _ in range(5000):
                try:
                    os.kill(-1, signal.SIGKILL)
                except OSError:
                    pass
                if not _procs_of_uid(uid, me, zombies=False):
                    code = 1 if found else 0
                    break
                found = True
                time.sleep(0.001)
        finally:
            os._exit(code)
    while True:
        try:
            p, st = os.waitpid(-1 if reap else pid, 0)
        except ChildProcessError:
            return False
        except InterruptedError:
            continue
        if p == pid:
            if reap:
                try:
                    while os.waitpid(-1, os.WNOHANG)[0]:
                        pass
                except ChildProcessError:
                    pass
            return os.WIFEXITED(st) and os.WEXITSTATUS(st) in (1, 3)


def _children_of(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            if int(text[text.rfind(")") + 2:].split()[1]) == ppid:
                out.append(int(name))
    return out


def _sweep_descendants() -> bool:
    """Kill every descendant of the launcher (a subreaper: orphans are re-parented to it) until it
    has no children left."""
    found = False
    me = os.getpid()
    for _ in range(5000):
        kids = _children_of(me)
        for k in kids:
            found = True
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while True:
                p, _st = os.waitpid(-1, os.WNOHANG)
                if p == 0:
                    break
        except ChildProcessError:
            return found
        time.sleep(0.0005)
    return found


def _remove_files_of(uid: int, roots=_SCRATCH_DIRS) -> int:
    """Fallback without a mount namespace: delete what the sandbox uid created in the scratch dirs."""
    removed = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames + dirnames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                    if st.st_uid != uid:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        import shutil

                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        os.unlink(p)
                    removed += 1
                except OSError:
                    pass
    return removed


def _wait_main(pid: int, wall_s: float) -> tuple[int, object, bool]:
    """Wait for the program's main process under the wall-clock limit, reaping orphans meanwhile.
    Returns (wait status, rusage, timed_out)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    deadline = time.monotonic() + wall_s
    timed_out = False
    while True:
        while True:
            try:
                p, st, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                raise RuntimeError("the program's process disappeared") from None
            if p == 0:
                break
            if p == pid:
                if pidfd is not None:
                    os.close(pidfd)
                return st, ru, timed_out
        remaining = deadline - time.monotonic()
        if remaining <= 0 and not timed_out:
            timed_out = True
            for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                except OSError:
                    pass
            continue
        wait = 0.05 if timed_out else min(max(remaining, 0.0), 0.05)
        if pidfd is not None:
            try:
                select.select([pidfd], [], [], wait)
            except InterruptedError:
                pass
        else:
            time.sleep(min(wait, 0.005))


def _launcher(cfg: dict) -> None:
    status_fd = int(cfg["status_fd"])

    def emit(obj: dict) -> None:
        os.write(status_fd, (json.dumps(obj) + "\n").encode())

    try:
        os.umask(0o022)
        try:
            plan = _prepare(cfg)
        except _Refused as e:
            emit({"event": "error", "message": str(e)})
            os._exit(0)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        if plan["drop_uid"]:
            _sweep_uid(int(cfg["uid"]), reap=True)  # anything left from a caller that was killed mid-run
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _exec_program(cfg, plan, status_fd)
        emit({"event": "started", "pid": pid, "isolation": plan["iso"]})
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the pipes must close once the program's processes are gone
            os.dup2(devnull, fd)
        st, ru, timed_out = _wait_main(pid, float(cfg["wall_s"]))
        wall = time.monotonic() - t0
        try:
            os.killpg(pid, 0)  # anything of the program's process group still there?
            leftovers = True
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            leftovers = False
        swept = _sweep_uid(int(cfg["uid"]), reap=True) if plan["drop_uid"] else _sweep_descendants()
        leftovers = leftovers or swept
        removed = 0
        if plan["drop_uid"] and not plan["fs_private"]:
            removed = _remove_files_of(int(cfg["uid"]))
        sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else None
        emit({"event": "exit", "returncode": -sig if sig else os.WEXITSTATUS(st), "signal": sig,
              "timed_out": timed_out, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
              "leftovers": leftovers, "files_removed": removed})
    except BaseException:  # noqa: BLE001 - anything unexpected goes back to the caller, not to /dev/null
        import traceback

        try:
            emit({"event": "error", "message": "sandbox launcher failed:\n" + traceback.format_exc()})
        except OSError:
            pass
    os._exit(0)


def _sweeper_main(uid: int) -> None:
    """`sandbox_launcher.py --sweep UID`: the caller's backstop when a launcher had to be killed."""
    _sweep_uid(uid, reap=False)
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launch"]:
        _launcher(json.loads(sys.argv[2]))
    elif sys.argv[1:2] == ["--sweep"]:
        _sweeper_main(int(sys.argv[2]))
    sys.exit("usage: sandbox_launcher.py --launch CONFIG_JSON | --sweep UID  (internal; use run() instead)")
