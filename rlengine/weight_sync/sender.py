"""Trainer rank 0's side of a weight sync: takes the gathered parameters bucket by bucket and hands
each bucket to every transport this sync uses, checksumming it where it lives."""
from __future__ import annotations

import logging

import torch

from rlengine.weight_sync.broadcast import SyncGroup, flat_buffers, open_store
from rlengine.weight_sync.shm import SharedWeights
from rlengine.weight_sync.verify import checksum

log = logging.getLogger("rlengine")

METHODS = ("shm", "object_store", "broadcast", "cuda_ipc")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class WeightSender:
    def __init__(self, device: torch.device, threads: int = 2):
        self.device, self.threads = device, threads
        # One segment per layout a sync sends (the full weights; with LoRA, base + adapter once, then
        # the adapter alone): receivers map a segment whole.
        self._shm: dict[tuple, SharedWeights] = {}
        self._shm_failed = False
        self._group: SyncGroup | None = None
        self._store = None
        self._ipc_keep: list[torch.Tensor] = []  # IPC buffers stay alive until the next sync

    # -- the process group (broadcast) -------------------------------------------------------

    def open_group(self, host: str, timeout_s: float) -> int:
        self.close_group()
        self._store, port = open_store(host, timeout_s)
        self._host = host
        return port

    def join_group(self, world: int, names: dict[int, str], timeout_s: float) -> None:
        self._group = SyncGroup(self._host, 0, 0, world, self.device, timeout_s, names, store=self._store)

    def close_group(self) -> None:
        if self._group is not None:
            self._group.close()
        self._group, self._store = None, None

    # -- one sync ------------------------------------------------------------------------------

    def begin(self, layout: list[tuple[str, tuple, torch.dtype]], methods: set[str]) -> None:
        unknown = methods - set(METHODS)
        if unknown:
            raise ValueError(f"unknown weight-sync methods {sorted(unknown)}; known: {METHODS}")
        if "broadcast" in methods and self._group is None:
            raise RuntimeError("broadcast sync without a joined weight-sync group")
        self.methods = set(methods)
        self.store = self._shared(layout) if "shm" in methods else None
        if "shm" in methods and self.store is None:
            self.methods = (self.methods - {"shm"}) | {"object_store"}
        self.buckets: list[dict] = []
        self.sums: dict[str, dict] = {"crc32": {}, "dev64": {}}
        self._ipc_keep = []
        self.ipc: list[dict] = []

    def bucket(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """One bucket of full (gathered) parameters, on the trainer's device."""
        on_host = self.device.type == "cpu"
        if self.store is not None:
            for n, t in named:
                self.store.views[n].copy_(t.detach())
            self.sums["crc32"].update(checksum([(n, self.store.views[n]) for n, _ in named], self.threads))
        if "object_store" in self.methods:
            tensors = [(n, t.detach().to("cpu", copy=True)) for n, t in named]
            self.buckets.append({"tensors": tensors})
            if self.store is None:
                self.sums["crc32"].update(checksum(tensors, self.threads))
        if self.methods & {"broadcast", "cuda_ipc"}:
            if on_host:
                if self.store is None and "object_store" not in self.methods:
                    self.sums["crc32"].update(checksum(named, self.threads))
            else:
                self.sums["dev64"].update(checksum(named))
            flats, views = flat_buffers([(n, tuple(t.shape), t.dtype) for n, t in named], self.device)
            for (_, view), (_, t) in zip(views, named):
                view.copy_(t.detach())
            if "broadcast" in self.methods:
                self._group.broadcast(list(flats.values()))
            if "cuda_ipc" in self.methods:
                from rlengine.weight_sync.cuda_ipc import share

                self._ipc_keep.extend(flats.values())
                self.ipc.append({"layout": [(n, tuple(t.shape), dtype_name(t.dtype)) for n, t in named],
                                 "handles": {dtype_name(dt): share(buf) for dt, buf in flats.items()}})

    def finish(self) -> dict:
        out = {"checksums": self.sums, "methods": sorted(self.methods)}
        if self.store is not None:
            out["shm"] = self.store.handle()
        if self.buckets:
            out["buckets"] = self.buckets
        if self.ipc:
            out["ipc"] = self.ipc
        self.buckets = []
        return out

    def abort(self) -> None:
        """A transfer failed (a peer died or timed out): the group is unusable; the driver forms a
        new one before the next broadcast."""
        self.close_group()
        self.buckets, self._ipc_keep, self.ipc = [], [], []

    def _shared(self, layout) -> SharedWeights | None:
        key = tuple(n for n, *_ in layout)
        if key not in self._shm and not self._shm_failed:
            try:
                self._shm[key] = SharedWeights(layout)
            except OSError as e:
                self._shm_failed = True
                log.warning("weight sync through /dev/shm unavailable (%s): sending Ray objects instead", e)
        return self._shm.get(key)
