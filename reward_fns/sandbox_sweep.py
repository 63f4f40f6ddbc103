"""Sandbox launcher, the fallback sweeps: what kills and deletes the leftovers of a run where no PID
namespace (and no cgroup) could do that (see sandbox.py), and the caller's `--sweep UID` backstop.

Everything here runs in the launcher, so it only uses modules that are cheap to import.
"""
from __future__ import annotations

import os
import signal
import stat
import time

_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # as in sandbox_isolation.py


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
    """Fallback without a mount namespace: delete what the sandbox uid created in the scratch dirs.

    The uid can only have created entries in directories it may write (its own, or world-writable
    ones like /tmp) below directories it may traverse, so only those are stat'ed: a /tmp holding
    hundreds of thousands of other files (Ray sessions, compiler caches) costs a directory walk, not
    a stat per file. (Walking everything took seconds on a busy CI machine.)"""
    import shutil

    removed = 0
    stack = list(roots)
    while stack:
        d = stack.pop()
        try:
            st = os.lstat(d)
            own = st.st_uid == uid
            if not (own or st.st_mode & stat.S_IXOTH):
                continue
            may_write = own or bool(st.st_mode & stat.S_IWOTH)
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
                if not (is_dir or may_write):
                    continue
                if e.stat(follow_symlinks=False).st_uid != uid:
                    if is_dir:
                        stack.append(e.path)
                    continue
                if is_dir:
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
                removed += 1
            except OSError:
                pass
    return removed
