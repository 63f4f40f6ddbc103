"""rlengine/data.py and rlengine/layout.py: row loading and checking, the seeded prompt loader, the packed layout."""
import json
from types import SimpleNamespace

import pytest
import torch

from rlengine.data import DataError, PromptEncoder, PromptLoader, check_rows, load_rows, prompt_seed
from rlengine.layout import concat_rollouts, length_bucketed, pack_sequences, trim_padding
from rlengine.stages.sft import completion_batch as sft_batch
from rlengine.protocol import Batch


# ---------------------------------------------------------------- load_rows / check_rows

def test_load_rows_jsonl_with_source(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": "2", "x": 5}\n')
    rows = load_rows(str(p))
    assert rows == [{"prompt": "a", "answer": "1", "_source": f"{p}:1"},
                    {"prompt": "b", "answer": "2", "x": 5, "_source": f"{p}:3"}]


def test_load_rows_bad_line_reports_path_and_lineno(tmp_path):
    p = tmp_path / "bad.jsonl"
    # line 1 ok, line 2 blank (skipped but counted), line 3 broken
    p.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": \n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=rf"{p}:3: not valid JSON"):
        load_rows(str(p))


def test_load_rows_non_object_line(tmp_path):
    p = tmp_path / "list.jsonl"
    p.write_text('{"prompt": "a", "answer": "1"}\n[1, 2]\n')
    with pytest.raises(DataError, match=rf"{p}:2: expected a JSON object, got list"):
        load_rows(str(p))


def test_check_rows_names_missing_field_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a", "answer": "1"},
        {"prompt": "b", "answer": "2"},
        {"prompt": "c", "solution": "3"},
    ]) + "\n")
    rows = load_rows(str(p))
    check_rows(rows[:2], ("prompt", "answer"), str(p))  # fine
    with pytest.raises(DataError) as ei:
        check_rows(rows, ("prompt", "answer"), str(p))
    msg = str(ei.value)
    assert msg.startswith(f"{p}:3: missing field 'answer'")
    assert "data.answer_key" in msg


def test_check_rows_none_counts_as_missing_and_empty_is_an_error():
    rows = [{"prompt": None, "answer": "1", "_source": "x.jsonl:7"}]
    with pytest.raises(DataError, match=r"^x\.jsonl:7: missing field 'prompt'"):
        check_rows(rows, ("prompt", "answer"), "x.jsonl")
    with pytest.raises(DataError, match="no rows"):
        check_rows([], ("prompt",), "empty.jsonl")


# ---------------------------------------------------------------- PromptLoader

def _rows(n):
    return [{"prompt": f"p{i}", "answer": str(i), "i": i} for i in range(n)]


def _ids(batch):
    return [r["i"] for r in batch]


def test_loader_deterministic_per_seed():
    a = PromptLoader(_rows(12), 4, seed=7)
    b = PromptLoader(_rows(12), 4, seed=7)
    c = PromptLoader(_rows(12), 4, seed=8)
    seq_a = [_ids(a.next()) for _ in range(9)]
    seq_b = [_ids(b.next()) for _ in range(9)]
    seq_c = [_ids(c.next()) for _ in range(9)]
    assert seq_a == seq_b
    assert seq_a != seq_c
    assert seq_a[:3] != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # shuffled


def test_loader_covers_each_row_once_per_epoch():
    loader = PromptLoader(_rows(12), 4, seed=3)
    epochs = []
    for _ in range(3):
        ids = [i for _ in range(3) for i in _ids(loader.next())]
        assert sorted(ids) == list(range(12))
        epochs.append(ids)
    assert loader.state_dict() == {"epoch": 2, "pos": 12}
    # reshuffled each epoch
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_loader_incomplete_tail_never_repeats_within_epoch():
    loader = PromptLoader(_rows(10), 4, seed=0)  # 2 full batches per epoch, 2 rows dropped
    for _ in range(3):
        ids = _ids(loader.next()) + _ids(loader.next())
        assert len(set(ids)) == 8
    assert loader.state_dict() == {"epoch": 2, "pos": 8}


def test_loader_no_shuffle_is_in_order():
    loader = PromptLoader(_rows(6), 3, seed=0, shuffle=False)
    assert [_ids(loader.next()) for _ in range(3)] == [[0, 1, 2], [3, 4, 5], [0, 1, 2]]


def test_loader_resume_gives_exact_same_sequence():
    ref = PromptLoader(_rows(10), 3, seed=5)
    for _ in range(4):  # 3 batches per epoch -> now in epoch 1, pos 3
        ref.next()
    state = ref.state_dict()
    assert state == {"epoch": 1, "pos": 3}
    expected = [_ids(ref.next()) for _ in range(8)]

    resumed = PromptLoader(_rows(10), 3, seed=5)
    resumed.next()  # a different position before loading
    resumed.load_state_dict(dict(state))
    assert [_ids(resumed.next()) for _ in range(8)] == expected


def test_loader_resume_at_epoch_boundary():
    ref = PromptLoader(_rows(6), 3, seed=1)
    ref.next(), ref.next()
    state = ref.state_dict()
    assert state == {"epoch": 0, "pos": 6}
    expected = [_ids(ref.next()) for _ in range(4)]
    resumed = PromptLoader(_rows(6), 3, seed=1)
    resumed.load_state_dict(state)
    assert [_ids(resumed.next()) for _ in range(4)] == expected


def test_loader_too_few_rows():
    with pytest.raises(DataError, match="3 training rows is fewer than data.prompts_per_step=4"):
        PromptLoader(_rows(3), 4, seed=0)


# ---------------------------------------------------------------- pack_sequences

def test_pack_sequences_layout_by_hand():
    out = pack_sequences(prompts=[[5, 6, 7], [8]], responses=[[9], [10, 11]],
                         logps=[[-0.5], [-1.0, -2.0]], pad_id=0)
    # P = 3, R = 2: [left-padded prompt | right-padded response]
    assert out["input_ids"].tolist() == [[5, 6, 7, 9, 0],
                                         [0, 0, 8, 10, 11]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0],
                                              [0, 0, 1, 1, 1]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 3],
                                            [0, 0, 0, 1, 2]]
    assert out["responses"].tolist() == [[9, 0], [10, 11]]
    assert out["response_mask"].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert out["response_length"].tolist() == [1.0, 2.0]
    assert out["rollout_logp"].tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert out["input_ids"].dtype == torch.long
    assert out["attention_mask"].dtype == torch.long
    assert out["response_mask"].dtype == torch.float32
    assert set(out) == {"input_ids", "attention_mask", "position_ids", "responses", "response_mask",
                        "response_length", "rollout_logp"}


def test_pack_sequences_empty_response_and_no_logps():
    out = pack_sequences(prompts=[[1, 2], [3]], responses=[[], []], logps=None, pad_id=99)
    # R is at least 1 so tensors keep a response column
    assert out["input_ids"].tolist() == [[1, 2, 99], [99, 3, 99]]
    assert out["attention_mask"].tolist() == [[1, 1, 0], [0, 1, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert out["responses"].tolist() == [[99], [99]]
    assert out["response_mask"].tolist() == [[0.0], [0.0]]
    assert out["response_length"].tolist() == [0.0, 0.0]
    assert "rollout_logp" not in out


def _rollout(prompts, responses, logps, pad_id=99, rank=0, **meta):
    return Batch(tensors=pack_sequences(prompts, responses, logps, pad_id), meta=meta,
                 info={f"gen_s/rank{rank}": 0.1 * (rank + 1), "pad_id": pad_id})


def test_concat_rollouts_repads_to_the_widest_prompt_and_response_by_hand():
    a = _rollout([[5, 6]], [[9]], [[-0.5]], rank=0, prompt=["a"])                     # P=2, R=1
    b = _rollout([[7, 8, 4], [3]], [[10, 11], []], [[-1.0, -2.0], []], rank=1, prompt=["b", "c"])  # P=3, R=2
    out = concat_rollouts([a, b])
    assert out["input_ids"].tolist() == [[99, 5, 6, 9, 99],
                                         [7, 8, 4, 10, 11],
                                         [99, 99, 3, 99, 99]]
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1, 0],
                                              [1, 1, 1, 1, 1],
                                              [0, 0, 1, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 0, 1, 2, 2],
                                            [0, 1, 2, 3, 4],
                                            [0, 0, 0, 0, 0]]
    assert out["responses"].tolist() == [[9, 99], [10, 11], [99, 99]]
    assert out["response_mask"].tolist() == [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    assert out["rollout_logp"].tolist() == [[-0.5, 0.0], [-1.0, -2.0], [0.0, 0.0]]
    assert out["response_length"].tolist() == [1.0, 2.0, 0.0]
    assert out["prompt"] == ["a", "b", "c"]
    assert out.info == {"gen_s/rank0": 0.1, "gen_s/rank1": 0.2, "pad_id": 99}
    for k in out.tensors:
        assert out[k].dtype == a[k].dtype, k


def test_concat_rollouts_of_three_uneven_shards_equals_one_engine():
    """7 prompts over 3 engines (Batch.split: 3, 2, 2), 2 samples each: the joined batch is the one a
    single engine packs, rows prompt-major, so group_id = arange(7).repeat_interleave(2) is right."""
    prompts = [[1] * n for n in (2, 5, 3, 1, 4, 6, 2)]
    responses = [[7] * n for n in (1, 3, 0, 2, 4, 1, 2, 5, 3, 1, 2, 2, 1, 6)]  # row i*2+j: sample j of prompt i
    logps = [[-0.1 * (k + 1)] * len(r) for k, r in enumerate(responses)]
    shards = Batch(meta={"p": list(range(7))}).split(3)
    assert [len(s) for s in shards] == [3, 2, 2]
    parts = []
    for rank, s in enumerate(shards):
        rows = [i * 2 + j for i in s["p"] for j in (0, 1)]
        parts.append(_rollout([prompts[r // 2] for r in rows], [responses[r] for r in rows],
                              [logps[r] for r in rows], rank=rank, prompt_index=[r // 2 for r in rows]))
    assert {p["attention_mask"].shape[1] - p["responses"].shape[1] for p in parts} == {5, 4, 6}  # widths differ
    joined = concat_rollouts(parts)
    one = pack_sequences([prompts[r // 2] for r in range(14)], responses, logps, 99)
    assert set(joined.tensors) == set(one)
    for k, v in one.items():
        assert torch.equal(joined[k], v), k
    assert joined["prompt_index"] == torch.arange(7).repeat_interleave(2).tolist()


def test_concat_rollouts_same_widths_is_plain_concat_and_needs_one_pad_id():
    a, b = _rollout([[1]], [[2]], [[-1.0]]), _rollout([[3]], [[4]], [[-2.0]], rank=1)
    assert concat_rollouts([a, b])["input_ids"].tolist() == [[1, 2], [3, 4]]
    c = _rollout([[1, 2]], [[2]], [[-1.0]], pad_id=0, rank=2)
    with pytest.raises(ValueError, match="pad_id"):
        concat_rollouts([a, c])
    no_pad = Batch(tensors=pack_sequences([[1, 2]], [[2]], None, 0))
    with pytest.raises(ValueError, match="pad_id"):
        concat_rollouts([a.select(["input_ids", "attention_mask", "position_ids", "responses", "response_mask",
                                   "response_length"]), no_pad])


# ---------------------------------------------------------------- sft_batch

class CharTok:
    """One token per character: ord(c). eos 1, pad 0."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return SimpleNamespace(input_ids=[ord(c) for c in text])


def _encoder(tok, max_prompt_tokens=64):
    return PromptEncoder(tokenizer=tok, prompt_key="prompt", answer_key="answer", chat_template=False,
                         system_prompt=None, max_prompt_tokens=max_prompt_tokens)


def test_prompt_encoder_keeps_the_end_when_truncating():
    enc = _encoder(CharTok(), max_prompt_tokens=3)
    assert enc.encode({"prompt": "abcde"}) == [ord("c"), ord("d"), ord("e")]


def test_sft_batch_appends_eos():
    enc = _encoder(CharTok())
    rows = [{"prompt": "ab", "answer": "7", "completion": " 7"},
            {"prompt": "c", "answer": "42"}]  # no completion: " " + answer
    b = sft_batch(enc, rows)
    sp, eos, pad = ord(" "), 1, 0
    a, bb, c, d7, d4, d2 = ord("a"), ord("b"), ord("c"), ord("7"), ord("4"), ord("2")
    # P = 2, R = 4 (" 42" + EOS)
    assert b["input_ids"].tolist() == [[a, bb, sp, d7, eos, pad],
                                       [pad, c, sp, d4, d2, eos]]
    assert b["responses"].tolist() == [[sp, d7, eos, pad], [sp, d4, d2, eos]]
    assert b["response_mask"].tolist() == [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]
    assert "rollout_logp" not in b


def test_sft_batch_pads_with_eos_when_no_pad_token():
    tok = CharTok()
    tok.pad_token_id = None
    b = sft_batch(_encoder(tok), [{"prompt": "a", "answer": "1"}, {"prompt": "bc", "answer": "22"}])
    # row 0: prompt left-padded with eos(1), response " 1" + eos then pad(=eos)
    assert b["input_ids"].tolist()[0] == [1, ord("a"), ord(" "), ord("1"), 1, 1]
    assert b["response_mask"].tolist()[0] == [1.0, 1.0, 1.0, 0.0]


def test_load_rows_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlengine.data import load_rows

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"question": ["1+1?", "2+2?"], "answer": ["2", "4"]}), path)
    rows = load_rows(str(path))
    assert [(r["question"], r["answer"]) for r in rows] == [("1+1?", "2"), ("2+2?", "4")]
    assert rows[1]["_source"] == f"{path}:row 1"


def test_preference_rows_skip_mode_counts_and_error_mode_names_the_line(tmp_path):
    import json

    from rlengine.config import DataConfig
    from rlengine.data import DataError, check_preference_rows, load_rows

    path = tmp_path / "pref.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"},
            {"prompt": "p", "chosen": "x", "rejected": "x"}, {"prompt": "p", "chosen": "c", "rejected": "d"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_rows(str(path))
    good, skipped = check_preference_rows(loaded, DataConfig(bad_rows="skip"), str(path))
    assert [r["chosen"] for r in good] == ["a", "c"] and skipped == 2
    with pytest.raises(DataError, match=rf"{path}:2: missing or non-text field 'rejected'"):
        check_preference_rows(loaded, DataConfig(), str(path))


def test_trim_padding_by_hand():

    # prompts [5, 6] and [7]; responses [8] and [9, 10]: P = 2, R = 2 before padding to R = 4
    t = pack_sequences([[5, 6], [7]], [[8], [9, 10]], None, pad_id=0)
    t["responses"] = torch.cat([t["responses"], torch.zeros(2, 2, dtype=torch.long)], 1)  # as if a
    t["response_mask"] = torch.cat([t["response_mask"], torch.zeros(2, 2)], 1)  # longer row sat elsewhere
    for k in ("input_ids", "attention_mask", "position_ids"):
        t[k] = torch.cat([t[k], torch.zeros(2, 2, dtype=t[k].dtype)], 1)
    t["advantages"] = torch.tensor([[1.0, 0, 0, 0], [2.0, 2.0, 0, 0]])
    got = trim_padding(t)
    assert got["input_ids"].tolist() == [[5, 6, 8, 0], [0, 7, 9, 10]]
    assert got["attention_mask"].tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert got["position_ids"].tolist() == [[0, 1, 2, 2], [0, 0, 1, 2]]
    assert got["responses"].tolist() == [[8, 0], [9, 10]]
    assert got["advantages"].tolist() == [[1.0, 0.0], [2.0, 2.0]]
    assert torch.equal(got["response_length"], t["response_length"])  # [B] passes through
    # only the second row: its prompt needs one column, its response two
    one = trim_padding({k: v[1:] for k, v in t.items()})
    assert one["input_ids"].tolist() == [[7, 9, 10]] and one["responses"].tolist() == [[9, 10]]
    # a lone short row keeps the last prompt column (its logits predict the first response token)
    short = trim_padding({k: v[:1] for k, v in t.items()})
    assert short["input_ids"].tolist() == [[5, 6, 8]] and short["response_mask"].tolist() == [[1.0]]


def test_length_bucketed_micro_batches_give_the_same_log_probs():
    """Sorted, trimmed micro-batches score every response token exactly as the padded batch does."""
    from rlengine import tiny
    from rlengine.modeling import load_causal_lm, response_logprobs
    from rlengine.protocol import Batch

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(12)]
    responses = [torch.randint(3, 200, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(12)]
    t = pack_sequences(prompts, responses, None, pad_id=0)
    t["row"] = torch.arange(12)
    batch = Batch(tensors=t)
    model = load_causal_lm(str(tiny.build_base()), "float32", "sdpa")
    with torch.no_grad():
        full_BR = response_logprobs(model, batch)
        micros = length_bucketed(batch, 4)
        assert [len(m) for m in micros] == [4, 4, 4]
        lengths = [m["attention_mask"].sum(-1) for m in micros]
        assert all(a.max() <= b.min() for a, b in zip(lengths, lengths[1:]))  # sorted by length
        assert micros[0]["input_ids"].shape[1] < t["input_ids"].shape[1]  # the short ones were cut
        # no stride or storage-offset guard for a compiled trainer to fail on
        assert all(v.is_contiguous() and v.storage_offset() == 0 for m in micros for v in m.tensors.values())
        for m in micros:
            part_BR = response_logprobs(model, m)
            R = part_BR.shape[1]
            mask = m["response_mask"].bool()
            assert torch.allclose(part_BR[mask], full_BR[m["row"]][:, :R][mask], atol=1e-5)
            assert t["response_mask"][m["row"]][:, R:].sum() == 0  # nothing cut that was a token


def test_prompt_seeds_leave_room_for_vllm_child_seeds():
    # vLLM seeds sample j of a request seeded s with s + j: no two (prompt, sample) pairs of a step,
    # nor of neighbouring steps, may share a random stream (base + i seeds shared all but one).
    n = 16
    streams = [prompt_seed(1, step, i) + j for step in range(3) for i in range(256) for j in range(n)]
    assert len(set(streams)) == len(streams)
    assert all(0 <= s < 2**31 for s in streams)
    assert prompt_seed(1, 5, 3) == prompt_seed(1, 5, 3) != prompt_seed(2, 5, 3)


# ---------------------------------------------------------------- datasets with configs (data.config_name)

@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return datasets


def _qa_rows(tag, n):
    return [{"question": f"{tag} q{i}", "answer": str(i)} for i in range(n)]


def test_config_name_picks_a_save_to_disk_subdirectory(tmp_path, offline_hf):
    root = tmp_path / "ds"
    for name, n in (("main", 3), ("socratic", 2)):
        splits = {"train": _qa_rows(name, n), "test": _qa_rows(name + "-t", 1)}
        offline_hf.DatasetDict({k: offline_hf.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
            str(root / name))
    rows = load_rows(str(root), "train", "socratic")
    assert [r["question"] for r in rows] == ["socratic q0", "socratic q1"]
    assert rows[1]["_source"] == f"{root / 'socratic'}[train]:row 1"
    assert [r["question"] for r in load_rows(str(root), "test", "main")] == ["main-t q0"]
    with pytest.raises(DataError, match=r"no config 'gsm'.*\['main', 'socratic'\]"):
        load_rows(str(root), "train", "gsm")
    with pytest.raises(DataError, match=r"holds configs \['main', 'socratic'\]: set data.config_name"):
        load_rows(str(root), "train")
    with pytest.raises(DataError, match=r"no split 'validation'.*\['train', 'test'\]"):
        load_rows(str(root), "validation", "main")


def test_config_name_on_a_hub_style_dataset_directory(tmp_path, offline_hf):
    """Data files per config declared in README.md's YAML, as on the hub: load_dataset(path, name)."""
    repo = tmp_path / "repo"
    for name, n in (("main", 2), ("socratic", 3)):
        (repo / name).mkdir(parents=True)
        (repo / name / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _qa_rows(name, n)))
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: main\n  data_files:\n  - split: train\n    path: main/train.jsonl\n"
        "- config_name: socratic\n  data_files:\n  - split: train\n    path: socratic/train.jsonl\n---\n# toy\n")
    rows = load_rows(str(repo), "train", "socratic")
    assert [r["question"] for r in rows] == ["socratic q0", "socratic q1", "socratic q2"]
    assert rows[0]["_source"] == f"{repo}:socratic[train]:row 0"
    assert [r["answer"] for r in load_rows(str(repo), "train", "main")] == ["0", "1"]
    with pytest.raises(DataError, match=r"no config 'gsm'.*\['main', 'socratic'\]"):
        load_rows(str(repo), "train", "gsm")
    with pytest.raises(DataError, match=r"\['main', 'socratic'\]"):
        load_rows(str(repo), "train")  # two configs, no default: the choice is the user's


def test_hub_name_passes_the_config_name_to_load_dataset(offline_hf, monkeypatch):
    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        return _qa_rows("hub", 2)

    monkeypatch.setattr(offline_hf, "get_dataset_config_names", lambda path: ["main", "socratic"])
    monkeypatch.setattr(offline_hf, "load_dataset", fake_load)
    rows = load_rows("openai/gsm8k", "test", "main")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert rows[1]["_source"] == "openai/gsm8k:main[test]:row 1"
    with pytest.raises(DataError, match=r"openai/gsm8k: no config 'mian' \(data.config_name\); "
                                        r"configs: \['main', 'socratic'\]"):
        load_rows("openai/gsm8k", "test", "mian")
    assert len(calls) == 1  # the wrong name is caught before anything loads


def test_a_bad_config_name_exits_2_before_ray(tmp_path, offline_hf, capsys):
    from rlengine.main import main

    root = tmp_path / "ds"
    for name in ("main", "socratic"):
        offline_hf.Dataset.from_list(_qa_rows(name, 2)).save_to_disk(str(root / name))
    assert main(["recipe=grpo_tiny", "model.path=tiny:base", f"data.train_path={root}", f"data.test_path={root}",
                 "data.config_name=gsm", "data.prompt_key=question", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "no config 'gsm' (data.config_name)" in err and "['main', 'socratic']" in err
