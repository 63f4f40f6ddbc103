import pickle

import pytest
import torch

from rlengine.protocol import Batch


def make(n=5):
    return Batch(
        tensors={"ids": torch.arange(n * 3).reshape(n, 3), "reward": torch.arange(n, dtype=torch.float32)},
        meta={"prompt": [f"p{i}" for i in range(n)]},
        info={"global_tokens": 123},
    )


def test_access():
    b = make()
    assert len(b) == 5
    assert b["ids"].shape == (5, 3)
    assert b["prompt"] == ["p0", "p1", "p2", "p3", "p4"]
    assert "reward" in b and "prompt" in b and "nope" not in b
    assert b.keys() == ["ids", "reward", "prompt"]
    with pytest.raises(KeyError, match="nope"):
        b["nope"]
    with pytest.raises(TypeError, match="index"):
        b[0]
    assert len(Batch()) == 0


def test_leading_dim_validated_with_key_and_shape():
    with pytest.raises(ValueError, match=r"'b' has shape \(3, 2\).*'a' has leading dim 4"):
        Batch({"a": torch.zeros(4), "b": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="'s' has length 2"):
        Batch({"a": torch.zeros(4)}, {"s": ["x", "y"]})
    with pytest.raises(ValueError, match="0-dim"):
        Batch({"a": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        Batch({"a": [1, 2]})
    with pytest.raises(ValueError, match="both"):
        Batch({"a": torch.zeros(2)}, {"a": [1, 2]})


def test_update_returns_new_batch():
    b = make()
    c = b.update(adv=torch.ones(5), answer=list("abcde"))
    assert "adv" not in b and "answer" not in b
    assert c["adv"].tolist() == [1.0] * 5 and c["answer"] == list("abcde")
    with pytest.raises(ValueError, match="'adv' has shape \\(4,\\)"):
        b.update(adv=torch.ones(4))
    # replacing a meta field with a tensor of the same name moves it
    d = b.update(prompt=torch.zeros(5))
    assert "prompt" in d.tensors and "prompt" not in d.meta


def test_union():
    b = make()
    u = b.union(Batch({"ids": b["ids"].clone(), "v": torch.zeros(5)}, info={"step": 3}))
    assert u.keys() == ["ids", "reward", "v", "prompt"]
    assert u.info == {"global_tokens": 123, "step": 3}
    with pytest.raises(ValueError, match="tensor 'ids' differs"):
        b.union(Batch({"ids": torch.zeros(5, 3, dtype=torch.long)}))
    with pytest.raises(ValueError, match="5 and 2"):
        b.union(Batch({"v": torch.zeros(2)}))


def test_select():
    s = make().select(["reward", "prompt"])
    assert s.keys() == ["reward", "prompt"] and s.info == {"global_tokens": 123}
    with pytest.raises(KeyError, match="missing_key"):
        make().select(["missing_key"])


def test_index_variants_keep_meta_aligned():
    b = make()
    for idx in ([4, 0], torch.tensor([4, 0])):
        r = b.index(idx)
        assert r["reward"].tolist() == [4.0, 0.0] and r["prompt"] == ["p4", "p0"]
    r = b.index(torch.tensor([True, False, True, False, False]))
    assert r["reward"].tolist() == [0.0, 2.0] and r["prompt"] == ["p0", "p2"]
    r = b.index(slice(1, 3))
    assert r["ids"].tolist() == [[3, 4, 5], [6, 7, 8]] and r["prompt"] == ["p1", "p2"]
    assert b.index(-1)["prompt"] == ["p4"] and len(b.index(2)) == 1
    assert len(b.index([])) == 0
    with pytest.raises(ValueError, match="bool index"):
        b.index(torch.tensor([True, False]))


def test_split_sizes_and_order():
    b = make(10)
    parts = b.split(4)
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    assert [p["prompt"][0] for p in parts] == ["p0", "p3", "p6", "p8"]
    assert all(p.info == {"global_tokens": 123} for p in parts)
    with pytest.raises(ValueError, match="11"):
        b.split(11)
    assert [len(p) for p in make(2).split(3, allow_empty=True)] == [1, 1, 0]


def test_chunk_by_size():
    assert [len(c) for c in make(10).chunk_by_size(4)] == [4, 4, 2]


def test_concat_roundtrip_and_errors():
    b = make(7)
    c = Batch.concat(b.split(3))
    assert torch.equal(c["ids"], b["ids"]) and c["prompt"] == b["prompt"] and c.info == b.info
    with pytest.raises(ValueError, match="keys"):
        Batch.concat([b, b.select(["ids"])])
    with pytest.raises(ValueError, match="info 'global_tokens' differs"):
        Batch.concat([b, b.with_info(global_tokens=1)])
    with pytest.raises(ValueError, match="'x' has incompatible shapes"):
        Batch.concat([Batch({"x": torch.zeros(1, 2)}), Batch({"x": torch.zeros(1, 3)})])


def test_repeat_interleave():
    r = make(2).repeat_interleave(3)
    assert r["prompt"] == ["p0", "p0", "p0", "p1", "p1", "p1"]
    assert r["reward"].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert r["ids"].shape == (6, 3)


def test_to_device():
    c = make().to("cpu")
    assert c["ids"].device.type == "cpu" and c["prompt"] == make()["prompt"]


def test_pickle_roundtrip_and_split_ships_only_its_rows():
    big = Batch({"x": torch.randn(1000, 100)}, {"s": list(range(1000))}, {"k": 1})
    part = big.split(10)[3]
    restored = pickle.loads(pickle.dumps(part))
    assert torch.equal(restored["x"], big["x"][300:400]) and restored["s"] == list(range(300, 400))
    assert restored.info == {"k": 1}
    # a 100-row slice is 40 KB of floats; pickling the whole storage would be 400 KB
    assert len(pickle.dumps(part)) < 60_000
    assert len(pickle.dumps(big)) > 400_000
