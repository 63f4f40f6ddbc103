"""Trainer -> rollout weight transfer: buckets, checksums and the verification the controller runs.

The trainer gathers full parameters bucket by bucket (ZeRO-3 GatheredParameters) and each
bucket travels as one Ray object.  Both sides compute `checksum` over the same named tensors:
the trainer before sending, the rollout worker on what it received, right before it hands the
tensors to vLLM.  On vLLM's CPU build the loaded linear weights are repacked into oneDNN
handles and cannot be read back, so that the *loaded* model is right is verified separately by
log-prob agreement: `sync/logprob_drift` every step (and `sync/probe_drift` straight after the
push, on a fixed probe sequence).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

BUCKET_BYTES = 256 << 20


def tensor_checksum(t: torch.Tensor) -> tuple[float, float]:
    """(sum, position-weighted sum) in float64: order-sensitive, cheap on any device."""
    x = t.detach().reshape(-1).double()
    # Weights from the golden-ratio sequence never repeat, so any swap of two unequal elements shows.
    w = torch.frac(torch.arange(x.numel(), device=x.device, dtype=torch.float64) * 0.6180339887498949) + 1.0
    return float(x.sum()), float((x * w).sum())


def checksum(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, tuple[float, float]]:
    return {name: tensor_checksum(t) for name, t in named}


@dataclass(frozen=True)
class SyncReport:
    ok: bool
    n_tensors: int
    n_bytes: int
    mismatched: tuple[str, ...]
    missing: tuple[str, ...]


def compare(sent: dict[str, tuple[float, float]], received: dict[str, tuple[float, float]],
            n_bytes: int, rtol: float = 1e-9) -> SyncReport:
    """Names must match exactly; values to `rtol` (sums of identical tensors can differ in the
    last bits only when the two sides reduce on different devices)."""
    missing = tuple(sorted(set(sent) ^ set(received)))
    bad = []
    for name in sorted(set(sent) & set(received)):
        for a, b in zip(sent[name], received[name]):
            if abs(a - b) > rtol * max(1.0, abs(a), abs(b)):
                bad.append(name)
                break
    return SyncReport(ok=not missing and not bad, n_tensors=len(sent), n_bytes=n_bytes,
                      mismatched=tuple(bad), missing=missing)


def compare_engine(sent: dict[str, tuple[float, float]], engine_sums: dict[str, float],
                   packed: dict[str, list[str]], rtol: float = 1e-6) -> tuple[int, list[str]]:
    """Check the weights the engine actually holds against what the trainer sent.

    vLLM stacks some HF tensors into one (qkv_proj = q_proj|k_proj|v_proj): the sum of a stacked
    tensor must equal the sum of its parts.  Returns (tensors verified, names that disagree).
    Engine tensors with no counterpart in `sent` (e.g. rotary caches) are not compared.
    """
    verified, bad = 0, []
    for name, value in engine_sums.items():
        parts = [name]
        for stacked, pieces in packed.items():
            if f".{stacked}." in f".{name}":
                parts = [name.replace(stacked, p) for p in pieces]
                break
        if not all(p in sent for p in parts):
            continue
        expected = sum(sent[p][0] for p in parts)
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
