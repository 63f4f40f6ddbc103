"""rlengine/tiny_chat.py: the embedded chat world (tokenizer, model, instruction and identity data)."""
import json

import pytest

from rlengine import tiny, tiny_chat as tc


def _rows(d, name):
    return [json.loads(line) for line in (d / f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_root")
    return root, tc.build_chat_base(root), tc.build_chat_data(root)


def test_data_is_deterministic(built, tmp_path):
    _, _, d1 = built
    d2 = tc.build_chat_data(tmp_path)
    names = sorted(f"{n}.jsonl" for n in tc.CHAT_DATA)
    assert sorted(p.name for p in d1.iterdir()) == names  # no temp files left
    for name in names:
        assert (d1 / name).read_bytes() == (d2 / name).read_bytes()


def test_tokenizer_is_deterministic(built, tmp_path):
    root, _, _ = built
    tc.build_chat_tokenizer(tmp_path)
    one, two = (tc.chat_root(r) / "tokenizer" / "tokenizer.json" for r in (root, tmp_path))
    assert one.read_bytes() == two.read_bytes()


def test_template_is_chatml_with_a_default_system_turn(built):
    from transformers import AutoTokenizer

    _, base, _ = built
    tok = AutoTokenizer.from_pretrained(str(base))
    msgs = [{"role": "user", "content": "Say bako."}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nSay bako.<|im_end|>\n<|im_start|>assistant\n")
    sys_msgs = [{"role": "system", "content": "Answer briefly."}, *msgs, {"role": "assistant", "content": "bako"}]
    assert tok.apply_chat_template(sys_msgs, tokenize=False) == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nSay bako.<|im_end|>\n"
        "<|im_start|>assistant\nbako<|im_end|>\n")
    for t in tc.SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False).input_ids) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # Digits are single tokens, as in tiny.py, so numbers tokenise the same way everywhere.
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]


def test_base_model_config(built):
    from transformers import AutoConfig, GenerationConfig

    _, base, _ = built
    cfg = AutoConfig.from_pretrained(str(base))
    gen = GenerationConfig.from_pretrained(str(base))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    ids = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert cfg.model_type == "qwen2" and cfg.vocab_size == len(tok)
    assert gen.eos_token_id == ids and gen.pad_token_id == ids[1]


def test_row_formats(built):
    _, _, d = built
    train = _rows(d, "chat_train")
    assert len(train) == tc.N_CHAT_TRAIN
    n_multi = n_sys = 0
    for r in train:
        msgs = r["messages"]
        n_sys += msgs[0]["role"] == "system"
        turns = [m for m in msgs if m["role"] != "system"]
        n_multi += len(turns) > 2
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2) and turns
        assert all(isinstance(m["content"], str) and m["content"] for m in msgs)
    assert n_multi > 0 and n_sys > 0
    for name in ("chat_test", "chat_math_test", "identity_test"):
        for r in _rows(d, name):
            assert isinstance(r["prompt"], str) and isinstance(r["answer"], str) and r["answer"]
    assert {r["task"] for r in _rows(d, "chat_test")} == set(tc.TASKS)
    for name in ("identity_pref_train", "identity_pref_test"):
        for r in _rows(d, name):
            assert set(r) == {"prompt", "chosen", "rejected", "answer"} and r["answer"] == tc.NEW_NAME
            assert tc.NEW_NAME in r["chosen"] and tc.OLD_NAME in r["rejected"]


def test_splits_are_disjoint(built):
    _, _, d = built
    train_users = {m["content"] for r in _rows(d, "chat_train") for m in r["messages"] if m["role"] == "user"}
    train_text = " ".join(m["content"] for r in _rows(d, "chat_train") for m in r["messages"])
    for r in _rows(d, "chat_test"):
        assert r["prompt"] not in train_users
    test_words, train_words = set(tc._split_words()[1]), set(train_text.replace("?", " ").replace(".", " ").split())
    assert test_words and not test_words & train_words
    # Held-out identity phrasings occur nowhere in training, not even inside longer prompts.
    for core in tc.ID_TEST_CORES:
        assert core not in train_text
        assert all(core not in r["prompt"] for r in _rows(d, "identity_pref_train"))
    assert {r["prompt"] for r in _rows(d, "identity_test")} == {r["prompt"] for r in _rows(d, "identity_pref_test")}
    # Chat arithmetic holds out exactly tiny.py's held-out operand pairs.
    _, held = tiny._split_pairs()
    assert [r["prompt"] for r in _rows(d, "chat_math_test")] == [f"What is {a}+{b}?" for a, b in held]
    held_prompts = {f"What is {a}+{b}?" for a, b in held}
    assert not held_prompts & train_users
    # The SFT corpus carries only the old identity.
    assert tc.NEW_NAME not in train_text and tc.OLD_NAME in train_text


def test_resolve_path_knows_the_chat_names(tmp_path, monkeypatch):
    monkeypatch.setenv("RLENGINE_CACHE", str(tmp_path))
    assert tiny.resolve_path("tiny:chat_test").endswith("chat_v2/data/chat_test.jsonl")
    assert tiny.TRAINED["chat"] == "sft_tiny_chat"
    with pytest.raises(FileNotFoundError):
        tiny.resolve_path("tiny:chat")
