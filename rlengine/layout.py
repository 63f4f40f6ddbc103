"""Sequence layout: the one home of padding, trimming, length buckets and re-encoding.

Every role reads one layout (see modeling.response_logprobs): input_ids_BL = [left-padded prompt
(P) | right-padded response (R)], with attention_mask and position_ids over L = P + R, and
response-width tensors (responses, response_mask, per-token log-probs, advantages) over R.
`response_mask` is the loss mask: 1 on the tokens a loss covers (a multi-turn conversation's
assistant turns), 0 on padding and on the user turns between them.
"""
from __future__ import annotations

from collections.abc import Callable

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
    # Without `responses` (encode_texts: left-padded text only) there is no response part: R = 0.
    L, R = attn.shape[1], t["responses"].shape[1] if "responses" in t else 0
    P = L - R
    used = attn.bool().any(0)  # [L]
    first = min(int(used[:P].nonzero()[0]) if used[:P].any() else P - 1, P - 1)
    tail = used[P:].nonzero()
    r_keep = (int(tail[-1]) + 1 if len(tail) else 1) if R else 0
    out = {}
    for k, v in t.items():
        if v.dim() >= 2 and v.shape[1] == L:
            out[k] = v[:, first:P + r_keep]
        elif R and v.dim() >= 2 and v.shape[1] == R:
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


def row_widths(t: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """(prompt_N, response_N): the columns of the prompt part and of the response part that each
    row needs, i.e. what trim_padding keeps of a micro-batch is max(1, max prompt_N) prompt columns
    and max(1, max response_N) response columns (one of each at least: its own rule).  Without
    `responses` (encode_texts' left-padded text) response_N is all 0 and no response part is kept."""
    attn = t["attention_mask"].bool()
    L, R = attn.shape[1], t["responses"].shape[1] if "responses" in t else 0
    P = L - R
    cols = torch.arange(L, device=attn.device)
    first_N = torch.where(attn[:, :P], cols[:P], P).amin(-1)
    response_N = (torch.where(attn[:, P:], cols[:R] + 1, 0).amax(-1) if R else torch.zeros_like(first_N))
    return (P - first_N).tolist(), response_N.tolist()


class _Widths:
    """Trimmed widths of row groups, from row_widths."""

    def __init__(self, t: dict[str, torch.Tensor]):
        self.prompt_N, self.response_N = row_widths(t)
        self.has_response = "responses" in t

    def of(self, prompt: int, response: int) -> int:
        return max(1, prompt) + (max(1, response) if self.has_response else 0)

    def tokens(self, rows: list[int]) -> int:
        """rows x the group's trimmed width: what one forward over `rows` processes."""
        if not rows or rows[0] < 0:
            return 0
        return len(rows) * self.of(max(self.prompt_N[i] for i in rows), max(self.response_N[i] for i in rows))


def _units(n: int, pairs: bool) -> list[list[int]]:
    if pairs and n % 2:
        raise ValueError(f"preference pairs are rows 2i, 2i+1: {n} rows is odd")
    return [[i, i + 1] for i in range(0, n, 2)] if pairs else [[i] for i in range(n)]


def micro_batch_rows(t: dict[str, torch.Tensor], size: int, max_tokens: int | None = None,
                     pairs: bool = False) -> list[list[int]]:
    """The row indices of each micro-batch, shortest rows first.

    Rows are sorted by length (stable: ties keep their order).  max_tokens None: `size` rows per
    micro-batch.  Otherwise greedy packing: each micro-batch takes the next rows while rows x its
    trimmed width (row_widths) stays <= max_tokens; a row wider than the budget goes alone.
    `pairs`: rows 2i, 2i+1 (chosen, rejected) are one unit, sorted by the longer and never split.
    """
    units = _units(int(t["attention_mask"].shape[0]), pairs)
    length_N = t["attention_mask"].sum(-1).tolist()
    units.sort(key=lambda u: max(length_N[i] for i in u))  # list.sort is stable
    if max_tokens is None:
        per = max(1, size // len(units[0])) if units else 1
        return [[i for u in units[s:s + per] for i in u] for s in range(0, len(units), per)]
    w = _Widths(t)
    groups: list[list[int]] = []
    rows: list[int] = []
    prompt = response = 0
    for u in units:
        p = max(prompt, *(w.prompt_N[i] for i in u))
        r = max(response, *(w.response_N[i] for i in u))
        if rows and (len(rows) + len(u)) * w.of(p, r) > max_tokens:
            groups.append(rows)
            rows, p, r = [], max(w.prompt_N[i] for i in u), max(w.response_N[i] for i in u)
        rows, prompt, response = rows + u, p, r
    if rows:
        groups.append(rows)
    return groups


def split_to_count(groups: list[list[int]], t: dict[str, torch.Tensor], count: int,
                   pairs: bool = False) -> list[list[int]]:
    """`groups` split until there are `count` of them: the one with the most tokens (rows x
    trimmed width; the first of equals) is halved, its shorter rows first (they take the larger
    half of an odd count), pairs kept whole.  When every group is one unit and more are needed,
    padding groups [-1] ([-1, -1] for pairs) are appended: micro_batches fills them with an
    empty-weight copy of a row."""
    out = [list(g) for g in groups]
    if len(out) > count:
        raise ValueError(f"{len(out)} micro-batches cannot become {count}")
    w, unit = _Widths(t), 2 if pairs else 1
    while len(out) < count:
        splittable = [j for j, g in enumerate(out) if len(g) > unit]
        if not splittable:
            out += [[-1] * unit for _ in range(count - len(out))]
            break
        j = max(splittable, key=lambda k: (w.tokens(out[k]), -k))
        g = out[j]
        half = (len(g) // unit + 1) // 2 * unit
        out[j:j + 1] = [g[:half], g[half:]]
    return out


class MicroBatches:
    """A batch's micro-batches (trimmed, on the device) and where their rows came from.

    `rows[j]` holds the batch row of each row of micros[j]; -1 marks a padding row (a copy of
    row 0 with response_mask 0, info["padding"] True), which exists only so that every rank runs
    the same number of forwards: its outputs are dropped and a training loop gives it no weight.
    """

    def __init__(self, micros: list[Batch], rows: list[list[int]], n_rows: int, width_R: int):
        self.micros, self.rows, self.n_rows, self.width_R = micros, rows, n_rows, width_R

    def __len__(self) -> int:
        return len(self.micros)

    def __iter__(self):
        return iter(self.micros)

    def __getitem__(self, j: int) -> Batch:
        return self.micros[j]

    def gather(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """Per-micro-batch outputs ([b_j] or [b_j, r_j] on any device) back in the batch's row
        order, on the CPU: [N] or [N, R], zero beyond each micro-batch's own width r_j."""
        first = outs[0]
        shape = (self.n_rows,) if first.dim() == 1 else (self.n_rows, self.width_R, *first.shape[2:])
        out = first.new_zeros(shape, device="cpu")
        for rows, o in zip(self.rows, outs):
            idx = torch.tensor(rows)
            keep = idx >= 0
            o = o.detach().cpu()[keep]
            if o.dim() == 1:
                out[idx[keep]] = o
            else:
                out[idx[keep], :o.shape[1]] = o
        return out


def micro_batches(batch: Batch, size: int, max_tokens: int | None = None, device: torch.device | str = "cpu",
                  compiled: bool = False, pairs: bool = False,
                  agree: Callable[[int], int] | None = None) -> MicroBatches:
    """`batch` in micro-batches (micro_batch_rows), each cut to its own widths by trim_padding.

    `agree(n)` (a max over ranks) returns the count every rank must run: under ZeRO-3 each forward
    gathers parameters collectively, and the accumulation boundary must be the last micro-batch on
    every rank; the largest micro-batches are split to reach it (split_to_count).  Losses
    normalised by the global minibatch (TrainerWorker.normaliser) add up to the same update
    whatever the grouping.

    For a `compiled` model: each micro-batch's tensors are fresh contiguous copies (dynamo guards
    on a view's row stride and on its storage offset, 0 for the first chunk only), and when the
    widths differ they are marked dynamic from the first micro-batch on (left to itself dynamo
    compiles the first width statically and recompiles on the second).  Each failed guard costs
    a recompile of the model's forward and backward, ~1 min at 30M params on 2 cores.  Fixed-length
    work (one width) keeps its static graph."""
    groups = micro_batch_rows(batch.tensors, size, max_tokens, pairs)
    if agree is not None:
        groups = split_to_count(groups, batch.tensors, agree(len(groups)), pairs)
    micros = []
    for rows in groups:
        padding = rows[0] < 0
        c = batch.index([0, 1][:len(rows)] if padding else rows)
        if padding:
            c = c.with_info(padding=True)
            if "response_mask" in c:
                c = c.update(response_mask=torch.zeros_like(c["response_mask"]))
        micros.append(Batch(tensors={k: v.to(device, memory_format=torch.contiguous_format, copy=True)
                                     for k, v in trim_padding(c.tensors).items()}, meta=c.meta, info=c.info))
    if compiled and len({m["input_ids"].shape[1] for m in micros}) > 1:
        for m in micros:
            for k in ("input_ids", "attention_mask", "position_ids"):
                if k in m:
                    torch._dynamo.maybe_mark_dynamic(m[k], 1)
    width_R = batch["responses"].shape[1] if "responses" in batch else 0
    return MicroBatches(micros, groups, len(batch), width_R)


def length_bucketed(mb: Batch, size: int, device: torch.device | str = "cpu", compiled: bool = False) -> list[Batch]:
    """The minibatch's rows sorted by length, in micro-batches of `size` on `device`, each cut to
    its own longest row (micro_batches without a token budget)."""
    return micro_batches(mb, size, None, device, compiled).micros


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
