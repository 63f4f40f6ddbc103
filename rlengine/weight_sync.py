"""Trainer -> rollout weight transfer: shared memory or buckets, checksums and their verification.

The trainer gathers full parameters bucket by bucket (ZeRO-3 GatheredParameters).  A rollout
worker on the trainer's host reads them in place from one shared-memory file (`SharedWeights`);
one elsewhere gets them as Ray objects, bucket by bucket.  Both sides compute `checksum` (CRC-32
of the bytes) over the same named tensors: the trainer on what it wrote, the rollout worker on
what it reads, right before it hands the tensors to vLLM.  On vLLM's CPU build the loaded
linear weights are repacked into oneDNN handles and cannot be read back: the tensors vLLM keeps readable are compared with the float64
sums of what it was given (`compare_engine`), and the rest of the *loaded* model is verified by
log-prob agreement: `sync/logprob_drift` every step (and `sync/probe_drift` straight after the
push, on a fixed probe sequence).
"""
from __future__ import annotations

import mmap
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

import torch

BUCKET_BYTES = 256 << 20


def tensor_checksum(t: torch.Tensor) -> tuple[int, int]:
    """(CRC-32 of the raw bytes, byte count): exact, order-sensitive, ~4 GB/s on one core."""
    x = t.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    b = memoryview(x.contiguous().reshape(-1).view(torch.uint8).numpy())
    return zlib.crc32(b), b.nbytes


def checksum(named: Iterable[tuple[str, torch.Tensor]], threads: int = 2) -> dict[str, tuple[int, int]]:
    """Checksums of named tensors; zlib releases the GIL, so `threads` hash in parallel."""
    named = list(named)
    if threads <= 1 or len(named) < 2:
        return {name: tensor_checksum(t) for name, t in named}
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip((n for n, _ in named), pool.map(tensor_checksum, (t for _, t in named))))


@dataclass(frozen=True)
class SyncReport:
    ok: bool
    n_tensors: int
    n_bytes: int
    mismatched: tuple[str, ...]
    missing: tuple[str, ...]


def compare(sent: dict[str, tuple[int, int]], received: dict[str, tuple[int, int]], n_bytes: int) -> SyncReport:
    """Names and checksums must match exactly."""
    missing = tuple(sorted(set(sent) ^ set(received)))
    bad = [name for name in sorted(set(sent) & set(received)) if tuple(sent[name]) != tuple(received[name])]
    return SyncReport(ok=not missing and not bad, n_tensors=len(sent), n_bytes=n_bytes,
                      mismatched=tuple(bad), missing=missing)


def compare_engine(received: dict[str, torch.Tensor], engine_sums: dict[str, float],
                   packed: dict[str, list[str]], rtol: float = 1e-6) -> tuple[int, list[str]]:
    """Check the weights the engine actually holds against the tensors it was given.

    vLLM stacks some HF tensors into one (qkv_proj = q_proj|k_proj|v_proj): the float64 sum of a
    stacked tensor must equal the sum of its parts.  Returns (tensors verified, names that disagree).
    Engine tensors with no counterpart in `received` (e.g. rotary caches) are not compared.
    """
    verified, bad = 0, []
    for name, value in engine_sums.items():
        parts = [name]
        for stacked, pieces in packed.items():
            if f".{stacked}." in f".{name}":
                parts = [name.replace(stacked, p) for p in pieces]
                break
        if not all(p in received for p in parts):
            continue
        expected = sum(float(received[p].detach().double().sum()) for p in parts)
        verified += 1
        if abs(expected - value) > rtol * max(1.0, abs(expected), abs(value)):
            bad.append(name)
    return verified, bad


def bucketize(named_sizes: list[tuple[str, int]], bucket_bytes: int = BUCKET_BYTES) -> list[list[str]]:
    """Group parameter names, in order, into buckets of at most `bucket_bytes` (a single larger
    tensor gets its own bucket)."""
    buckets: list[list[str]] = []
    current, size = [], 0
    for name, nbytes in named_sizes:
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


class WeightSyncError(RuntimeError):
    pass


class SharedWeights:
    """The full weights in one flat, already-unlinked /dev/shm file (trainer rank 0 writes it).

    A rollout worker on the same host maps it through /proc/<pid>/fd/<fd> and reads the tensors
    in place: one copy on each side instead of pickling through the object store.  The file has
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
