"""What every transport verifies: checksums of the bytes that were sent and of the bytes that
arrived, and the tensors the engine ended up holding against the tensors it was given.

Checksums are computed where the tensor lives: CRC-32 of the raw bytes on the host (~4 GB/s on
one core, zlib releases the GIL) and, for tensors on an accelerator, an order-sensitive weighted
sum of the bytes' 32-bit words computed on the device (no copy to the host).  A checksum is
(algorithm, value, bytes): the sender computes each algorithm the receivers use, so a comparison
never mixes them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable
import zlib

import torch

BUCKET_BYTES = 256 << 20
_PRIME = 65521  # word weights cycle through 1..65521: a swap of two words changes the sum


class WeightSyncError(RuntimeError):
    pass


def checksum_kind(t: torch.Tensor) -> str:
    return "crc32" if t.device.type == "cpu" else "dev64"


def tensor_checksum(t: torch.Tensor, kind: str | None = None) -> tuple[str, int, int]:
    """(kind, value, byte count) of `t`'s bytes in logical (row-major) order; exact."""
    kind = kind or checksum_kind(t)
    x = t.detach().contiguous().reshape(-1).view(torch.uint8)
    if kind == "crc32":
        if x.device.type != "cpu":
            x = x.cpu()
        return kind, zlib.crc32(memoryview(x.numpy())), x.numel()
    return kind, device_hash(x), x.numel()


def device_hash(x_u8: torch.Tensor) -> int:
    """sum_i w_i * word_i mod 2**64 over the bytes as little-endian uint32 words (zero-padded),
    w_i = i mod 65521 + 1.  Integer sums are exact and associative, so any device and any
    reduction order give the same value."""
    n = x_u8.numel()
    if n % 4:
        x_u8 = torch.cat([x_u8, x_u8.new_zeros(4 - n % 4)])
    words = x_u8.view(torch.int32).long() & 0xFFFFFFFF
    w = torch.arange(words.numel(), device=words.device, dtype=torch.long) % _PRIME + 1
    return int((words * w).sum()) & 0xFFFFFFFFFFFFFFFF


def checksum(named: Iterable[tuple[str, torch.Tensor]], threads: int = 2,
             kind: str | None = None) -> dict[str, tuple[str, int, int]]:
    named = list(named)
    if threads <= 1 or len(named) < 2 or any(t.device.type != "cpu" for _, t in named):
        return {name: tensor_checksum(t, kind) for name, t in named}
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip((n for n, _ in named), pool.map(lambda t: tensor_checksum(t, kind), (t for _, t in named))))


@dataclass(frozen=True)
class SyncReport:
    ok: bool
    n_tensors: int
    n_bytes: int
    mismatched: tuple[str, ...]
    missing: tuple[str, ...]


def compare(sent: dict[str, tuple], received: dict[str, tuple], n_bytes: int) -> SyncReport:
    """Names and checksums must match exactly."""
    missing = tuple(sorted(set(sent) ^ set(received)))
    bad = [name for name in sorted(set(sent) & set(received)) if tuple(sent[name]) != tuple(received[name])]
    return SyncReport(ok=not missing and not bad, n_tensors=len(sent), n_bytes=n_bytes,
                      mismatched=tuple(bad), missing=missing)


def hf_parts(name: str, packed: dict[str, list[str]]) -> list[str]:
    """The HF tensors behind an engine tensor: vLLM stacks some (qkv_proj = q|k|v_proj)."""
    for stacked, pieces in packed.items():
        if f".{stacked}." in f".{name}":
            return [name.replace(stacked, p) for p in pieces]
    return [name]


def engine_check(received: dict[str, tuple[float, int]], engine: dict[str, tuple[float, int]],
                 packed: dict[str, list[str]], rtol: float = 1e-6) -> dict:
    """One tensor-parallel rank's engine tensors against what it was given.

    `received`: HF name -> (float64 sum, numel) of the full tensors that arrived; `engine`: engine
    name -> (float64 sum, numel) of what this rank holds.  A tensor this rank holds whole
    (replicated; at least its parts' numel, the excess being zero vocabulary padding) must sum to
    its parts; a shard cannot be checked alone and is returned in `shards` for `check_shards` to
    add up over the engine's ranks.  Engine tensors with no counterpart (rotary caches) are
    skipped; the CPU build's repacked linear weights are empty and never reach here."""
    verified, bad, shards = 0, [], {}
    for name, (value, numel) in engine.items():
        parts = hf_parts(name, packed)
        if not all(p in received for p in parts):
            continue
        expected = sum(received[p][0] for p in parts)
        full = sum(received[p][1] for p in parts)
        if numel >= full:
            verified += 1
            if not _close(expected, value, rtol):
                bad.append(name)
        else:
            shards[name] = (value, numel, expected, full, len(parts) > 1)
    return {"verified": verified, "bad": bad, "shards": shards}


def check_shards(per_rank: list[dict], rtol: float = 1e-6) -> tuple[int, list[str]]:
    """Sharded engine tensors over all ranks of one engine: their sums must add up to the full
    tensor's where the shards partition it.  A plain tensor's shards may exceed it only by
    vocabulary padding (zeros); a stacked one (qkv) whose shards exceed it repeats key/value heads
    (more ranks than heads) and cannot be checked by sums.  Returns (verified, names that disagree)."""
    verified, bad = 0, []
    for name in sorted({n for r in per_rank for n in r}):
        rows = [r[name] for r in per_rank if name in r]
        total, full, stacked = sum(r[1] for r in rows), rows[0][3], rows[0][4]
        if len(rows) != len(per_rank) or total < full or (stacked and total != full):
            continue
        verified += 1
        if not _close(rows[0][2], sum(r[0] for r in rows), rtol):
            bad.append(name)
    return verified, bad


def _close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(1.0, abs(a), abs(b))


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
