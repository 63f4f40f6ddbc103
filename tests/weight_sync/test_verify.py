"""rlengine/weight_sync/verify.py and shm.py: checksums, the sent/received comparison, the engine's
(shard-aware) check, bucketing and shared memory."""
import os
import zlib

import pytest
import torch

from rlengine.weight_sync import (SharedWeights, SyncReport, boot_id, bucketize, check_shards, checksum, compare,
                                  engine_check, open_shared, tensor_checksum)
from rlengine.weight_sync.verify import device_hash


# ---------------------------------------------------------------- checksums

def test_tensor_checksum_is_the_crc_of_the_bytes():
    t = torch.tensor([1.0, 2.0, 3.0])
    # float32 little-endian: 1.0 = 00 00 80 3f, 2.0 = 00 00 00 40, 3.0 = 00 00 40 40
    raw = bytes.fromhex("0000803f" "00000040" "00004040")
    assert tensor_checksum(t) == ("crc32", zlib.crc32(raw), 12)
    assert tensor_checksum(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t()) == tensor_checksum(
        torch.tensor([[1.0, 3.0], [2.0, 4.0]]))  # non-contiguous input: the logical order counts


def test_checksum_sees_swaps_far_apart_and_tiny_changes():
    t = torch.zeros(3000)
    t[0], t[1021] = 1.0, 2.0
    u = t.clone()
    u[0], u[1021] = 2.0, 1.0
    assert tensor_checksum(t) != tensor_checksum(u)
    v = t.clone()
    v[2999] = torch.finfo(torch.float32).tiny  # one bit anywhere
    assert tensor_checksum(t) != tensor_checksum(v)
    assert tensor_checksum(t) == tensor_checksum(t.clone())


def test_checksum_sees_permutation_transpose_row_swap_and_dtype():
    torch.manual_seed(0)
    m = torch.randn(16, 8)
    assert tensor_checksum(m) != tensor_checksum(m.t().contiguous())
    assert tensor_checksum(m) != tensor_checksum(m[[1, 0, *range(2, 16)]])
    assert tensor_checksum(torch.tensor([1.0, 2.0, 3.0])) != tensor_checksum(torch.tensor([3.0, 2.0, 1.0]))
    # the bytes are what travel: a bf16 tensor and its float32 copy are different payloads
    b = torch.tensor([0.5, -1.25, 3.0], dtype=torch.bfloat16)
    assert tensor_checksum(b)[2] == 6 and tensor_checksum(b) != tensor_checksum(b.float())


def test_checksum_of_named_tensors_threads_or_not():
    torch.manual_seed(0)
    named = [(f"t{i}", torch.randn(100 + i)) for i in range(7)]
    assert checksum(named) == checksum(named, threads=1) == {n: tensor_checksum(t) for n, t in named}


# ---------------------------------------------------------------- compare

def test_compare_identical_is_ok():
    sums = {"a": (6, 12), "b": (2, 4)}
    r = compare(sums, dict(sums), n_bytes=16)
    assert r == SyncReport(ok=True, n_tensors=2, n_bytes=16, mismatched=(), missing=())


def test_compare_reports_mismatched_and_missing():
    sent = {"a": (6, 12), "b": (2, 4), "c": (1, 4), "e": (5, 4)}
    received = {"a": (7, 12), "b": (2, 4), "d": (1, 4), "e": (5, 8)}
    r = compare(sent, received, n_bytes=100)
    assert r.ok is False
    assert r.mismatched == ("a", "e")
    assert r.missing == ("c", "d")  # sent but not received, and received but never sent
    assert (r.n_tensors, r.n_bytes) == (4, 100)


def test_compare_only_missing_is_not_ok():
    r = compare({"a": (1, 4)}, {}, n_bytes=4)
    assert (r.ok, r.mismatched, r.missing) == (False, (), ("a",))


def test_compare_end_to_end_on_tensors():
    torch.manual_seed(0)
    sent = {"x": torch.randn(33), "y": torch.randn(4, 4)}
    received = {k: v.clone() for k, v in sent.items()}
    assert compare(checksum(sent.items()), checksum(received.items()), 0).ok
    received["y"] = received["y"].flip(0)
    r = compare(checksum(sent.items()), checksum(received.items()), 0)
    assert r.mismatched == ("y",) and r.missing == ()


# ---------------------------------------------------------------- bucketize

def test_bucketize_by_hand():
    sizes = [("a", 100), ("b", 100), ("c", 300), ("d", 50), ("e", 60)]
    # a+b = 200 <= 250; +c would be 500 -> new bucket; c alone (> budget, own bucket);
    # d+e = 110.
    assert bucketize(sizes, bucket_bytes=250) == [["a", "b"], ["c"], ["d", "e"]]


def test_bucketize_exact_fit_and_order():
    sizes = [("x", 125), ("y", 125), ("z", 1)]
    assert bucketize(sizes, bucket_bytes=250) == [["x", "y"], ["z"]]
    assert bucketize([("z", 1), ("x", 125), ("y", 125)], bucket_bytes=250) == [["z", "x"], ["y"]]


def test_bucketize_large_first_and_empty():
    assert bucketize([("big", 1000), ("s", 1)], bucket_bytes=10) == [["big"], ["s"]]
    assert bucketize([], bucket_bytes=10) == []
    assert bucketize([("a", 1), ("b", 2)]) == [["a", "b"]]  # default budget: 256 MiB


def test_bucketize_keeps_every_name_once():
    sizes = [(f"p{i}", (i * 37) % 101 + 1) for i in range(50)]
    buckets = bucketize(sizes, bucket_bytes=200)
    assert [n for b in buckets for n in b] == [n for n, _ in sizes]
    by = dict(sizes)
    for b in buckets:
        assert len(b) == 1 or sum(by[n] for n in b) <= 200


def test_device_hash_by_hand_and_sensitivity():
    # bytes 01 00 00 00 | 02 00 00 00 | 03 (zero-padded): words 1, 2, 3 with weights 1, 2, 3
    x = torch.tensor([1, 0, 0, 0, 2, 0, 0, 0, 3], dtype=torch.uint8)
    assert device_hash(x) == 1 * 1 + 2 * 2 + 3 * 3
    big = torch.tensor([0xFF] * 8, dtype=torch.uint8)  # two words of 2**32 - 1: unsigned, not -1
    assert device_hash(big) == (2**32 - 1) * 1 + (2**32 - 1) * 2
    torch.manual_seed(0)
    t = torch.randn(1000)
    u = t.clone()
    u[[3, 700]] = u[[700, 3]]
    assert tensor_checksum(t, "dev64") != tensor_checksum(u, "dev64")
    assert tensor_checksum(t, "dev64") == tensor_checksum(t.clone(), "dev64")
    assert tensor_checksum(t, "dev64")[0] == "dev64" and tensor_checksum(t)[0] == "crc32"


def test_engine_check_stacked_replicated_and_shards():
    # received: HF name -> (float64 sum, numel)
    got = {"l.q_proj.bias": (1.0, 2), "l.k_proj.bias": (2.0, 1), "l.v_proj.bias": (3.0, 2), "norm.weight": (4.0, 1),
           "embed.weight": (10.0, 6)}
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    # Whole tensors (a stacked qkv of 5 = 2+1+2 elements, a norm, an embedding padded to 8 rows of
    # zeros) must sum to their parts; rotary caches have no counterpart; a 3-of-6 shard waits.
    engine = {"l.qkv_proj.bias": (6.0, 5), "norm.weight": (4.0, 1), "embed.weight": (10.0, 8), "rotary.cos": (9.0, 4)}
    assert engine_check(got, engine, packed) == {"verified": 3, "bad": [], "shards": {}}
    out = engine_check(got, {"l.qkv_proj.bias": (6.5, 5), "embed.weight": (4.0, 3)}, packed)
    assert out["verified"] == 1 and out["bad"] == ["l.qkv_proj.bias"]
    assert out["shards"] == {"embed.weight": (4.0, 3, 10.0, 6, False)}


def test_check_shards_adds_up_ranks_and_skips_what_sums_cannot_check():
    # embed: 6 elements over two ranks of 4 (2 zero-padding rows): 4 + 6 = 10
    ok = [{"embed": (4.0, 4, 10.0, 6, False)}, {"embed": (6.0, 4, 10.0, 6, False)}]
    assert check_shards(ok) == (1, [])
    bad = [{"embed": (4.0, 4, 10.0, 6, False)}, {"embed": (6.5, 4, 10.0, 6, False)}]
    assert check_shards(bad) == (1, ["embed"])
    # a stacked qkv whose shards repeat key/value heads (3 + 3 > 5) is not checkable by sums
    assert check_shards([{"qkv": (4.0, 3, 6.0, 5, True)}, {"qkv": (4.0, 3, 6.0, 5, True)}]) == (0, [])
    # a tensor one rank does not report is not checked
    assert check_shards([{"embed": (4.0, 4, 10.0, 6, False)}, {}]) == (0, [])


# ---------------------------------------------------------------- shared memory

def _layout():
    return [("w", (3, 5), torch.float32), ("b", (7,), torch.bfloat16), ("i", (2, 2), torch.int64)]


def test_shared_weights_round_trip_in_place():
    store = SharedWeights(_layout())
    torch.manual_seed(0)
    src = {"w": torch.randn(3, 5), "b": torch.randn(7).bfloat16(), "i": torch.arange(4).view(2, 2)}
    for n, t in src.items():
        store.views[n].copy_(t)
    h = store.handle()
    assert all(o % 64 == 0 for _, o, _, _ in h["layout"])  # aligned, non-overlapping views
    got = dict(open_shared(h))
    assert {n: (t.dtype, tuple(t.shape)) for n, t in got.items()} == {n: (t.dtype, tuple(t.shape)) for n, t in src.items()}
    assert checksum(got.items()) == checksum(src.items())
    store.views["w"][0, 0] = 42.0  # the reader maps the same pages: a later write shows on a new open
    assert float(dict(open_shared(h))["w"][0, 0]) == 42.0
    # the file has no name: nothing is left in /dev/shm, whatever happens to this process
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"rlengine-weights-{os.getpid()}-")]


def test_open_shared_elsewhere_returns_none_so_the_caller_falls_back():
    h = SharedWeights(_layout()).handle()
    assert open_shared({**h, "boot_id": "another-host"}) is None
    assert open_shared({**h, "path": "/proc/999999999/fd/3"}) is None
    assert boot_id() == h["boot_id"]


def test_shared_weights_without_room_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        SharedWeights([("huge", (1 << 40,), torch.float32)], root=str(tmp_path))
