"""Sandbox launcher, part 1: the isolation set up before the program is forked (see sandbox.py).

Namespaces (network, mount, IPC, UTS; a user namespace when not root), the private mount namespace
(read-only /, fresh tmpfs scratch dirs, private /proc, the interpreter made reachable for the sandbox
uid) and the uid decision: `_prepare(cfg)` returns the plan that sandbox_launcher.py runs the program
with. This runs in the launcher, so it only uses modules that are cheap to import (the launcher starts
once per run).
"""
from __future__ import annotations

import errno
import os
import stat
import sys

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME = 32, 1024, 2048
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_MS_RELATIME, _MS_STRICTATIME = 1 << 21, 1 << 24

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38

_SYS_MOUNT_SETATTR = 442  # same number on x86_64, i386 and the asm-generic architectures
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 0x1, 0x2

_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_WORKDIR_IN_NS = "/tmp/sandbox"
_FALLBACK_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")


class _Refused(Exception):
    """The launcher will not run the program (isolation missing in strict mode, or root only)."""


_libc_handle = None


def _libc():
    global _libc_handle
    if _libc_handle is None:
        import ctypes

        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python >= 3.12
        os.unshare(flags)
        return
    import ctypes

    _check(_libc().unshare(ctypes.c_int(flags)), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    import ctypes

    enc = (lambda s: None if s is None else s.encode())
    _check(_libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _prctl(option: int, arg: int) -> None:
    import ctypes

    ul = ctypes.c_ulong
    _check(_libc().prctl(ctypes.c_int(option), ul(arg), ul(0), ul(0), ul(0)), f"prctl({option})")


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = os.uname().release.split("-")[0].split(".")
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def _others_can(path: str, bits: int) -> bool:
    """Whether a uid that owns nothing here (the sandbox uid) can reach `path` and has `bits` on it."""
    path = os.path.realpath(path)
    cur = "/"
    try:
        for part in [p for p in path.split("/") if p]:
            if not os.stat(cur).st_mode & stat.S_IXOTH:
                return False
            cur = os.path.join(cur, part)
        return (os.stat(path).st_mode & bits) == bits
    except OSError:
        return False


def _first_untraversable(path: str) -> str | None:
    cur = "/"
    for part in [""] + [p for p in path.split("/") if p]:
        cur = os.path.join(cur, part) if part else "/"
        try:
            if not os.stat(cur).st_mode & stat.S_IXOTH:
                return cur
        except OSError:
            return None
    return None


def _expose_interpreter(python: str, notes: list) -> None:
    """In the private mount namespace: if the interpreter's install tree sits below a directory the
    sandbox uid cannot enter (pyenv under /root), cover that directory with an empty tmpfs and
    bind-mount the install tree back at the same path (it becomes read-only with the rest)."""
    real = os.path.realpath(python)
    needed = {os.path.dirname(os.path.dirname(real))}
    if real == os.path.realpath(sys.executable):
        needed |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    plans: dict[str, list[str]] = {}
    for p in sorted(needed):
        blocker = _first_untraversable(p)
        if blocker is not None and blocker != p and blocker != "/":
            plans.setdefault(blocker, []).append(p)
    for blocker, paths in plans.items():
        paths = [p for p in paths if not any(q != p and p.startswith(q + "/") for q in paths)]
        fds = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in paths]
        try:
            _mount("tmpfs", blocker, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
            for p, fd in fds:
                os.makedirs(p, 0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", p, None, _MS_BIND | _MS_REC)
        finally:
            for _, fd in fds:
                os.close(fd)
        notes.append(f"{blocker} hidden (interpreter tree {', '.join(paths)} bind-mounted back)")


def _unescape_mountinfo(s: str) -> str:
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _make_readonly(use_mount_setattr: bool = True) -> str:
    """Every mount in this (private) namespace read-only and nosuid."""
    if use_mount_setattr and os.uname().machine in ("x86_64", "i686", "i386", "aarch64", "riscv64", "loongarch64"):
        import ctypes

        class _MountAttr(ctypes.Structure):
            _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                        ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

        attr = _MountAttr(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, 0, 0)
        ret = _libc().syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), b"/",
                              ctypes.c_uint(_AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
        if ret == 0:
            return "mount_setattr"
    # Older kernels: remount each mount point read-only, keeping its other flags.
    optflags = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": _MS_NOATIME,
                "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME, "strictatime": _MS_STRICTATIME}
    failed = []
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split()
        target = _unescape_mountinfo(fields[4])
        flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID
        for opt in fields[5].split(","):
            flags |= optflags.get(opt, 0)
        try:
            _mount(None, target, None, flags)
        except OSError:
            failed.append(target)
    if failed:
        raise OSError(errno.EPERM, f"could not make read-only: {', '.join(failed[:5])}")
    return "per-mount remount"


def _setup_mounts(cfg: dict, python: str, drop_uid: bool, real_root: bool, iso: dict) -> str:
    """Private mount namespace: read-only /, fresh tmpfs scratch dirs, workdir, /proc. Returns the
    working directory."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    notes: list[str] = []
    if drop_uid:
        _expose_interpreter(python, notes)
    how = _make_readonly(use_mount_setattr="mount_setattr" not in cfg.get("disable", ()))
    scratch = []
    opts = f"size={int(cfg['scratch_mb'])}m,nr_inodes=16384,mode=1777"
    for d in _SCRATCH_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            _mount("tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, opts)
            scratch.append(d)
    if "/tmp" not in scratch:
        raise OSError(errno.ENOENT, "no /tmp to put the working directory in")
    os.mkdir(_WORKDIR_IN_NS, 0o700)
    if drop_uid:
        os.chown(_WORKDIR_IN_NS, cfg["uid"], cfg["uid"])
    iso["fs"] = (f"mount namespace: / read-only ({how}), private {cfg['scratch_mb']} MiB tmpfs on "
                 f"{', '.join(scratch)}; workdir {_WORKDIR_IN_NS}" + ("; " + "; ".join(notes) if notes else ""))
    if real_root and _kernel_at_least(5, 8):
        try:
            _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "hidepid=2")
            iso["proc"] = "private /proc with hidepid=2 (only the run's own processes are visible)"
        except OSError as e:
            iso["proc"] = f"host /proc ({e}); other users' environ etc. unreadable through the uid"
    return _WORKDIR_IN_NS


def _count_tasks(uid: int) -> int:
    """Tasks (threads) whose real uid is `uid`: what RLIMIT_NPROC counts."""
    n = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                text = f.read()
        except OSError:
            continue
        real, threads = None, 1
        for line in text.splitlines():
            if line.startswith("Uid:"):
                real = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        if real == uid:
            n += threads
    return n


def _prepare(cfg: dict) -> dict:
    """Namespaces, mounts and the uid decision; runs in the launcher before the program is forked."""
    real_root = os.geteuid() == 0
    iso: dict[str, str] = {}
    with open(cfg["code_path"], "rb") as f:
        code = f.read()
    python = cfg["python"]
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise _Refused(f"no interpreter at {python}")
    caller_uid, caller_gid = os.getuid(), os.getgid()

    ns: set[str] = set()
    disabled = set(cfg.get("disable", ()))  # tests only: exercise the fallbacks of machines without namespaces
    if real_root:
        try:
            if disabled:
                raise OSError(errno.EPERM, "disabled")
            _unshare(_CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS)
            ns = {"net", "mnt", "ipc", "uts"}
        except OSError:
            for name, flag in (("net", _CLONE_NEWNET), ("mnt", _CLONE_NEWNS), ("ipc", _CLONE_NEWIPC),
                               ("uts", _CLONE_NEWUTS)):
                try:
                    if name in disabled:
                        raise OSError(errno.EPERM, "disabled")
                    _unshare(flag)
                    ns.add(name)
                except OSError:
                    pass
    else:
        try:
            _unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS)
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{caller_uid} {caller_uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{caller_gid} {caller_gid} 1")
            ns = {"user", "net", "mnt", "ipc", "uts"}
        except OSError as e:
            iso["userns"] = f"unavailable ({e})"

    if "net" in ns:
        iso["net"] = "network namespace (no interfaces up)" + (" inside a user namespace" if "user" in ns else "")
    else:
        iso["net"] = "audit hook in the interpreter (WEAK: no network namespace could be created here)"
    iso["ipc"] = "ipc namespace" if "ipc" in ns else "shared with the host"

    drop_uid = real_root
    workdir = cfg["workdir"]
    fs_private = False
    if "mnt" in ns:
        try:
            workdir = _setup_mounts(cfg, python, drop_uid, real_root, iso)
            fs_private = True
        except OSError as e:
            iso["fs_error"] = str(e)
    if not fs_private:
        iso["fs"] = (f"workdir {workdir}; files of the sandbox uid under {', '.join(_SCRATCH_DIRS)} deleted "
                     "after the run (no mount namespace)" if drop_uid else
                     f"workdir {workdir} only (WEAK: not root and no mount namespace; the program can "
                     "write wherever the caller can)")
    iso.setdefault("proc", "host /proc; other users' /proc/<pid>/environ etc. unreadable through the uid"
                   if drop_uid else "host /proc (same uid as the caller)")

    if drop_uid:
        if not _others_can(python, stat.S_IROTH | stat.S_IXOTH):
            alt = next((p for p in _FALLBACK_PYTHONS if _others_can(p, stat.S_IROTH | stat.S_IXOTH)), None)
            if alt is None:
                raise _Refused(f"the interpreter {python} is not reachable by an unprivileged uid and no "
                               "mount namespace could hide that; refusing to run untrusted code as root")
            iso["python"] = f"{alt} ({python} is not reachable by the sandbox uid)"
            python = alt
        iso["user"] = f"dedicated uid/gid {cfg['uid']}, no_new_privs"
        nproc = int(cfg["max_procs"])
        iso["cleanup"] = "process group, then every process of the sandbox uid (kill(-1) as that uid)"
    else:
        iso["user"] = f"caller's uid {caller_uid} (not root: no dedicated uid), no_new_privs"
        nproc = _count_tasks(caller_uid) + int(cfg["max_procs"])
        iso["cleanup"] = "process group, then every descendant (launcher is a child subreaper)"
    if cfg.get("strict"):
        missing = [k for k, ok in (("network namespace", "net" in ns), ("mount namespace", fs_private),
                                   ("dedicated uid", drop_uid)) if not ok]
        if missing:
            raise _Refused(f"strict sandbox: missing {', '.join(missing)} on this machine")

    main_path = os.path.join(workdir, "main.py")
    with open(main_path, "wb") as f:
        f.write(code)
    os.chmod(main_path, 0o644)
    return {"iso": iso, "python": python, "workdir": workdir, "main_path": main_path, "drop_uid": drop_uid,
            "net_hook": "net" not in ns, "nproc": nproc, "fs_private": fs_private}
