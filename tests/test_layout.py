"""Token-budget micro-batches (layout.micro_batches): hand-computed groupings, un-permuting, pairs."""
import pytest
import torch

from rlengine.layout import encode_texts, micro_batch_rows, micro_batches, row_widths, split_to_count
from rlengine.layout import pack_sequences
from rlengine.protocol import Batch


def _rows(prompt_lens: list[int], response_lens: list[int]) -> dict:
    """Distinct nonzero tokens (pad id 0), so a gathered `responses` equals the original exactly."""
    tok = iter(range(1, 10_000))
    prompts = [[next(tok) for _ in range(p)] for p in prompt_lens]
    responses = [[next(tok) for _ in range(r)] for r in response_lens]
    t = pack_sequences(prompts, responses, None, pad_id=0)
    t["row"] = torch.arange(len(prompts))
    return t


def test_row_widths_are_what_trim_padding_keeps():
    t = _rows([2, 4, 1], [5, 1, 3])
    assert row_widths(t) == ([2, 4, 1], [5, 1, 3])
    enc = {k: v for k, v in t.items() if k in ("input_ids", "attention_mask", "position_ids")}
    # no response part: from each row's first token to the last column (P = 4, L = 9)
    assert row_widths(enc) == ([7, 9, 6], [0, 0, 0])


def test_budget_packs_sorted_rows_greedily():
    # prompts of 2, responses 5 1 3 2 4: widths 7 3 5 4 6; sorted by length: rows 1 3 2 4 0
    t = _rows([2] * 5, [5, 1, 3, 2, 4])
    # budget 10: [1] 1x3, + 3 -> 2x4 = 8; + 2 -> 3x5 = 15 > 10; [2] 5, + 4 -> 2x6 = 12 > 10; [4]; [0]
    assert micro_batch_rows(t, 64, 10) == [[1, 3], [2], [4], [0]]
    # budget 12: [1, 3] (8); [2, 4] (2x6 = 12); + 0 -> 3x7 = 21 > 12: [0]
    assert micro_batch_rows(t, 64, 12) == [[1, 3], [2, 4], [0]]
    assert micro_batch_rows(t, 64, 1000) == [[1, 3, 2, 4, 0]]
    # no budget: micro_batch_size rows, shortest first (length_bucketed's grouping)
    assert micro_batch_rows(t, 2) == [[1, 3], [2, 4], [0]]


def test_rows_wider_than_the_budget_go_alone():
    t = _rows([2] * 5, [5, 1, 3, 2, 4])
    # budget 5: row 3 (width 4) cannot join row 1 (2x4 = 8); rows 4 (6) and 0 (7) exceed it alone
    assert micro_batch_rows(t, 64, 5) == [[1], [3], [2], [4], [0]]
    assert micro_batch_rows(t, 64, 1) == [[1], [3], [2], [4], [0]]


def test_width_is_the_longest_prompt_plus_the_longest_response():
    # a: prompt 4 + response 1, b: prompt 1 + response 4: each 5 wide, together 4 + 4 = 8 wide
    t = _rows([4, 1], [1, 4])
    assert micro_batch_rows(t, 64, 15) == [[0], [1]]  # 2 x 8 = 16 > 15
    assert micro_batch_rows(t, 64, 16) == [[0, 1]]
    mbs = micro_batches(Batch(tensors=t), 64, 16)
    assert mbs[0]["input_ids"].shape == (2, 8)


def test_micro_batches_keep_the_budget_and_gather_in_row_order():
    g = torch.Generator().manual_seed(0)
    plens = torch.randint(1, 6, (13,), generator=g).tolist()
    rlens = torch.randint(1, 20, (13,), generator=g).tolist()
    t = _rows(plens, rlens)
    batch = Batch(tensors=t)
    mbs = micro_batches(batch, 4, 40)
    assert sorted(i for rows in mbs.rows for i in rows) == list(range(13))
    for m, rows in zip(mbs, mbs.rows):
        assert m["row"].tolist() == rows
        B, W = m["input_ids"].shape
        assert B * W <= 40 or B == 1
        assert W == max(plens[i] for i in rows) + max(rlens[i] for i in rows)  # trimmed to its own width
    # per-micro-batch outputs at their own widths come back [N, R] in the original order, zero-padded
    assert torch.equal(mbs.gather([m["responses"] for m in mbs]), t["responses"])
    assert torch.equal(mbs.gather([m["response_mask"] for m in mbs]), t["response_mask"])
    assert torch.equal(mbs.gather([m["row"] for m in mbs]), t["row"])  # [B] outputs too


def test_pairs_stay_together():
    # pairs (0, 1), (2, 3), (4, 5); prompts 2; responses (6, 1), (2, 2), (1, 3): pair widths 8, 4, 5
    t = _rows([2] * 6, [6, 1, 2, 2, 1, 3])
    # budget 16: pair 1 (2x4 = 8); + pair 2 -> 4x5 = 20 > 16; pair 2 (10); + pair 0 -> 4x8; pair 0 (16)
    assert micro_batch_rows(t, 64, 16, pairs=True) == [[2, 3], [4, 5], [0, 1]]
    assert micro_batch_rows(t, 64, 20, pairs=True) == [[2, 3, 4, 5], [0, 1]]
    assert micro_batch_rows(t, 64, 3, pairs=True) == [[2, 3], [4, 5], [0, 1]]  # each pair over budget alone
    assert micro_batch_rows(t, 4, pairs=True) == [[2, 3, 4, 5], [0, 1]]  # 4 rows = 2 pairs per micro-batch
    with pytest.raises(ValueError, match="odd"):
        micro_batch_rows(_rows([2] * 3, [1, 2, 3]), 64, 16, pairs=True)


def test_split_to_a_target_count():
    t = _rows([2] * 8, [1, 2, 3, 4, 5, 6, 7, 8])  # already sorted: widths 3..10
    groups = micro_batch_rows(t, 4)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 4x6 = 24 and 4x10 = 40 tokens
    assert split_to_count(groups, t, 2) == groups
    assert split_to_count(groups, t, 3) == [[0, 1, 2, 3], [4, 5], [6, 7]]
    # then [0..3] (24) is larger than [6, 7] (20) and [4, 5] (14)
    assert split_to_count(groups, t, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # odd halves: the shorter rows take the larger half
    assert split_to_count([[0, 1, 2]], t, 2) == [[0, 1], [2]]
    # fewer rows than micro-batches: padding groups
    assert split_to_count(groups, t, 10) == [[i] for i in range(8)] + [[-1], [-1]]
    pairs = split_to_count([[0, 1, 2, 3]], t, 3, pairs=True)
    assert pairs == [[0, 1], [2, 3], [-1, -1]]
    with pytest.raises(ValueError):
        split_to_count(groups, t, 1)


def test_agreed_count_pads_with_empty_weight_rows():
    t = _rows([2, 3, 1], [4, 2, 5])
    mbs = micro_batches(Batch(tensors=t), 8, 100, agree=lambda n: max(n, 5))
    assert len(mbs) == 5 and mbs.rows[3:] == [[-1], [-1]]
    for m in mbs.micros[3:]:
        assert m.info["padding"] and m["response_mask"].sum() == 0 and len(m) == 1
    assert not any(m.info.get("padding") for m in mbs.micros[:3])
    assert torch.equal(mbs.gather([m["responses"] for m in mbs]), t["responses"])  # padding dropped
    pairs = micro_batches(Batch(tensors=_rows([2] * 4, [1, 2, 3, 4])), 8, None, pairs=True, agree=lambda n: 3)
    assert pairs.rows == [[0, 1], [2, 3], [-1, -1]] and len(pairs[2]) == 2


def test_encoded_text_without_responses():
    """The reward model's layout (encode_texts: left-padded text, no response part)."""
    class Tok:
        pad_token_id, eos_token_id = 0, 0

        def __call__(self, text, add_special_tokens=False):
            return type("E", (), {"input_ids": [ord(c) for c in text]})()

    enc = encode_texts(Tok(), ["ab", "a", "abcd"], ["c", "", "ef"], max_length=16)  # lengths 3, 1, 6
    mbs = micro_batches(Batch(tensors=enc), 8, 6)
    assert mbs.rows == [[1, 0], [2]]  # 2 x 3 = 6; + row 2 -> 3 x 6 > 6
    assert mbs[0]["input_ids"].tolist() == [[0, 0, 97], [97, 98, 99]]  # left columns trimmed only
    assert mbs[1]["input_ids"].shape == (1, 6)
    scores = mbs.gather([m["input_ids"][:, -1].float() for m in mbs])  # "the last token", per row
    assert scores.tolist() == [99.0, 97.0, 102.0]
