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
import sys
import time

try:
    from reward_fns.sandbox_isolation import (_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS, _PR_SET_PDEATHSIG,
                                              _Refused, _libc, _mount_proc, _prctl, _prepare, _sibling)
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
                                                       _PR_SET_PDEATHSIG, _Refused, _libc,
                                                       _mount_proc, _prctl, _prepare, _sibling)

_sweep = _sibling("sandbox_sweep")  # the sweeps of the fallback without a PID namespace
_procs_of_uid, _sweep_uid, _sweep_descendants, _remove_files_of = (
    _sweep._procs_of_uid, _sweep._sweep_uid, _sweep._sweep_descendants, _sweep._remove_files_of)

_CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"

# Run before the program's code in the program's interpreter: exit()/quit() (site.py's, which -S
# skips), then the program itself as __main__ (its file name in tracebacks).
_GATE_FD = 3
# First, wait until the launcher has put this process into the run's cgroup (it does that while the
# interpreter starts up, which hides the cost of the move).
_GATE = (
    f"import posix as _p\n"
    f"if _p.read({_GATE_FD}, 1) != b'g':\n"
    f"    _p._exit(125)\n"
    f"_p.close({_GATE_FD})\n"
    f"del _p\n"
)
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


def _exec_program(cfg: dict, plan: dict, gate_r: int | None) -> None:
    """In the forked child: cgroup, limits, drop privileges, fresh keyring, seccomp, exec the
    program's interpreter (which first waits on the gate, where there is one). Never returns."""
    try:
        import resource

        os.setpgid(0, 0)
        cg = plan["cgroup"]
        if cg is not None and gate_r is None:
            cg.join_self()  # before anything of the program runs; an error here means no program
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
        if plan["keyring"]:
            _sibling("sandbox_seccomp").fresh_keyring(_libc())
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # set after the uid change, which clears it
        os.chdir(plan["workdir"])
        if gate_r is not None:
            if gate_r != _GATE_FD:
                os.dup2(gate_r, _GATE_FD)
            os.set_inheritable(_GATE_FD, True)
            os.closerange(_GATE_FD + 1, 1 << 16)
        else:
            os.closerange(3, 1 << 16)
        env = {"PATH": plan["path"], "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": plan["workdir"],
               "TMPDIR": "/tmp" if plan["fs_private"] else plan["workdir"]}
        prelude = (_GATE if gate_r is not None else "") + (_NET_HOOK if plan["net_hook"] else "") + _PRELUDE
        python = plan["python"]
        argv = [python, "-I", "-S", "-X", "utf8", "-c", prelude, plan["main_path"]]
        if plan["seccomp"]:
            _sibling("sandbox_seccomp").install_filter(_libc(), plan["seccomp"])
        os.execve(python, argv, env)
    except BaseException as e:  # noqa: BLE001 - report anything, then leave
        try:
            os.write(2, f"sandbox: could not start the program: {e!r}\n".encode())
        finally:
            os._exit(127)
    os._exit(127)


def _start_program(cfg: dict, plan: dict, iso: dict) -> int:
    """Fork the program. With a v1 cgroup it moves itself in before exec; otherwise (v2) it is moved
    from here while its interpreter starts, behind a gate that its prelude waits on."""
    cg = plan["cgroup"]
    if cg is None or cg.can_join_self:
        pid = os.fork()
        if pid == 0:
            _exec_program(cfg, plan, None)
        return pid
    gate_r, gate_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(gate_w)
        _exec_program(cfg, plan, gate_r)
    os.close(gate_r)
    try:
        if cg is not None:
            try:
                cg.join(pid)
            except OSError as e:
                os.kill(pid, signal.SIGKILL)  # never run the program outside the limit it was promised
                raise RuntimeError(f"could not move the program into its cgroup: {e}") from None
        os.write(gate_w, b"g")
    finally:
        os.close(gate_w)
    return pid


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


def _exit_event(st: int, ru, timed_out: bool, wall: float, leftovers: bool) -> dict:
    sig = os.WTERMSIG(st) if os.WIFSIGNALED(st) else None
    return {"event": "exit", "returncode": -sig if sig else os.WEXITSTATUS(st), "signal": sig,
            "timed_out": timed_out, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "leftovers": leftovers}


def _init_main(cfg: dict, plan: dict, life_r: int, report_w: int) -> None:
    """PID 1 of the run's PID namespace (a child of the launcher, root, outside the run's cgroup):
    mounts the namespace's /proc, runs the program, and at its end kills every other process of the
    namespace. Whatever happens, when this process exits the kernel kills all that is left in the
    namespace. Reports on `report_w`: a "ready" line, then the exit event. Never returns."""
    def report(obj: dict) -> None:
        os.write(report_w, (json.dumps(obj) + "\n").encode())

    try:
        os.setpgid(0, 0)  # the caller kills this group (this process) to stop a run at once
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([life_r], [], [], 0)[0]:  # the launcher died before PDEATHSIG was armed
            os._exit(1)
        os.close(life_r)
        os.close(int(cfg["status_fd"]))
        iso: dict = {}
        if plan["fs_private"]:
            _mount_proc("/proc", os.geteuid() == 0, iso)
            iso.pop("proc", None)  # the launcher's description (PID namespace) stands unless bind-mounted
        t0 = time.monotonic()
        pid = _start_program(cfg, plan, iso)
        report({"event": "ready", "isolation": iso})
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the pipes must close once the program's processes are gone
            os.dup2(devnull, fd)
        st, ru, timed_out = _wait_main(pid, float(cfg["wall_s"]))
        wall = time.monotonic() - t0
        leftovers = False
        for _ in range(1000):  # kill(-1) from a namespace's init: every other process in it
            try:
                os.kill(-1, signal.SIGKILL)
                leftovers = True
            except ProcessLookupError:
                pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                break
            time.sleep(0.0005)
        report(_exit_event(st, ru, timed_out, wall, leftovers))
    except BaseException:  # noqa: BLE001
        import traceback

        try:
            report({"event": "error", "message": "sandbox init failed:\n" + traceback.format_exc()})
        except OSError:
            pass
    os._exit(0)


def _read_line(fd: int, buf: bytearray, deadline: float) -> dict | None:
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        data = os.read(fd, 1 << 16)
        if not data:
            return None
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def _run_with_init(cfg: dict, plan: dict, emit) -> dict:
    life_r, life_w = os.pipe()
    report_r, report_w = os.pipe()
    ipid = os.fork()  # PID 1 of the new PID namespace
    if ipid == 0:
        os.close(life_w)
        os.close(report_r)
        _init_main(cfg, plan, life_r, report_w)
    os.close(life_r)
    os.close(report_w)
    buf = bytearray()
    wall = float(cfg["wall_s"])
    t0 = time.monotonic()
    ev = _read_line(report_r, buf, t0 + 30)
    if ev is None or ev["event"] != "ready":
        _kill_and_reap(ipid)
        return ev if ev is not None and ev["event"] == "error" else {
            "event": "error", "message": "sandbox init ended before starting the program"}
    emit({"event": "started", "pid": ipid, "isolation": {**plan["iso"], **ev["isolation"]}})
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the pipes must close once the program's processes are gone
        os.dup2(devnull, fd)
    ev = _read_line(report_r, buf, time.monotonic() + wall + 5)  # init enforces the wall limit itself
    _kill_and_reap(ipid)  # init's exit: the kernel kills (and waits for) everything left in the namespace
    if ev is None:  # init was killed (the caller stopping the run), or hung: the run ended without a status
        ev = {"event": "exit", "returncode": -signal.SIGKILL, "signal": signal.SIGKILL,
              "timed_out": time.monotonic() - t0 >= wall, "wall_s": time.monotonic() - t0, "cpu_s": 0.0,
              "leftovers": False}
    os.close(report_r)
    return ev


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def _run_direct(cfg: dict, plan: dict, emit) -> dict:
    """No PID namespace: the launcher is the program's parent and sweeps up after it."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if plan["drop_uid"]:
        _sweep_uid(int(cfg["uid"]), reap=True)  # anything left from a caller that was killed mid-run
    t0 = time.monotonic()
    pid = _start_program(cfg, plan, plan["iso"])
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
    if plan["cgroup"] is not None:  # the whole run at once, before the per-uid sweep
        leftovers = plan["cgroup"].destroy() or leftovers
        plan["cgroup"] = None
    swept = _sweep_uid(int(cfg["uid"]), reap=True) if plan["drop_uid"] else _sweep_descendants()
    return _exit_event(st, ru, timed_out, wall, leftovers or swept)


class _CallerGone(BaseException):
    pass


def _launcher(cfg: dict) -> None:
    status_fd = int(cfg["status_fd"])

    def emit(obj: dict) -> None:
        os.write(status_fd, (json.dumps(obj) + "\n").encode())

    def on_caller_death(signum, frame):
        raise _CallerGone("the caller died")

    plan = None
    try:
        # a caller killed mid-run (e.g. code.py's test runner on a timeout) must not leave the run
        # going with a uid it no longer holds: the cgroup is emptied below as for any failure
        signal.signal(signal.SIGTERM, on_caller_death)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != int(cfg.get("parent", os.getppid())):
            raise _CallerGone("the caller died before the launcher started")
        os.umask(0o022)
        try:
            plan = _prepare(cfg)
        except _Refused as e:
            emit({"event": "error", "message": str(e)})
            os._exit(0)
        ev = (_run_with_init if plan["pidns"] else _run_direct)(cfg, plan, emit)
        cg = plan["cgroup"]
        if cg is not None:
            ev.update(cg.stats())
            if cg.destroy():
                ev["leftovers"] = True
            plan["cgroup"] = None
        if plan["drop_uid"] and not plan["fs_private"]:
            ev["files_removed"] = _remove_files_of(int(cfg["uid"]))
        emit(ev)
    except BaseException:  # noqa: BLE001 - anything unexpected goes back to the caller, not to /dev/null
        import traceback

        try:
            emit({"event": "error", "message": "sandbox launcher failed:\n" + traceback.format_exc()})
        except OSError:
            pass
        if plan is not None and plan.get("cgroup") is not None:
            try:
                plan["cgroup"].destroy()
            except OSError:
                pass
    os._exit(0)


def _sweeper_main(uid: int) -> None:
    """`sandbox_launcher.py --sweep UID`: the caller's backstop when a launcher had to be killed."""
    try:
        _sibling("sandbox_cgroup").sweep(f"rlengine-sandbox-{uid}")
    except Exception:  # noqa: BLE001 - the uid sweep below still runs
        pass
    _sweep_uid(uid, reap=False)
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launch"]:
        _launcher(json.loads(sys.argv[2]))
    elif sys.argv[1:2] == ["--sweep"]:
        _sweeper_main(int(sys.argv[2]))
    sys.exit("usage: sandbox_launcher.py --launch CONFIG_JSON | --sweep UID  (internal; use run() instead)")
