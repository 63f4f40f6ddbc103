"""rlengine/weight_sync/sender.py on CPU: one bucket handed to several transports, checksummed once
per algorithm, and what the receivers get (shared-memory views, Ray-object buckets) is the bytes
that were sent."""
import pytest
import torch

from rlengine.weight_sync import checksum, open_shared
from rlengine.weight_sync.sender import WeightSender


def _named():
    torch.manual_seed(0)
    return [("w", torch.randn(4, 3)), ("b", torch.randn(5).bfloat16()), ("n", torch.randn(2))]


def test_one_bucket_through_shm_and_object_store():
    named = _named()
    s = WeightSender(torch.device("cpu"))
    s.begin([(n, tuple(t.shape), t.dtype) for n, t in named], {"shm", "object_store"})
    s.bucket(named[:2])
    s.bucket(named[2:])
    out = s.finish()
    assert out["methods"] == ["object_store", "shm"]
    assert out["checksums"]["crc32"] == checksum(named) and out["checksums"]["dev64"] == {}
    assert checksum(open_shared(out["shm"])) == checksum(named)
    assert checksum([nt for b in out["buckets"] for nt in b["tensors"]]) == checksum(named)
    assert [len(b["tensors"]) for b in out["buckets"]] == [2, 1]


def test_broadcast_needs_a_group_and_unknown_methods_are_refused():
    s = WeightSender(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="without a joined weight-sync group"):
        s.begin([], {"broadcast"})
    with pytest.raises(ValueError, match="unknown weight-sync methods"):
        s.begin([], {"carrier_pigeon"})
