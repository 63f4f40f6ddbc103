"""rlengine/weight_sync.py: checksums, the sent/received comparison and bucketing."""
import torch

from rlengine.weight_sync import SyncReport, bucketize, checksum, compare, tensor_checksum


# ---------------------------------------------------------------- checksums

# Position weights w_i = frac(i * 0.6180339887498949) + 1 (golden-ratio sequence, never periodic).
W = [1.0, 1.6180339887498949, 1.2360679774997898, 1.8541019662496847]


def _approx(pair, expected):
    return pair[0] == expected[0] and abs(pair[1] - expected[1]) < 1e-12


def test_tensor_checksum_by_hand():
    # (sum, sum of x_i * w_i)
    assert _approx(tensor_checksum(torch.tensor([1.0, 2.0, 3.0])), (6.0, 1 * W[0] + 2 * W[1] + 3 * W[2]))
    assert _approx(tensor_checksum(torch.tensor([[1.0, 2.0], [3.0, 4.0]])),
                   (10.0, 1 * W[0] + 2 * W[1] + 3 * W[2] + 4 * W[3]))


def test_checksum_sees_swaps_far_apart():
    # A period-1021 weight would miss swapping elements 0 and 1021; this one must not.
    t = torch.zeros(3000)
    t[0], t[1021] = 1.0, 2.0
    u = t.clone()
    u[0], u[1021] = 2.0, 1.0
    assert tensor_checksum(t) != tensor_checksum(u)


def test_checksum_changes_under_permutation():
    t = torch.tensor([1.0, 2.0, 3.0])
    p = torch.tensor([3.0, 2.0, 1.0])
    s, w = tensor_checksum(t)
    sp, wp = tensor_checksum(p)
    assert sp == s == 6.0                    # the plain sum cannot see a permutation ...
    assert abs(w - (W[0] + 2 * W[1] + 3 * W[2])) < 1e-12 and abs(wp - (3 * W[0] + 2 * W[1] + W[2])) < 1e-12
    assert tensor_checksum(t) != tensor_checksum(p)


def test_checksum_changes_under_transpose_and_row_swap():
    torch.manual_seed(0)
    m = torch.randn(16, 8)
    assert tensor_checksum(m) != tensor_checksum(m.t().contiguous())
    swapped = m[[1, 0, *range(2, 16)]]
    assert tensor_checksum(m) != tensor_checksum(swapped)
    assert tensor_checksum(m) == tensor_checksum(m.clone())


def test_checksum_changes_under_single_element_change():
    t = torch.tensor([1.0, 2.0, 3.0])
    u = torch.tensor([1.0, 2.0, 4.0])
    assert _approx(tensor_checksum(u), (7.0, W[0] + 2 * W[1] + 4 * W[2]))
    big = torch.zeros(5000)
    big2 = big.clone()
    big2[4321] = 1e-3
    assert tensor_checksum(big) == (0.0, 0.0)
    assert tensor_checksum(big2) != tensor_checksum(big)


def test_checksum_same_for_dtype_views_of_same_values():
    # bf16 values are exactly representable in float64, so a bf16 tensor and its float32 copy agree.
    t = torch.tensor([0.5, -1.25, 3.0], dtype=torch.bfloat16)
    assert tensor_checksum(t) == tensor_checksum(t.float())


def test_checksum_of_named_tensors():
    named = [("a", torch.tensor([1.0, 2.0, 3.0])), ("b", torch.tensor([[2.0]]))]
    got = checksum(named)
    assert set(got) == {"a", "b"}
    assert _approx(got["a"], (6.0, W[0] + 2 * W[1] + 3 * W[2])) and got["b"] == (2.0, 2.0)


# ---------------------------------------------------------------- compare

def test_compare_identical_is_ok():
    sums = {"a": (6.0, 14.0), "b": (2.0, 2.0)}
    r = compare(sums, dict(sums), n_bytes=16)
    assert r == SyncReport(ok=True, n_tensors=2, n_bytes=16, mismatched=(), missing=())


def test_compare_reports_mismatched_and_missing():
    sent = {"a": (6.0, 14.0), "b": (2.0, 2.0), "c": (1.0, 1.0), "e": (5.0, 5.0)}
    received = {"a": (6.0, 10.0), "b": (2.0, 2.0), "d": (1.0, 1.0), "e": (5.5, 5.0)}
    r = compare(sent, received, n_bytes=100)
    assert r.ok is False
    assert r.mismatched == ("a", "e")
    assert r.missing == ("c", "d")  # sent but not received, and received but never sent
    assert (r.n_tensors, r.n_bytes) == (4, 100)


def test_compare_only_missing_is_not_ok():
    r = compare({"a": (1.0, 1.0)}, {}, n_bytes=4)
    assert (r.ok, r.mismatched, r.missing) == (False, (), ("a",))


def test_compare_relative_tolerance():
    # rtol 1e-9 relative to max(1, |a|, |b|)
    big = 1.0e6
    assert compare({"w": (big, 0.0)}, {"w": (big + 1e-4, 0.0)}, 0).ok        # 1e-4 <= 1e-3
    assert not compare({"w": (big, 0.0)}, {"w": (big + 1e-2, 0.0)}, 0).ok    # 1e-2 > 1e-3
    assert compare({"w": (0.0, 0.0)}, {"w": (5e-10, 0.0)}, 0).ok             # 5e-10 <= 1e-9
    assert not compare({"w": (0.0, 0.0)}, {"w": (2e-9, 0.0)}, 0).ok
    assert not compare({"w": (1.0, 2.0)}, {"w": (1.0, 2.0 + 1e-6)}, 0).ok    # second component counts


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


def test_compare_engine_maps_stacked_tensors_and_skips_unknown():
    from rlengine.weight_sync import compare_engine

    sent = {"l.q_proj.bias": (1.0, 0.0), "l.k_proj.bias": (2.0, 0.0), "l.v_proj.bias": (3.0, 0.0),
            "norm.weight": (4.0, 0.0)}
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    # The engine's stacked qkv bias must sum to 1 + 2 + 3; rotary caches have no HF counterpart.
    assert compare_engine(sent, {"l.qkv_proj.bias": 6.0, "norm.weight": 4.0, "rotary.cos": 9.0}, packed) == (2, [])
    assert compare_engine(sent, {"l.qkv_proj.bias": 6.5, "norm.weight": 4.0}, packed) == (2, ["l.qkv_proj.bias"])
