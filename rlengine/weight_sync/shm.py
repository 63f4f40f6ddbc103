"""Shared-memory transport: the full weights in one flat, already-unlinked /dev/shm file that
trainer rank 0 writes; rollout workers on the same host (every tensor-parallel rank) map it and
read the tensors in place: one copy on each side instead of pickling through the object store."""
from __future__ import annotations

import mmap
import os

import torch

class SharedWeights:
    """The full weights in one flat, already-unlinked /dev/shm file.

    A process on the same host maps it through /proc/<pid>/fd/<fd>.  The file has
    no name, so it vanishes with the trainer process however that ends.  Space is reserved up
    front (posix_fallocate): a too-small /dev/shm raises OSError here, never SIGBUS later.
    """

    def __init__(self, layout: list[tuple[str, tuple, torch.dtype]], root: str = "/dev/shm"):
        self.layout, offset = [], 0
        for name, shape, dtype in layout:
            self.layout.append((name, offset, tuple(shape), dtype))
            offset += -(-_nbytes(shape, dtype) // 64) * 64  # 64-byte aligned views
        self.nbytes = max(offset, 1)
        path = os.path.join(root, f"rlengine-weights-{os.getpid()}-{id(self)}")
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.unlink(path)
            os.posix_fallocate(self.fd, 0, self.nbytes)
            self._mm = mmap.mmap(self.fd, self.nbytes)
        except BaseException:
            os.close(self.fd)
            raise
        self.views = dict(_views(torch.frombuffer(self._mm, dtype=torch.uint8), self.layout))

    def handle(self) -> dict:
        return {"path": f"/proc/{os.getpid()}/fd/{self.fd}", "boot_id": boot_id(), "nbytes": self.nbytes,
                "layout": [(n, o, s, str(d).removeprefix("torch.")) for n, o, s, d in self.layout]}


def open_shared(handle: dict) -> list[tuple[str, torch.Tensor]] | None:
    """Read-only tensor views of another process's SharedWeights; None when that file is not
    reachable from here (another host, or the trainer is gone): the caller falls back."""
    if handle.get("boot_id") != boot_id():
        return None
    try:
        with open(handle["path"], "rb") as f:
            mm = mmap.mmap(f.fileno(), handle["nbytes"], access=mmap.ACCESS_COPY)
    except OSError:
        return None
    layout = [(name, o, shape, getattr(torch, dt)) for name, o, shape, dt in handle["layout"]]
    return _views(torch.frombuffer(mm, dtype=torch.uint8), layout)


def _nbytes(shape, dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()


def _views(flat: torch.Tensor, layout) -> list[tuple[str, torch.Tensor]]:
    """Typed, shaped views of a flat byte buffer: layout rows are (name, offset, shape, dtype)."""
    return [(name, flat[o:o + _nbytes(shape, dt)].view(dt).view(shape)) for name, o, shape, dt in layout]


def boot_id() -> str:
    """This kernel boot and PID namespace: /proc/<pid> paths mean the same process only when equal
    (containers on one host share the boot id, not the namespace)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return f"no-proc:{os.getpid()}"  # never equal across processes: always the object store
