"""rlengine/weight_sync/broadcast.py: the process group of trainer rank 0 and the vLLM workers, on
gloo (CPU), with real processes: the bucket layout arrives intact, a member that never joins is
named, and a member that dies in the middle of a broadcast fails its partner within the timeout."""
import multiprocessing as mp
import os
import time

import pytest
import torch

from rlengine.weight_sync import WeightSyncError
from rlengine.weight_sync.broadcast import SyncGroup, flat_buffers, open_store

LAYOUT = [("a", (2, 3), torch.float32), ("b", (4,), torch.float32), ("c", (3,), torch.bfloat16)]


def _member(port, rank, world, q, die=False):
    g = SyncGroup("127.0.0.1", port, rank, world, torch.device("cpu"), 20, {})
    flats, views = flat_buffers(LAYOUT, "cpu")
    if die:
        os._exit(1)
    g.broadcast(list(flats.values()))
    q.put((rank, {n: v.tolist() for n, v in views}))


def test_flat_buffers_one_per_dtype_views_in_order():
    flats, views = flat_buffers(LAYOUT, "cpu")
    assert {dt: t.numel() for dt, t in flats.items()} == {torch.float32: 10, torch.bfloat16: 3}
    assert [(n, tuple(v.shape), v.dtype) for n, v in views] == [(n, s, d) for n, s, d in LAYOUT]
    views[1][1].fill_(7.0)  # b lives right after a's 6 elements in the float32 buffer
    assert flats[torch.float32][6:10].tolist() == [7.0] * 4


def test_broadcast_reaches_every_member():
    ctx = mp.get_context("spawn")
    store, port = open_store("127.0.0.1", 20)
    q = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(port, r, 3, q)) for r in (1, 2)]
    for p in procs:
        p.start()
    g = SyncGroup("127.0.0.1", port, 0, 3, torch.device("cpu"), 20, {}, store=store)
    flats, views = flat_buffers(LAYOUT, "cpu")
    for i, (_, v) in enumerate(views):
        v.copy_(torch.arange(v.numel()).view(v.shape) + 10 * i)
    g.broadcast(list(flats.values()))
    got = dict(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    want = {"a": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], "b": [10.0, 11.0, 12.0, 13.0], "c": [20.0, 21.0, 22.0]}
    assert got == {1: want, 2: want}


def test_member_that_never_joins_is_named_within_the_timeout():
    store, port = open_store("127.0.0.1", 2)
    t0 = time.monotonic()
    with pytest.raises(WeightSyncError, match=r"rank 1 \(rollout engine 0 tp rank 0\) did not join within 2 s"):
        SyncGroup("127.0.0.1", port, 0, 2, torch.device("cpu"), 2, {1: "rollout engine 0 tp rank 0"}, store=store)
    assert time.monotonic() - t0 < 10


def test_member_dying_mid_broadcast_fails_the_sender_within_the_timeout():
    ctx = mp.get_context("spawn")
    store, port = open_store("127.0.0.1", 20)
    q = ctx.Queue()
    p = ctx.Process(target=_member, args=(port, 1, 2, q, True))
    p.start()
    g = SyncGroup("127.0.0.1", port, 0, 2, torch.device("cpu"), 20, {}, store=store)
    p.join(30)
    big = torch.zeros(64 << 20, dtype=torch.uint8)  # larger than socket buffers: the send must notice
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        g.broadcast([big])
    assert time.monotonic() - t0 < 25
