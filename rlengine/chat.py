"""Instruction SFT rows: the formats users bring, normalised to messages, rendered with the
tokenizer's chat template, with the loss on assistant turns only.

Formats (one per row, sft.format=chat or auto): OpenAI `messages` (data.messages_key), ShareGPT
`conversations` (from/value), alpaca {instruction, input, output}, {data.prompt_key,
data.response_key} and {prompt, completion}.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rlengine.data import DataError
from rlengine.layout import pack_sequences
from rlengine.protocol import Batch

ROLES = {"system": "system", "developer": "system", "human": "user", "user": "user", "gpt": "assistant",
         "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
         "model": "assistant"}


def _turns(raw, src: str, style: str) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{src}: {style} must be a non-empty list of turns")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, Mapping):
            raise DataError(f"{src}: turn {i} is a {type(t).__name__}, not an object")
        role, content = (t.get("from"), t.get("value")) if "from" in t else (t.get("role"), t.get("content"))
        if role not in ROLES:
            raise DataError(f"{src}: turn {i}: unknown role {role!r} (known: {sorted(ROLES)})")
        out.append({"role": ROLES[role], "content": content})
    return out


def to_messages(row: dict, d) -> list[dict]:
    """The row as [{"role", "content"}, ...]; a row that cannot be used is a DataError naming its
    file:line and the problem."""
    src = row.get("_source", "<row>")
    # Parquet / HF datasets that mix formats give every row every column, None where unused.
    row = {k: v for k, v in row.items() if v is not None}
    if d.messages_key in row:
        msgs = _turns(row[d.messages_key], src, f"'{d.messages_key}'")
    elif "conversations" in row:
        msgs = _turns(row["conversations"], src, "'conversations'")
    elif "instruction" in row and "output" in row:
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise DataError(f"{src}: alpaca 'input' is a {type(extra).__name__}, not text")
        user = row["instruction"]
        if isinstance(user, str) and extra and extra.strip():
            user = user + "\n\n" + extra
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    elif d.prompt_key in row and (d.response_key in row or "completion" in row):
        key = d.response_key if d.response_key in row else "completion"
        msgs = [{"role": "user", "content": row[d.prompt_key]}, {"role": "assistant", "content": row[key]}]
    else:
        have = sorted(k for k in row if k != "_source")
        raise DataError(f"{src}: unknown row format: keys {have}; expected '{d.messages_key}' (OpenAI), "
                        f"'conversations' (ShareGPT), instruction/input/output (alpaca), "
                        f"'{d.prompt_key}' + '{d.response_key}' or prompt + completion")
    for i, m in enumerate(msgs):
        if not isinstance(m["content"], str) or not m["content"].strip():
            what = "empty" if isinstance(m["content"], str) else f"non-text ({type(m['content']).__name__})"
            raise DataError(f"{src}: turn {i} ({m['role']}): {what} content")
    roles = [m["role"] for m in msgs]
    if "assistant" not in roles:
        raise DataError(f"{src}: no assistant turn (nothing to learn)")
    if roles[-1] != "assistant":
        raise DataError(f"{src}: the conversation ends with a {roles[-1]} turn; it must end with an assistant turn")
    first = next(r for r in roles if r != "system")
    if first != "user":
        raise DataError(f"{src}: the first non-system turn is {first}; an assistant turn needs a user turn before it")
    return msgs


def check_chat_rows(rows: list[dict], d, path: str) -> tuple[list[dict], int]:
    """Rows that to_messages accepts. With data.bad_rows=error a bad row stops the job naming its
    file and line; with skip it is dropped and counted."""
    good, skipped = [], 0
    for row in rows:
        try:
            to_messages(row, d)
        except DataError as e:
            if d.bad_rows != "skip":
                raise DataError(f"{e} (set data.bad_rows=skip to drop such rows)") from None
            skipped += 1
            continue
        good.append(row)
    if not good:
        raise DataError(f"{path}: no usable chat rows")
    return good, skipped


@dataclass
class Rendered:
    prompt_ids: list[int]  # tokens before the first assistant-content token
    response_ids: list[int]  # the rest (cut to max_length)
    loss_mask: list[int]  # over response_ids: 1 on assistant content and its end-of-turn token
    truncated: bool


def _ids(tokenizer, msgs: list[dict], gen: bool) -> list[int]:
    out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):  # transformers>=5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


def _special_ids(tokenizer) -> set[int]:
    ids = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return ids | set(tokenizer.all_special_ids)


def render(tokenizer, messages: list[dict], max_length: int, system_prompt: str | None = None) -> Rendered:
    """The conversation's tokens with the loss on every assistant turn and its end-of-turn token.

    Template-agnostic: assistant turn k's tokens are those between the rendering of messages[:k]
    with the generation prompt (which ends with the assistant header) and that of messages[:k+1].
    Whitespace the template puts after the turn's last special token ("<|im_end|>\\n") is left out:
    generation stops at that token, so the model never produces what follows it.
    """
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("render: the conversation has no assistant turn to learn from")
    full = _ids(tokenizer, messages, gen=False)
    special = _special_ids(tokenizer)
    mask = [0] * len(full)
    first = None
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head, turn = _ids(tokenizer, messages[:k], gen=True), _ids(tokenizer, messages[:k + 1], gen=False)
        for name, ids in ((f"messages[:{k}] + generation prompt", head), (f"messages[:{k + 1}]", turn)):
            if full[:len(ids)] != ids:
                raise ValueError(f"chat template is not prefix-stable: {name} does not render as a prefix of the "
                                 f"whole conversation, so assistant tokens cannot be located; use a template "
                                 f"that renders earlier turns the same whatever follows them")
        start, end = len(head), len(turn)
        last_special = max((i for i in range(start, end) if full[i] in special), default=None)
        if last_special is not None and not tokenizer.decode(full[last_special + 1:end]).strip():
            end = last_special + 1
        mask[start:end] = [1] * (end - start)
        first = start if first is None else first
    cut, mask = full[:max_length], mask[:max_length]
    return Rendered(cut[:first], cut[first:], mask[first:], truncated=len(full) > max_length)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def chat_batch(tokenizer, rows: list[dict], d, max_length: int, packing: bool = False) -> tuple[Batch, dict]:
    """SFT batch in the pack_sequences layout, loss mask = assistant tokens.

    packing=True lays rows end to end (first fit, in order) in sequences of at most max_length
    tokens: prompt = the pack's first token, response = the rest.  Positions restart at 0 for each
    row and `segment_ids` (1.. per row, 0 on padding) marks the batch as packed; forward_logits
    keeps each row's attention within the row.  meta["packed_rows"] lists each pack's rows.
    """
    rs = [render(tokenizer, to_messages(r, d), max_length, d.system_prompt) for r in rows]
    stats = {"sft/truncated_frac": sum(r.truncated for r in rs) / max(1, len(rs)),
             "sft/loss_tokens": float(sum(sum(r.loss_mask) for r in rs)), "sft/rows": len(rs)}
    pad = pad_id(tokenizer)
    if not packing:
        out = pack_sequences([r.prompt_ids for r in rs], [r.response_ids for r in rs], None, pad,
                             loss_masks=[r.loss_mask for r in rs])
        return Batch(out, info={"pad_id": pad}), stats
    order: list[list[int]] = []  # the rows (indices into `rows`) of each pack, in pack order
    used: list[int] = []
    for k, r in enumerate(rs):
        n = len(r.prompt_ids) + len(r.response_ids)
        i = next((i for i, u in enumerate(used) if u + n <= max_length), None)
        if i is None:
            order.append([k])
            used.append(n)
        else:
            order[i].append(k)
            used[i] += n
    packs = [[rs[k] for k in o] for o in order]
    ids = [[t for x in p for t in x.prompt_ids + x.response_ids] for p in packs]
    masks = [[v for x in p for v in [0] * len(x.prompt_ids) + x.loss_mask] for p in packs]
    out = pack_sequences([s[:1] for s in ids], [s[1:] for s in ids], None, pad, loss_masks=[m[1:] for m in masks])
    # Padding gets position 0: transformers starts a segment wherever positions do not step by 1
    # (sdpa, eager) or at position 0 (flash), so each pad is a one-token segment, never part of a row.
    pos_BL = torch.zeros_like(out["input_ids"])
    seg_BL = torch.zeros_like(out["input_ids"])
    for i, p in enumerate(packs):
        o = 0
        for j, x in enumerate(p, 1):
            n = len(x.prompt_ids) + len(x.response_ids)
            pos_BL[i, o:o + n] = torch.arange(n)
            seg_BL[i, o:o + n] = j
            o += n
    out["position_ids"], out["segment_ids"] = pos_BL, seg_BL
    stats["sft/sequences"] = len(packs)
    return Batch(out, meta={"packed_rows": order}, info={"pad_id": pad}), stats
