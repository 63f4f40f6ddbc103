"""Sandbox launcher, one cgroup per run: a memory limit and a task limit for all of a run's processes
together (see sandbox.py).

cgroup v1 (memory + memsw, pids, freezer: this machine kind) or cgroup v2 (memory.max,
memory.swap.max=0, pids.max, cgroup.kill), created below the launcher's own cgroup as
`rlengine-sandbox-<uid>` (the uid is held by exactly one run, so a group of that name that already
exists was left by a killed launcher and is emptied and replaced). The program's first process is
moved in before it runs any of the program's code; everything it starts inherits the group, and the
memory of tmpfs, memfd and shared memory pages is charged to the group that touches them. After the
run the group is emptied (v2: cgroup.kill; v1: frozen, every task killed, thawed) and removed.

Everything works through directory file descriptors opened at creation, so cleanup still works
after the launcher has pivoted into the sandbox root (where /sys is not mounted). Root only (or a
delegated v2 subtree); elsewhere `RunCgroup.create` raises OSError and the caller reports the weaker
mode.
"""
from __future__ import annotations

import errno
import os
import signal
import time

_CONTROLLERS_V1 = ("memory", "pids", "freezer")


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of the cgroup mounts."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] in ("cgroup", "cgroup2"):
                opts = set(rfields[2].split(",")) if len(rfields) > 2 else set()
                out.append((rfields[0], fields[3], fields[4].replace("\\040", " "), opts))
    return out


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                for c in parts[1].split(",") if parts[1] else [""]:
                    out[c.replace("name=", "name:")] = parts[2]
    return out


def _dir_for(mount_root: str, mount_point: str, own: str) -> str:
    rel = own[len(mount_root):] if mount_root != "/" and own.startswith(mount_root) else own
    d = mount_point.rstrip("/") + "/" + rel.strip("/")
    return d.rstrip("/") if os.path.isdir(d) else mount_point


class _Group:
    def __init__(self, parent: str, name: str):
        self.parent_fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.name = name
        self.path = f"{parent}/{name}"

    def write(self, file: str, value: str) -> None:
        fd = os.open(f"{self.name}/{file}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.parent_fd)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def read(self, file: str) -> str:
        fd = os.open(f"{self.name}/{file}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.parent_fd)
        try:
            return os.read(fd, 1 << 16).decode()
        finally:
            os.close(fd)

    def has(self, file: str) -> bool:
        try:
            os.stat(f"{self.name}/{file}", dir_fd=self.parent_fd)
            return True
        except OSError:
            return False

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in self.read("cgroup.procs").split()]
        except OSError:
            return []

    def mkdir(self) -> None:
        try:
            os.mkdir(self.name, 0o755, dir_fd=self.parent_fd)
        except FileExistsError:  # left by a launcher that was killed: empty it, start afresh
            self.empty(None)
            self.rmdir()
            os.mkdir(self.name, 0o755, dir_fd=self.parent_fd)

    def empty(self, freezer: "_Group | None") -> bool:
        """Kill every task in the group (frozen first, where a freezer group is given)."""
        killed = False
        for attempt in range(2000):
            pids = self.pids()
            if not pids:
                return killed
            killed = True
            if freezer is not None and attempt == 0:
                try:
                    freezer.write("freezer.state", "FROZEN")
                    for _ in range(200):
                        if freezer.read("freezer.state").strip() == "FROZEN":
                            break
                        time.sleep(0.001)
                    pids = self.pids()
                except OSError:
                    freezer = None
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            if freezer is not None:
                try:
                    freezer.write("freezer.state", "THAWED")  # SIGKILL is delivered once thawed
                except OSError:
                    pass
                freezer = None
            time.sleep(0.001)
        return killed

    def rmdir(self) -> None:
        for _ in range(500):
            try:
                os.rmdir(self.name, dir_fd=self.parent_fd)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.002)

    def close(self) -> None:
        os.close(self.parent_fd)

    def discard(self) -> None:
        """rmdir where possible (a group still busy stays), then close: the end of every group."""
        try:
            self.rmdir()
        except OSError:
            pass
        self.close()


class RunCgroup:
    def __init__(self, version: int, groups: dict[str, _Group], desc: str):
        self.version, self.groups, self.desc = version, groups, desc
        self.procs_fds = [os.open(f"{g.name}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=g.parent_fd)
                          for g in self._distinct()]
        # v1: a single-threaded process that writes "0" to `tasks` moves itself without the global
        # threadgroup lock (cgroup.procs, and v2, wait for an RCU grace period: ~10-20 ms)
        self.tasks_fds = [os.open(f"{g.name}/tasks", os.O_WRONLY | os.O_CLOEXEC, dir_fd=g.parent_fd)
                          for g in self._distinct()] if version == 1 else []

    def _distinct(self) -> list[_Group]:
        seen, out = set(), []
        for g in self.groups.values():
            if g.path not in seen:
                seen.add(g.path)
                out.append(g)
        return out

    @classmethod
    def create(cls, name: str, memory_mb: int, max_procs: int, prefer: str = "") -> "RunCgroup":
        """Raises OSError when this machine (or this user) gives no memory cgroup."""
        mounts, own = _mounts(), _own_paths()
        errors = []
        order = (cls._v1, cls._v2) if prefer != "v2" else (cls._v2, cls._v1)
        for make in order:
            try:
                return make(mounts, own, name, memory_mb, max_procs)
            except OSError as e:
                errors.append(f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or str(e)))
        raise OSError(errno.ENOTSUP, "; ".join(errors))

    @classmethod
    def _v1(cls, mounts, own, name, memory_mb, max_procs) -> "RunCgroup":
        groups: dict[str, _Group] = {}
        try:
            for ctrl in _CONTROLLERS_V1:
                m = next((m for m in mounts if m[0] == "cgroup" and ctrl in m[3]), None)
                if m is None:
                    if ctrl == "memory":
                        raise OSError(errno.ENOENT, "cgroup v1: no memory controller mounted")
                    continue
                parent = _dir_for(m[1], m[2], own.get(ctrl, "/"))
                same = next((g for g in groups.values() if g.path == f"{parent}/{name}"), None)
                if same is not None:
                    groups[ctrl] = same
                    continue
                g = _Group(parent, name)
                g.mkdir()
                groups[ctrl] = g
            mem = groups["memory"]
            limit = str(int(memory_mb) << 20)
            mem.write("memory.limit_in_bytes", limit)
            parts = [f"memory {memory_mb} MiB"]
            if mem.has("memory.memsw.limit_in_bytes"):
                mem.write("memory.memsw.limit_in_bytes", limit)
                parts[0] += " (memory + swap)"
            if "pids" in groups:
                groups["pids"].write("pids.max", str(int(max_procs)))
                parts.append(f"pids.max {max_procs}")
            if "freezer" in groups:
                parts.append("freezer")
            return cls(1, groups, "cgroup v1: " + ", ".join(parts))
        except OSError:
            for g in {g.path: g for g in groups.values()}.values():
                g.discard()
            raise

    @classmethod
    def _v2(cls, mounts, own, name, memory_mb, max_procs) -> "RunCgroup":
        m = next((m for m in mounts if m[0] == "cgroup2"), None)
        if m is None:
            raise OSError(errno.ENOENT, "no cgroup2 mount")
        # below the launcher's own cgroup; failing that (it holds processes, so its children cannot
        # get controllers), below the root of the hierarchy, which is exempt from that rule
        first = _dir_for(m[1], m[2], own.get("", "/"))
        error = None
        for parent in dict.fromkeys((first, m[2].rstrip("/") or "/")):
            try:
                return cls._v2_at(parent, name, memory_mb, max_procs)
            except OSError as e:
                error = error or e
        raise error

    @classmethod
    def _v2_at(cls, parent, name, memory_mb, max_procs) -> "RunCgroup":
        with open(f"{parent}/cgroup.controllers") as f:
            available = f.read().split()
        if "memory" not in available:
            raise OSError(errno.ENOENT, f"cgroup v2: no memory controller in {parent}")
        with open(f"{parent}/cgroup.subtree_control") as f:
            enabled = f.read().split()
        want = [c for c in ("memory", "pids") if c in available and c not in enabled]
        if want:  # fails (EBUSY) where the parent has processes of its own and is not the root
            with open(f"{parent}/cgroup.subtree_control", "w") as f:
                f.write(" ".join("+" + c for c in want))
        g = _Group(parent, name)
        try:
            g.mkdir()
            g.write("memory.max", str(int(memory_mb) << 20))
            parts = [f"memory.max {memory_mb} MiB"]
            if g.has("memory.swap.max"):
                g.write("memory.swap.max", "0")
                parts[0] += " (no swap)"
            if g.has("memory.oom.group"):
                g.write("memory.oom.group", "1")
            if g.has("pids.max"):
                g.write("pids.max", str(int(max_procs)))
                parts.append(f"pids.max {max_procs}")
            if g.has("cgroup.kill"):
                parts.append("cgroup.kill")
        except OSError:
            g.discard()
            raise
        return cls(2, {"memory": g, "pids": g}, "cgroup v2: " + ", ".join(parts))

    @property
    def can_join_self(self) -> bool:
        return bool(self.tasks_fds)

    def join_self(self) -> None:
        """In the (single-threaded) program process before exec: move itself into the group."""
        for fd in self.tasks_fds:
            os.write(fd, b"0")

    def join(self, pid: int) -> None:
        """Move `pid` (in the writer's PID namespace) into every hierarchy of the group."""
        for fd in self.procs_fds:
            os.write(fd, str(pid).encode())

    def stats(self) -> dict:
        out = {}
        g = self.groups["memory"]
        try:
            peak = g.read("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")
            out["memory_peak_mb"] = round(int(peak) / (1 << 20), 1)
            events = g.read("memory.oom_control" if self.version == 1 else "memory.events")
            kills = [ln.split()[1] for ln in events.splitlines() if ln.startswith("oom_kill ")]
            out["memory_oom_kills"] = int(kills[0]) if kills else 0
        except (OSError, ValueError):
            pass
        return out

    def destroy(self) -> bool:
        """Kill whatever is left in the group, remove it. Returns whether anything was killed."""
        for fd in self.procs_fds + self.tasks_fds:
            os.close(fd)
        self.procs_fds = self.tasks_fds = []
        killed = False
        groups = self._distinct()
        if self.version == 2:
            g = groups[0]
            if g.pids() and g.has("cgroup.kill"):
                killed = True
                g.write("cgroup.kill", "1")
            killed = g.empty(None) or killed
        else:
            freezer = self.groups.get("freezer")
            for g in groups:
                killed = g.empty(freezer) or killed
        for g in groups:
            g.discard()
        return killed


def _run_parents() -> list[str]:
    """The directory where this process's runs get their groups, in each mounted hierarchy."""
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError:
        return []
    parents = []
    for fstype, root, point, opts in mounts:
        ctrls = [c for c in _CONTROLLERS_V1 if c in opts] if fstype == "cgroup" else [""]
        if ctrls:
            parents.append(_dir_for(root, point, own.get(ctrls[0], "/")))
    return parents


def sweep_stale(prefix: str, hold) -> int:
    """Remove groups `<prefix><uid>` left by killed launchers: those whose uid `hold(uid)` can take
    (it returns a handle to close when done, or None while a run holds that uid). Returns how many."""
    removed = 0
    for parent in _run_parents():
        try:
            names = [n for n in os.listdir(parent) if n.startswith(prefix) and n[len(prefix):].isdigit()]
        except OSError:
            continue
        for n in names:
            handle = hold(int(n[len(prefix):]))
            if handle is None:
                continue
            try:
                g = _Group(parent, n)
                try:
                    g.empty(None)
                    g.rmdir()
                    removed += 1
                finally:
                    g.close()
            except OSError:
                pass
            finally:
                handle.close()
    return removed


def sweep(name: str) -> None:
    """The caller's backstop after a killed launcher: empty and remove that run's groups, if any."""
    for parent in _run_parents():
        if not os.path.isdir(f"{parent}/{name}"):
            continue
        g = _Group(parent, name)
        try:
            g.empty(None)
        except OSError:
            g.close()  # not emptied: a busy rmdir would only spin
            continue
        g.discard()
