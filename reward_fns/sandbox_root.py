"""Sandbox launcher, the program's filesystem: a fresh root that shows only what a program needs
(see sandbox.py).

In the launcher's private mount namespace a small tmpfs becomes the new root (made read-only once
populated), holding:
- the interpreter's install tree and the system library directories (/usr/lib, /usr/lib64 and the
  /lib, /lib64 links), each as a read-only overlayfs mount: the files' contents are the host's, but
  the inodes are the overlay's own, so a lock taken on one (flock, fcntl) is invisible to the host
  and to other runs; site-packages/dist-packages directories are covered by empty read-only tmpfs
  (the program runs `python -I -S` and gets the standard library only);
- /dev with fresh null, zero, full, random, urandom nodes (bind-mounted host nodes without root),
  fd/stdin/stdout/stderr links; /etc with passwd, group, hosts of its own; /proc (mounted later, from
  inside the run's PID namespace); no /sys, /run, /home, /root, /work, host /tmp or sockets;
- private size-capped tmpfs on /tmp (with the working directory), /var/tmp and /dev/shm.
Then pivot_root (chroot where pivot_root is refused) and the old root is detached.

Everything here runs in the launcher, so it only uses modules that are cheap to import.
"""
from __future__ import annotations

import os
import stat
import sys

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC = 32, 4096, 16384
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "i686": 217, "i386": 217, "aarch64": 41, "riscv64": 41, "loongarch64": 41}
_SYSTEM_LIBS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9))
EMPTY_LOWER = "/proc"  # an empty directory of the new root (proc is mounted over it afterwards)


def _esc(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def interpreter_trees(python: str) -> list[str]:
    """Install tree(s) of the interpreter: the launcher's own base prefix, or <bin>/.. of another one."""
    real = os.path.realpath(python)
    if real == os.path.realpath(sys.executable):
        trees = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    else:
        trees = {os.path.dirname(os.path.dirname(real))}
    if not any(real.startswith(t.rstrip("/") + "/") for t in trees):
        trees.add(os.path.dirname(real))
    trees = sorted(t for t in trees if t and t != "/")
    return [t for t in trees if not any(t != u and t.startswith(u.rstrip("/") + "/") for u in trees)]


def _package_dirs(tree: str) -> list[str]:
    """site-packages / dist-packages directories below `tree` (lib/pythonX.Y/..., python3/...)."""
    out = []
    for base in (tree, os.path.join(tree, "lib"), os.path.join(tree, "lib64"), os.path.join(tree, "local/lib")):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for n in names:
            if n.startswith("python3"):
                for sub in ("site-packages", "dist-packages"):
                    p = os.path.join(base, n, sub)
                    if os.path.isdir(p) and not os.path.islink(p):
                        out.append(p)
    return out


def build(root: str, mount, python: str, real_root: bool, uid: int | None, scratch_mb: int,
          workdir_in_root: str, disable: set) -> str:
    """Populate the new root at `root` (a directory of the launcher's private mount namespace).
    Returns a description for isolation["fs"]."""
    mount("tmpfs", root, "tmpfs", _MS_NOSUID, "size=1m,nr_inodes=4096,mode=0755")
    r = root.rstrip("/")
    os.mkdir(r + EMPTY_LOWER, 0o555)
    trees = interpreter_trees(python)
    exposed, how = [], set()

    def expose(host: str) -> None:
        os.makedirs(r + host, 0o755, exist_ok=True)
        if "overlay" not in disable:
            try:
                mount("overlay", r + host, "overlay", _MS_RDONLY | _MS_NOSUID | _MS_NODEV,
                      f"lowerdir={_esc(host)}:{_esc(r + EMPTY_LOWER)}")
                how.add("overlay")
                exposed.append(host)
                return
            except OSError:
                pass
        mount(host, r + host, None, _MS_BIND | _MS_REC)
        mount(None, r + host, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        how.add("bind")
        exposed.append(host)

    for t in trees:
        expose(t)
    for d in _SYSTEM_LIBS:
        if any(d == t or d.startswith(t.rstrip("/") + "/") for t in trees):
            continue
        if os.path.islink(d):
            os.makedirs(os.path.dirname(r + d) or r, 0o755, exist_ok=True)
            os.symlink(os.readlink(d), r + d)
        elif os.path.isdir(d):
            expose(d)
    hidden = []
    for t in exposed:
        for p in _package_dirs(t):
            mount("tmpfs", r + p, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                  "size=4k,nr_inodes=4,mode=0755")
            hidden.append(p)

    dev = r + "/dev"
    os.mkdir(dev, 0o755)
    nodes = "mknod"
    for name, major, minor in _DEVICES:
        path = f"{dev}/{name}"
        if real_root:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(path, 0o666)
        else:  # no mknod in a user namespace: the host's nodes, bind-mounted
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o666))
            mount(f"/dev/{name}", path, None, _MS_BIND)
            nodes = "host nodes bind-mounted"
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    for d in ("/dev/shm", "/tmp", "/var", "/var/tmp", "/etc"):
        os.mkdir(r + d, 0o755)
    me = uid if uid is not None else os.getuid()
    for name, text in (("passwd", f"root:x:0:0:root:/:/nonexistent\nsandbox:x:{me}:{me}:sandbox:{workdir_in_root}:"
                                  "/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n"),
                       ("group", f"root:x:0:\nsandbox:x:{me}:\nnogroup:x:65534:\n"),
                       ("hosts", "127.0.0.1 localhost\n::1 localhost\n")):
        with open(f"{r}/etc/{name}", "w") as f:
            f.write(text)
    mount(None, root, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID)
    opts = f"size={int(scratch_mb)}m,nr_inodes=16384,mode=1777"
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        mount("tmpfs", r + d, "tmpfs", _MS_NOSUID | _MS_NODEV, opts)
    extra = [e for e in exposed if e not in trees]
    return (f"mount namespace: new root (pivot_root; read-only tmpfs) holding only the interpreter "
            f"({', '.join(trees)})" + (f" and {', '.join(extra)}" if extra else "")
            + f" as read-only {'/'.join(sorted(how))} mounts"
            + (" (own inodes: no lock is shared with the host)" if how == {"overlay"} else
               " (WEAK: host inodes, so flock/fcntl locks are shared with the host)")
            + (f", package dirs hidden ({', '.join(hidden)})" if hidden else "")
            + f"; /dev ({nodes}: {', '.join(n for n, _, _ in _DEVICES)}), private /etc and /proc, no /sys; "
              f"private {int(scratch_mb)} MiB tmpfs on /tmp, /var/tmp, /dev/shm; workdir {workdir_in_root}")


def enter(root: str, libc) -> str:
    """Make `root` this mount namespace's root: pivot_root, old root detached; chroot where
    pivot_root is refused (e.g. a root on the initramfs). Returns which."""
    import ctypes

    os.chdir(root)
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is not None and libc.syscall(ctypes.c_long(nr), b".", b".") == 0:
        if libc.umount2(b".", ctypes.c_int(_MNT_DETACH)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"detaching the old root: {os.strerror(e)}")
        os.chdir("/")
        return "pivot_root"
    os.chroot(".")
    os.chdir("/")
    return "chroot"
