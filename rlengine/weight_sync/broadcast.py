"""Process-group transport: trainer rank 0 and every vLLM worker (all tensor-parallel ranks of all
engines it serves) form one process group of their own, beside the trainers' ZeRO group, and the
gathered parameters travel in buckets, one flat buffer per dtype per bucket.  Gloo on CPU, NCCL
on GPU: the same code, only the backend and the buffers' device differ.  This is the path across
nodes.

Membership is checked before any collective: every member announces itself in the group's
TCPStore, and rank 0 waits for all of them for at most `timeout_s`, so a rank that never joins is
named instead of hanging the sync.  Collectives carry the same timeout: a peer that dies in the
middle of a broadcast fails its partners within it.
"""
from __future__ import annotations

import time
from datetime import timedelta

import torch
from torch import distributed as dist

from rlengine.weight_sync.verify import WeightSyncError


def open_store(host: str, timeout_s: float):
    """The group's TCPStore server, on rank 0's node: port 0 binds a free port at once (probing
    first and binding later races other processes for it)."""
    store = dist.TCPStore(host, 0, is_master=True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    return store, store.port


class SyncGroup:
    """One member's handle on the weight-sync group (`rank` 0 is the sender)."""

    def __init__(self, host: str, port: int, rank: int, world: int, device: torch.device, timeout_s: float,
                 names: dict[int, str], store=None, my_host: str | None = None):
        self.rank, self.world, self.device, self.timeout_s = rank, world, device, timeout_s
        timeout = timedelta(seconds=timeout_s)
        if store is None:
            store = dist.TCPStore(host, port, is_master=False, timeout=timeout)
        self.store = store
        store.set(f"joined/{rank}", "1")
        if rank == 0:
            self._wait_members(names)
        self.pg = _process_group(store, rank, world, device, timeout, my_host or host)

    def _wait_members(self, names: dict[int, str]) -> None:
        deadline = time.monotonic() + self.timeout_s
        missing = list(range(1, self.world))
        while missing and time.monotonic() < deadline:
            missing = [r for r in missing if not self.store.check([f"joined/{r}"])]
            if missing:
                time.sleep(0.05)
        if missing:
            who = ", ".join(f"rank {r} ({names.get(r, '?')})" for r in missing)
            raise WeightSyncError(f"weight-sync group: {who} did not join within {self.timeout_s:.0f} s "
                                  "(rollout.sync_timeout_s)")

    def broadcast(self, flat: list[torch.Tensor]) -> None:
        """Rank 0's buffers into every member's buffers of the same shapes (in place)."""
        for buf in flat:
            self.pg.broadcast([buf], dist.BroadcastOptions()).wait(timedelta(seconds=self.timeout_s))

    def close(self) -> None:
        self.pg = None
        self.store = None


def _process_group(store, rank: int, world: int, device: torch.device, timeout: timedelta, host: str):
    prefix = dist.PrefixStore("rlengine-weight-sync", store)
    if device.type == "cuda":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefix, rank, world, opts)
    # Gloo binds to the address given here: the member's own node address, reachable from the others.
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return dist.ProcessGroupGloo(prefix, rank, world, opts)


def flat_buffers(bucket: list[tuple[str, tuple, torch.dtype]], device) -> tuple[dict, list[tuple[str, torch.Tensor]]]:
    """One flat buffer per dtype for a bucket's layout, and the named, shaped views into them."""
    sizes: dict[torch.dtype, int] = {}
    for _, shape, dtype in bucket:
        sizes[dtype] = sizes.get(dtype, 0) + torch.Size(shape).numel()
    flats = {dt: torch.empty(n, dtype=dt, device=device) for dt, n in sizes.items()}
    return flats, bucket_views(flats, bucket)


def bucket_views(flats: dict, bucket: list[tuple[str, tuple, torch.dtype]]) -> list[tuple[str, torch.Tensor]]:
    """The bucket's tensors as views of its per-dtype flat buffers, in layout order."""
    offsets = dict.fromkeys(flats, 0)
    views = []
    for name, shape, dtype in bucket:
        n = torch.Size(shape).numel()
        views.append((name, flats[dtype][offsets[dtype]:offsets[dtype] + n].view(shape)))
        offsets[dtype] += n
    return views
