"""rlengine/tiny.py: the embedded default model, tokenizer and arithmetic data (all built locally)."""
import json
import re

import pytest

from rlengine import tiny


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLENGINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Tokenizer + base model, built once for the module into a private root."""
    root = tmp_path_factory.mktemp("tiny_root")
    base = tiny.build_base(root)
    return root, base


def _pairs(path):
    out = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            m = re.fullmatch(r"Q: (\d+)\+(\d+)=\? A:", row["prompt"])
            assert m, row
            a, b = int(m.group(1)), int(m.group(2))
            assert row["answer"] == str(a + b)
            assert row["completion"] == f" {a + b}"
            out.append((a, b))
    return out


# ---------------------------------------------------------------- data

def test_make_problem():
    assert tiny.make_problem(12, 7) == {"prompt": "Q: 12+7=? A:", "answer": "19", "completion": " 19"}


def test_build_data_is_deterministic(tmp_path):
    d1 = tiny.build_data(tmp_path / "one")
    d2 = tiny.build_data(tmp_path / "two")
    assert d1 == tmp_path / "one" / "data" and d2 == tmp_path / "two" / "data"
    names = ["pref_test.jsonl", "pref_train.jsonl", "test.jsonl", "train.jsonl"]
    for name in names:
        b1, b2 = (d1 / name).read_bytes(), (d2 / name).read_bytes()
        assert b1 and b1 == b2
    assert sorted(p.name for p in d1.iterdir()) == names  # no temp files left


def test_preference_pairs_differ_in_the_units_digit(tmp_path):
    import json

    d = tiny.build_data(tmp_path)
    rows = [json.loads(line) for line in (d / "pref_test.jsonl").read_text().splitlines()]
    assert len(rows) == tiny.N_TEST
    for r in rows:
        a, b = map(int, r["prompt"][3:].split("=")[0].split("+"))
        assert r["chosen"] == f" {a + b}" and r["answer"] == str(a + b)
        wrong = int(r["rejected"])
        assert wrong >= 0 and 1 <= abs(wrong - (a + b)) <= 9


def test_train_and_test_are_disjoint_with_the_documented_sizes(tmp_path):
    d = tiny.build_data(tmp_path)
    train, test = _pairs(d / "train.jsonl"), _pairs(d / "test.jsonl")
    assert len(train) == tiny.N_TRAIN == 20000
    assert len(test) == tiny.N_TEST == 500
    assert len(set(test)) == 500
    assert not set(train) & set(test)
    # every operand pair not held out appears in training
    assert len(set(train)) == 100 * 100 - 500
    assert all(0 <= a <= 99 and 0 <= b <= 99 for a, b in train + test)


def test_build_data_is_cached(tmp_path):
    d = tiny.build_data(tmp_path)
    (d / "test.jsonl").write_text("sentinel\n")
    assert tiny.build_data(tmp_path) == d
    assert (d / "test.jsonl").read_text() == "sentinel\n"


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_splits_digits_individually(built):
    root, _ = built
    tok = tiny.build_tokenizer(root)  # cached: loads the saved one
    for n in list(range(0, 200)) + [1234, 98765, 1000000]:
        ids = tok(str(n), add_special_tokens=False).input_ids
        assert len(ids) == len(str(n)), (n, tok.convert_ids_to_tokens(ids))
        assert [tok.decode([i]) for i in ids] == list(str(n))
    toks = tok.tokenize("Q: 123+45=? A: 168")
    assert toks[toks.index("1"):toks.index("1") + 3] == ["1", "2", "3"]
    assert toks[-3:] == ["1", "6", "8"]


def test_tokenizer_roundtrip_and_special_tokens(built):
    root, _ = built
    tok = tiny.build_tokenizer(root)
    text = "Q: 12+3=? A: 15"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id
    assert tok.convert_tokens_to_ids(tiny.SPECIAL_TOKENS) == [0, 1, 2]
    assert len(tok) <= 512


def test_tokenizer_chat_template(built):
    root, _ = built
    tok = tiny.build_tokenizer(root)
    s = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert s == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------- base model

def test_build_base_is_a_qwen2_that_transformers_loads(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, base = built
    assert base == root / "base"
    model = AutoModelForCausalLM.from_pretrained(str(base))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    c = model.config
    assert c.model_type == "qwen2"
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size) == (128, 4, 4, 2, 384)
    tok = AutoTokenizer.from_pretrained(str(base))
    assert c.vocab_size == len(tok)
    assert c.eos_token_id == tok.eos_token_id
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n_params < 1.5e6
    ids = tok("Q: 1+2=? A:", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_build_base_is_deterministic(built, tmp_path):
    from safetensors.torch import load_file

    _, base1 = built
    base2 = tiny.build_base(tmp_path)
    w1, w2 = load_file(str(base1 / "model.safetensors")), load_file(str(base2 / "model.safetensors"))
    assert w1.keys() == w2.keys()
    assert all((w1[k] == w2[k]).all() for k in w1)
    assert (base1 / "tokenizer.json").read_text() == (base2 / "tokenizer.json").read_text()


# ---------------------------------------------------------------- resolve_path

def test_resolve_path_non_tiny_passes_through(cache):
    assert tiny.resolve_path("/data/x.jsonl") == "/data/x.jsonl"
    assert tiny.resolve_path("openai/gsm8k") == "openai/gsm8k"
    assert not cache.exists()


def test_resolve_sft_not_built_is_helpful(cache):
    assert not tiny.sft_is_built()
    with pytest.raises(FileNotFoundError) as ei:
        tiny.resolve_path("tiny:sft")
    msg = str(ei.value)
    assert "tiny:sft" in msg and "not built" in msg
    assert "python -m rlengine.main recipe=sft_tiny" in msg


def test_resolve_sft_when_built(cache):
    d = tiny.sft_dir()
    assert d == cache / "tiny" / tiny.TINY_VERSION / "sft"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    assert tiny.sft_is_built()
    assert tiny.resolve_path("tiny:sft") == str(d)


def test_resolve_data_builds_under_the_cache(cache):
    p = tiny.resolve_path("tiny:test")
    assert p == str(cache / "tiny" / tiny.TINY_VERSION / "data" / "test.jsonl")
    assert len(_pairs(p)) == 500
    assert tiny.resolve_path("tiny:train").endswith("/data/train.jsonl")


def test_resolve_unknown_tiny_name(cache):
    with pytest.raises(ValueError) as ei:
        tiny.resolve_path("tiny:large")
    msg = str(ei.value)
    assert "tiny:large" in msg
    for known in ("tiny:base", "tiny:sft", "tiny:train", "tiny:test"):
        assert known in msg


def test_is_tiny():
    assert tiny.is_tiny("tiny:base")
    assert not tiny.is_tiny("Qwen/Qwen2.5-0.5B")
    assert not tiny.is_tiny(None)
    assert not tiny.is_tiny("")
