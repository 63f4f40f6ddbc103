"""Sandbox launcher, kernel surfaces: a seccomp filter and a fresh kernel keyring (see sandbox.py).

The filter is a small hand-assembled classic-BPF program installed with prctl(PR_SET_SECCOMP) just
before the program's execve (after no_new_privs), so it holds for the program and everything it
starts. It denies (EPERM) what a solution never needs and what widens the kernel surface: new
namespaces of any kind (unshare, setns, clone with CLONE_NEW* flags; clone3, whose flags a classic
filter cannot read, gets ENOSYS so that the C library falls back to clone), the mount API, keyrings,
ptrace and process_vm_*, bpf, perf_event_open, userfaultfd, io_uring, kexec, kernel modules,
open_by_handle_at, swap/reboot/syslog/acct/quotactl and a few more. System calls of another ABI
(i386 via int 0x80, x32) get ENOSYS. Only x86_64 and aarch64 are covered; elsewhere
`build_filter()` returns None and isolation["seccomp"] says so.

Everything here runs in the launcher and only uses modules that are cheap to import.
"""
from __future__ import annotations

import errno
import os
import struct
import sys

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_CLONE_NS_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                   | 0x40000000)  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET

# name: (x86_64, asm-generic as on aarch64); None where the architecture has no such call
_DENIED = {
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "process_madvise": (440, 440), "kcmp": (312, 272), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "syslog": (103, 116),
    "acct": (163, 89), "quotactl": (179, 60), "quotactl_fd": (443, 443), "lookup_dcookie": (212, 18),
    "vhangup": (153, 58), "fanotify_init": (300, 262), "memfd_secret": (447, 447), "iopl": (172, None),
    "ioperm": (173, None), "uselib": (134, None), "_sysctl": (156, None), "nfsservctl": (180, 42),
}
_CLONE = (56, 220)
_CLONE3 = (435, 435)
_KEYCTL = (250, 219)
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column in the tables, AUDIT_ARCH_*

# classic BPF opcodes
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06


def build_filter() -> bytes | None:
    """The filter as `struct sock_filter[]` bytes for this machine's architecture, or None."""
    arch = _ARCHES.get(os.uname().machine)
    if arch is None:
        return None
    col, audit_arch = arch
    prog: list[tuple] = []  # (code, jt, jf, k), jt/jf either ints or label names

    def op(code, k, jt=0, jf=0):
        prog.append((code, jt, jf, k))

    op(_LD_W_ABS, 4)  # seccomp_data.arch
    op(_JEQ_K, audit_arch, 0, "enosys")
    op(_LD_W_ABS, 0)  # seccomp_data.nr
    if col == 0:
        op(_JGE_K, 0x40000000, "enosys", 0)  # the x32 ABI
    for nrs in _DENIED.values():
        if nrs[col] is not None:
            op(_JEQ_K, nrs[col], "eperm", 0)
    op(_JEQ_K, _CLONE[col], "clone", 0)
    op(_JEQ_K, _CLONE3[col], "enosys", 0)
    op(_RET_K, _RET_ALLOW)
    labels = {"clone": len(prog)}
    op(_LD_W_ABS, 16)  # low 32 bits of args[0] (little endian): clone's flags on both architectures
    op(_JSET_K, _CLONE_NS_FLAGS, "eperm", 0)
    op(_RET_K, _RET_ALLOW)
    labels["eperm"] = len(prog)
    op(_RET_K, _RET_ERRNO | errno.EPERM)
    labels["enosys"] = len(prog)
    op(_RET_K, _RET_ERRNO | errno.ENOSYS)
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        assert 0 <= jt < 256 and 0 <= jf < 256
        out += struct.pack("<HBBI" if sys.byteorder == "little" else ">HBBI", code, jt, jf, k)
    return bytes(out)


def install_filter(libc, filt: bytes) -> None:
    """Install `filt` for this process and its future children (needs no_new_privs or CAP_SYS_ADMIN)."""
    import ctypes

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(filt, len(filt))
    fprog = _Fprog(len(filt) // 8, ctypes.cast(buf, ctypes.c_void_p))
    ul = ctypes.c_ulong
    if libc.prctl(ctypes.c_int(_PR_SET_SECCOMP), ul(_SECCOMP_MODE_FILTER), ctypes.byref(fprog), ul(0), ul(0)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp filter: {os.strerror(e)}")


def filter_description() -> str:
    return ("denied (EPERM): new namespaces (unshare, setns, clone with CLONE_NEW*; clone3 ENOSYS), mount API, "
            "keyctl/add_key/request_key, ptrace, process_vm_*, pidfd_getfd, bpf, perf_event_open, userfaultfd, "
            "io_uring, kexec, kernel modules, open_by_handle_at, swap, reboot, syslog, acct, quotactl; "
            "other syscall ABIs ENOSYS")


_KEYCTL_JOIN_SESSION_KEYRING, _KEYCTL_CLEAR = 1, 7
_KEY_SPEC_USER_KEYRING, _KEY_SPEC_USER_SESSION_KEYRING = -4, -5


def fresh_keyring(libc) -> None:
    """As the sandbox uid, before exec: empty the uid's persistent user keyrings (they outlive a run
    and the uid is reused by later runs) and join a new anonymous session keyring (instead of the
    caller's, which the process would otherwise possess)."""
    import ctypes

    col = _ARCHES.get(os.uname().machine, (None,))[0]
    if col is None:
        raise OSError(errno.ENOSYS, "keyctl number unknown on this architecture")
    nr = ctypes.c_long(_KEYCTL[col])
    for ring in (_KEY_SPEC_USER_KEYRING, _KEY_SPEC_USER_SESSION_KEYRING):
        libc.syscall(nr, ctypes.c_long(_KEYCTL_CLEAR), ctypes.c_long(ring))  # best effort
    if libc.syscall(nr, ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_void_p(None)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(e)}")
