"""Sequence layout: the one home of padding, trimming, length buckets and re-encoding.

Every role reads one layout (see modeling.response_logprobs): input_ids_BL = [left-padded prompt
(P) | right-padded response (R)], with attention_mask and position_ids over L = P + R, and
response-width tensors (responses, response_mask, per-token log-probs, advantages) over R.
`response_mask` is the loss mask: 1 on the tokens a loss covers (a multi-turn conversation's
assistant turns), 0 on padding and on the user turns between them.
"""
from __future__ import annotations

import torch

from rlengine.protocol import Batch


def pack_sequences(prompts: list[list[int]], responses: list[list[int]], logps: list[list[float]] | None,
                   pad_id: int, loss_masks: list[list[int]] | None = None) -> dict:
    """[left-padded prompt (P) | right-padded response (R)] with masks and positions.

    `loss_masks[i]` (len(responses[i]) 0/1 values) marks the response tokens a loss covers; by
    default all of them.  response_length counts the response's tokens either way.
    """
    B = len(prompts)
    P = max(len(p) for p in prompts)
    R = max(1, max(len(r) for r in responses))
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    responses_BR = torch.full((B, R), pad_id, dtype=torch.long)
    resp_mask = torch.zeros((B, R), dtype=torch.float32)
    length_B = torch.tensor([float(len(r)) for r in responses])
    logp_BR = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, P - len(p):P] = torch.tensor(p)
        attn[i, P - len(p):P] = 1
        if r:
            input_ids[i, P:P + len(r)] = torch.tensor(r)
            attn[i, P:P + len(r)] = 1
            responses_BR[i, :len(r)] = torch.tensor(r)
            resp_mask[i, :len(r)] = 1 if loss_masks is None else torch.tensor(loss_masks[i], dtype=torch.float32)
            if logps is not None:
                logp_BR[i, :len(r)] = torch.tensor(logps[i], dtype=torch.float32)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    out = {"input_ids": input_ids, "attention_mask": attn, "position_ids": position_ids,
           "responses": responses_BR, "response_mask": resp_mask, "response_length": length_B}
    if logps is not None:
        out["rollout_logp"] = logp_BR
    return out


def trim_padding(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the columns that are padding in every row of this (micro-)batch out of the
    pack_sequences layout: leading prompt columns and trailing response columns.

    Tensors of width P+R (input_ids, attention_mask, position_ids) and of width R (responses,
    masks, per-token log-probs, advantages, ...) are cut alike; others pass unchanged.  Positions
    of real tokens do not move, so every row's logits are the same as in the padded batch.
    """
    attn = t["attention_mask"]
    L, R = attn.shape[1], t["responses"].shape[1]
    P = L - R
    used = attn.bool().any(0)  # [L]
    first = min(int(used[:P].nonzero()[0]) if used[:P].any() else P - 1, P - 1)
    tail = used[P:].nonzero()
    r_keep = int(tail[-1]) + 1 if len(tail) else 1
    out = {}
    for k, v in t.items():
        if v.dim() >= 2 and v.shape[1] == L:
            out[k] = v[:, first:P + r_keep]
        elif v.dim() >= 2 and v.shape[1] == R:
            out[k] = v[:, :r_keep]
        else:
            out[k] = v
    return out


def concat_rollouts(batches: list[Batch]) -> Batch:
    """Join rollout batches that pack_sequences packed to their own widths: re-pad each to the
    largest prompt width P and response width R, then concatenate rows in order.

    Prompt columns are added on the left (pad id, mask 0, position 0) and response columns on the
    right (pad id in token tensors, 0 elsewhere; positions repeat the row's last one), which is
    exactly what pack_sequences gives for the joined rows, so a batch joined from several engines
    equals the one a single engine would return. The pad id is the rollout's `info["pad_id"]`.
    """
    if not batches:
        raise ValueError("concat_rollouts of an empty list")
    widths = [(b["attention_mask"].shape[1] - b["responses"].shape[1], b["responses"].shape[1]) for b in batches]
    P, R = max(p for p, _ in widths), max(r for _, r in widths)
    if all(w == (P, R) for w in widths):
        return Batch.concat(batches)
    pads = {b.info.get("pad_id") for b in batches}
    if len(pads) != 1 or None in pads:
        raise ValueError(f"concat_rollouts: every batch needs the same info['pad_id'] to re-pad, got {pads}")
    pad_id = pads.pop()
    token_keys = ("input_ids", "responses")
    out = []
    for b, (p, r) in zip(batches, widths):
        left, right = P - p, R - r
        tensors = {}
        for k, v in b.tensors.items():
            if v.dim() >= 2 and v.shape[1] == p + r:
                lr = (left, right)
            elif v.dim() >= 2 and v.shape[1] == r:
                lr = (0, right)
            else:
                tensors[k] = v
                continue
            if k == "position_ids":
                # (attn.cumsum - 1).clamp(min=0): 0 before the prompt, the last position after the response.
                tensors[k] = torch.cat([v.new_zeros(v.shape[0], lr[0], *v.shape[2:]), v,
                                        v[:, -1:].expand(-1, lr[1], *v.shape[2:])], dim=1)
                continue
            fill = pad_id if k in token_keys else 0
            tensors[k] = torch.cat([v.new_full((v.shape[0], lr[0], *v.shape[2:]), fill), v,
                                    v.new_full((v.shape[0], lr[1], *v.shape[2:]), fill)], dim=1)
        out.append(Batch(tensors, b.meta, b.info))
    return Batch.concat(out)


def length_bucketed(mb: Batch, size: int, device: torch.device | str = "cpu", compiled: bool = False) -> list[Batch]:
    """The minibatch's rows sorted by length, in micro-batches of `size` on `device`, each cut to
    its own longest row: short responses stop paying for the long ones' padding.  The number of
    micro-batches (DeepSpeed's accumulation boundary) and the global loss normaliser are unchanged,
    so the update is the same sum of per-token terms.

    For a `compiled` model: each micro-batch's tensors are fresh contiguous copies (dynamo guards
    on a view's row stride and on its storage offset, 0 for the first chunk only), and when the
    widths differ they are marked dynamic from the first micro-batch on (left to itself dynamo
    compiles the first width statically and recompiles on the second).  Each failed guard costs
    a recompile of the model's forward and backward, ~1 min at 30M params on 2 cores.  Fixed-length
    work (one width) keeps its static graph."""
    order = torch.argsort(mb["attention_mask"].sum(-1), stable=True)
    micros = [Batch(tensors={k: v.to(device, memory_format=torch.contiguous_format, copy=True)
                             for k, v in trim_padding(c.tensors).items()}, meta=c.meta, info=c.info)
              for c in mb.index(order).chunk_by_size(size)]
    if compiled and len({m["input_ids"].shape[1] for m in micros}) > 1:
        for m in micros:
            for k in ("input_ids", "attention_mask", "position_ids"):
                if k in m:
                    torch._dynamo.maybe_mark_dynamic(m[k], 1)
    return micros


def encode_texts(tokenizer, prompts: list[str], responses: list[str], max_length: int) -> dict:
    """Left-padded [prompt + response] in the reward model's vocabulary (no EOS appended: the
    score is read at the last response token)."""
    ids = [tokenizer(p + r, add_special_tokens=False).input_ids[-max_length:] for p, r in zip(prompts, responses)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    L_ = max(map(len, ids))
    input_ids = torch.full((len(ids), L_), pad, dtype=torch.long)
    attn = torch.zeros((len(ids), L_), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, L_ - len(x):] = torch.tensor(x)
        attn[i, L_ - len(x):] = 1
    return {"input_ids": input_ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0)}
