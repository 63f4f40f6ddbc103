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
_CLONE_NEWPID = 0x20000000
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


def _sibling(name: str):
    """Another sandbox_*.py module beside this file (the launcher runs with `-I -S`: the project is
    not on sys.path there)."""
    full = f"rlengine_reward_fns_{name}"
    if full in sys.modules:
        return sys.modules[full]
    try:
        import importlib

        return importlib.import_module(f"reward_fns.{name}")
    except ImportError:
        import importlib.util

        spec = importlib.util.spec_from_file_location(full, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                         f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)
        return mod


def _unshare_namespaces(real_root: bool, disabled: set, iso: dict) -> set[str]:
    caller_uid, caller_gid = os.getuid(), os.getgid()
    flags = {"net": _CLONE_NEWNET, "mnt": _CLONE_NEWNS, "ipc": _CLONE_NEWIPC, "uts": _CLONE_NEWUTS,
             "pid": _CLONE_NEWPID}
    if real_root:
        wanted = [n for n in flags if n not in disabled]
        try:
            if len(wanted) < len(flags):
                raise OSError(errno.EPERM, "disabled")
            _unshare(sum(flags.values()))
            return set(flags)
        except OSError:
            ns = set()
            for name in wanted:
                try:
                    _unshare(flags[name])
                    ns.add(name)
                except OSError:
                    pass
            return ns
    base = _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS
    for extra, names in (((_CLONE_NEWPID, {"pid"}) if "pid" not in disabled else (0, set())), (0, set())):
        try:
            _unshare(base | extra)
        except OSError as e:
            iso["userns"] = f"unavailable ({e})"
            continue
        iso.pop("userns", None)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{caller_uid} {caller_uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{caller_gid} {caller_gid} 1")
        return {"user", "net", "mnt", "ipc", "uts"} | names
    return set()


def _reachable_in_tree(python: str, trees: list[str]) -> bool:
    """Whether the sandbox uid can run `python` inside the new root, where the directories above
    each tree are fresh (0755)."""
    real = os.path.realpath(python)
    tree = next((t for t in trees if real.startswith(t.rstrip("/") + "/")), None)
    if tree is None:
        return False
    cur = tree
    try:
        for part in [p for p in real[len(tree):].split("/") if p]:
            if not os.stat(cur).st_mode & stat.S_IXOTH:
                return False
            cur = os.path.join(cur, part)
        return (os.stat(real).st_mode & (stat.S_IROTH | stat.S_IXOTH)) == (stat.S_IROTH | stat.S_IXOTH)
    except OSError:
        return False


def _hold_uid(uid: int):
    """The lock sandbox.py holds on a sandbox uid during a run, or None where a run holds it."""
    import _socket  # (not socket.py: it costs the launcher milliseconds to import)

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.bind(f"\0rlengine-sandbox-uid-{uid}")
        return s
    except OSError:
        s.close()
        return None


def _prepare(cfg: dict) -> dict:
    """Namespaces, cgroup, mounts, seccomp filter and the uid decision; runs in the launcher before
    the program is forked. With the new root, the launcher itself ends up inside it (pivot_root)."""
    import resource  # noqa: F401 - used after the pivot (by the program's fork), where imports may fail

    real_root = os.geteuid() == 0
    iso: dict[str, str] = {}
    with open(cfg["code_path"], "rb") as f:
        code = f.read()
    python = cfg["python"]
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise _Refused(f"no interpreter at {python}")
    caller_uid = os.getuid()
    disabled = set(cfg.get("disable", ()))  # tests only: exercise the fallbacks of machines without a layer
    drop_uid = real_root

    cgroup, cgroup_error = None, "disabled"
    if "cgroup" not in disabled:
        try:
            cgmod = _sibling("sandbox_cgroup")
            if real_root:  # (before the new network namespace: the uid locks are abstract sockets)
                cgmod.sweep_stale("rlengine-sandbox-", _hold_uid)
            name = f"rlengine-sandbox-{cfg['uid'] if real_root else f'{caller_uid}-{os.getpid()}'}"
            cgroup = cgmod.RunCgroup.create(name, int(cfg["memory_mb"]), int(cfg["max_procs"]))
        except OSError as e:
            cgroup_error = e.strerror or str(e)
    try:
        return _prepare_rest(cfg, iso, code, python, caller_uid, disabled, drop_uid, real_root, cgroup, cgroup_error)
    except BaseException:
        if cgroup is not None:
            cgroup.destroy()
        raise


def _prepare_rest(cfg, iso, code, python, caller_uid, disabled, drop_uid, real_root, cgroup, cgroup_error) -> dict:
    nproc = int(cfg["max_procs"]) if drop_uid else _count_tasks(caller_uid) + int(cfg["max_procs"])

    ns = _unshare_namespaces(real_root, disabled, iso)
    if "net" in ns:
        iso["net"] = "network namespace (no interfaces up)" + (" inside a user namespace" if "user" in ns else "")
    else:
        iso["net"] = "audit hook in the interpreter (WEAK: no network namespace could be created here)"
    iso["ipc"] = "ipc namespace" if "ipc" in ns else "shared with the host"

    rootmod = _sibling("sandbox_root")
    newroot = None
    workdir = cfg["workdir"]
    fs_private = False
    if "mnt" in ns:
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        if "newroot" not in disabled:
            trees = rootmod.interpreter_trees(python)
            if drop_uid and not _reachable_in_tree(python, trees):
                alt = next((p for p in _FALLBACK_PYTHONS
                            if _reachable_in_tree(p, rootmod.interpreter_trees(p))), None)
                if alt is not None:
                    iso["python"] = f"{alt} ({python} is not readable by the sandbox uid)"
                    python = alt
            try:
                iso["fs"] = rootmod.build(cfg["workdir"], _mount, python, real_root, cfg["uid"] if drop_uid else None,
                                          int(cfg["scratch_mb"]), _WORKDIR_IN_NS, disabled)
                newroot = cfg["workdir"]
                inner = newroot.rstrip("/") + _WORKDIR_IN_NS
                os.mkdir(inner, 0o700)
                if drop_uid:
                    os.chown(inner, cfg["uid"], cfg["uid"])
                workdir, fs_private = _WORKDIR_IN_NS, True
            except OSError as e:
                iso["fs_error"] = f"new root: {e}"
                try:  # back to the host's tree (whatever got mounted on the staging dir goes)
                    _libc().umount2(cfg["workdir"].encode(), 2)
                except OSError:
                    pass
        if newroot is None:
            try:
                workdir = _setup_mounts(cfg, python, drop_uid, real_root and "pid" not in ns, iso)
                iso["fs"] += " (WEAK: every world-readable host file is visible)"
                fs_private = True
            except OSError as e:
                iso["fs_error"] = str(e)
    if not fs_private:
        iso["fs"] = (f"workdir {workdir}; files of the sandbox uid under {', '.join(_SCRATCH_DIRS)} deleted "
                     "after the run (WEAK: no mount namespace; host files visible)" if drop_uid else
                     f"workdir {workdir} only (WEAK: not root and no mount namespace; the program can "
                     "write wherever the caller can)")

    if drop_uid and not fs_private:
        if not _others_can(python, stat.S_IROTH | stat.S_IXOTH):
            alt = next((p for p in _FALLBACK_PYTHONS if _others_can(p, stat.S_IROTH | stat.S_IXOTH)), None)
            if alt is None:
                raise _Refused(f"the interpreter {python} is not reachable by an unprivileged uid and no "
                               "mount namespace could hide that; refusing to run untrusted code as root")
            iso["python"] = f"{alt} ({python} is not reachable by the sandbox uid)"
            python = alt
    if drop_uid:
        iso["user"] = f"dedicated uid/gid {cfg['uid']}, no_new_privs"
    else:
        iso["user"] = f"caller's uid {caller_uid} (not root: no dedicated uid), no_new_privs"

    pidns = "pid" in ns
    if pidns:
        iso["pid"] = ("PID namespace (its init is the launcher's child: when it exits, the kernel kills every "
                      "process left)")
        iso["proc"] = ("private /proc of the run's PID namespace" + (" (hidepid=2)" if _kernel_at_least(5, 8) else "")
                       if fs_private else "host /proc (no mount namespace), but the PID namespace hides nothing "
                       "from it (WEAK)")
        iso["cleanup"] = ("PID namespace: its init kills every process of the run when the program's main process "
                          "ends (or the wall limit is reached), and the kernel kills any left when init exits; "
                          "a killed launcher takes init with it (PDEATHSIG)")
    else:
        iso["pid"] = "host PID namespace (WEAK: no PID namespace could be created here)"
        iso.setdefault("proc", "host /proc; other users' /proc/<pid>/environ etc. unreadable through the uid"
                       if drop_uid else "host /proc (same uid as the caller)")
        iso["cleanup"] = ("process group, then every process of the sandbox uid (kill(-1) as that uid; WEAK: a "
                          "process of the run can kill that helper)" if drop_uid else
                          "process group, then every descendant (launcher is a child subreaper; WEAK: a process "
                          "that escapes the subreaper survives)")
    if cgroup is not None:
        iso["cleanup"] += "; then the run's cgroup is emptied" + (" (frozen first)" if "freezer" in cgroup.groups
                                                                  or cgroup.version == 2 else "") + " and removed"

    seccomp = None
    sc = _sibling("sandbox_seccomp")  # (imported here: after the pivot the module's file is out of sight)
    if "seccomp" not in disabled:
        seccomp = sc.build_filter()
        iso["seccomp"] = sc.filter_description() if seccomp else f"unavailable on {os.uname().machine} (WEAK)"
    else:
        iso["seccomp"] = "none (WEAK: disabled)"
    if cgroup is not None:
        iso["memory"] = (f"{cgroup.desc} for the whole run (all its processes, tmpfs, memfd, shared memory); "
                         f"RLIMIT_AS {cfg['memory_mb']} MiB per process")
    else:
        iso["memory"] = (f"RLIMIT_AS {cfg['memory_mb']} MiB per process only (WEAK: no cgroup: {cgroup_error}); "
                         f"every tmpfs sized ({cfg['scratch_mb']} MiB); new user namespaces "
                         + ("denied (seccomp)" if seccomp else "NOT denied"))
    keyring = "keyring" not in disabled
    iso["keyring"] = (("fresh session keyring per run, the uid's user keyrings emptied" if keyring else
                       "caller's session keyring (WEAK: disabled)")
                      + ("; keyctl/add_key/request_key denied (seccomp)" if seccomp else ""))

    if cfg.get("strict"):
        missing = [k for k, ok in (("network namespace", "net" in ns), ("mount namespace", fs_private),
                                   ("dedicated uid", drop_uid)) if not ok]
        if missing:
            raise _Refused(f"strict sandbox: missing {', '.join(missing)} on this machine")

    main_path = os.path.join(workdir, "main.py")
    with open((newroot.rstrip("/") + main_path) if newroot else main_path, "wb") as f:
        f.write(code)
        os.fchmod(f.fileno(), 0o644)
    proc_mounted = False
    if newroot is not None and not pidns:  # the launcher is in the host PID namespace: mount /proc here
        _mount_proc(newroot.rstrip("/") + "/proc", real_root, iso)
        proc_mounted = True
    if newroot is not None:
        how = rootmod.enter(newroot, _libc())
        if how != "pivot_root":
            iso["fs"] = iso["fs"].replace("(pivot_root;", f"({how};")
    tree_bins = [os.path.join(t, "bin") for t in rootmod.interpreter_trees(python)] if fs_private else []
    return {"iso": iso, "python": python, "workdir": workdir, "main_path": main_path, "drop_uid": drop_uid,
            "net_hook": "net" not in ns, "nproc": nproc, "fs_private": fs_private, "pidns": pidns,
            "newroot": newroot is not None, "legacy_mounts": fs_private and newroot is None,
            "proc_mounted": proc_mounted, "cgroup": cgroup, "seccomp": seccomp, "keyring": keyring,
            "path": ":".join([b for b in tree_bins if b not in ("/usr/bin", "/bin", "/usr/local/bin")]
                             + ["/usr/local/bin", "/usr/bin", "/bin"])}


def _mount_proc(target: str, real_root: bool, iso: dict) -> None:
    """A /proc of the mounting process's PID namespace (hidepid=2 where the kernel keeps that per mount)."""
    opts = "hidepid=2" if _kernel_at_least(5, 8) else None
    try:
        _mount("proc", target, "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, opts)
    except OSError as e:
        if not real_root:
            _mount("/proc", target, None, _MS_BIND | _MS_REC)
            iso["proc"] = f"host /proc bind-mounted ({e}; WEAK: same uid as the caller)"
            return
        raise
    if "pid" not in iso or iso["pid"].startswith("host"):
        iso["proc"] = ("private /proc with hidepid=2 (only the run's own processes are visible)" if opts
                       else "host /proc (kernel before 5.8: no per-mount hidepid)")
