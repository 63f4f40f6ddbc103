"""Prompt datasets: jsonl / parquet files, local HF dataset dirs, hub dataset names, `tiny:` splits.

Rows are dicts with at least `data.prompt_key` and `data.answer_key`; every other field travels
with the row to the reward functions as `**extra`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch

from rlengine import tiny
from rlengine.protocol import Batch


class DataError(ValueError):
    pass


def load_rows(path: str, split: str = "train", config_name: str | None = None) -> list[dict]:
    """Rows of a jsonl / parquet file, a local HF dataset directory or a hub dataset's `split`.

    `config_name` (data.config_name) picks one of a dataset's configurations: on a hub name or a
    hub-style directory (data files per config in README.md's `configs:`, or a loading script) it is
    `load_dataset(path, name=config_name)`; in a directory of `save_to_disk` sub-directories it is the
    sub-directory's name. A single file or a single saved dataset has no configurations and ignores it.
    """
    path = tiny.resolve_path(path)
    if path.endswith(".jsonl") or path.endswith(".json"):
        rows = []
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                row["_source"] = f"{path}:{lineno}"
                rows.append(row)
        return rows
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        for i, row in enumerate(rows):
            row["_source"] = f"{path}:row {i}"
        return rows
    ds, where = _load_hf(path, split, config_name)
    return [dict(r, _source=f"{where}[{split}]:row {i}") for i, r in enumerate(ds)]


def _is_saved(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _load_hf(path: str, split: str, config_name: str | None):
    """(dataset split, name for row sources); a missing or unknown config or split is a DataError
    that lists the choices."""
    import datasets

    if os.path.isdir(path) and not _is_saved(path):
        saved = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                       and _is_saved(os.path.join(path, d)))
        if saved:  # one save_to_disk directory per config
            if config_name is None and len(saved) > 1:
                raise DataError(f"{path}: holds configs {saved}: set data.config_name to one of them")
            name = config_name or saved[0]
            if name not in saved:
                raise DataError(f"{path}: no config {name!r} (data.config_name); configs: {saved}")
            path = os.path.join(path, name)
    if os.path.isdir(path) and _is_saved(path):
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} (data.train_split / data.test_split); splits: {list(ds)}")
            ds = ds[split]
        return ds, path
    try:
        choices = datasets.get_dataset_config_names(path)
    except Exception:  # e.g. an unreachable hub: load_dataset below says what is wrong
        choices = None
    if config_name is not None and choices and config_name not in choices:
        raise DataError(f"{path}: no config {config_name!r} (data.config_name); configs: {choices}")
    try:
        ds = datasets.load_dataset(path, name=config_name, split=split)
    except (ValueError, OSError) as e:  # no such config / split / dataset, hub unreachable
        several = config_name is None and choices and len(choices) > 1
        hint = f" (set data.config_name to one of {choices})" if several else ""
        raise DataError(f"{path}: {str(e).splitlines()[0]}{hint}") from None
    return ds, f"{path}:{config_name}" if config_name else path


def check_rows(rows: list[dict], keys: tuple[str, ...], path: str) -> None:
    if not rows:
        raise DataError(f"{path}: no rows")
    for row in rows:
        for key in keys:
            if key not in row or row[key] is None:
                raise DataError(f"{row.get('_source', path)}: missing field '{key}' "
                                f"(set data.prompt_key / data.answer_key to the dataset's column names)")


@dataclass
class PromptEncoder:
    tokenizer: object
    prompt_key: str
    answer_key: str
    chat_template: bool
    system_prompt: str | None
    max_prompt_tokens: int

    def encode(self, row: dict) -> list[int]:
        text = row[self.prompt_key]
        if self.chat_template:
            msgs = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
            msgs.append({"role": "user", "content": text})
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) > self.max_prompt_tokens:
            # Keep the end: it holds the question and the generation prompt.
            ids = ids[-self.max_prompt_tokens:]
        return list(ids)

    def to_batch(self, rows: list[dict]) -> Batch:
        extra_keys = sorted({k for r in rows for k in r} - {self.prompt_key, self.answer_key, "_source"})
        meta = {
            "prompt": [r[self.prompt_key] for r in rows],
            "ground_truth": [r[self.answer_key] for r in rows],
            "prompt_ids_list": [self.encode(r) for r in rows],
            "extra": [{k: r.get(k) for k in extra_keys} for r in rows],
        }
        return Batch(tensors={"prompt_index": torch.arange(len(rows))}, meta=meta)


class PromptLoader:
    """Endless, seeded, epoch-shuffled batches of prompt rows; position is checkpointable."""

    def __init__(self, rows: list[dict], batch_size: int, seed: int, shuffle: bool = True):
        if len(rows) < batch_size:
            raise DataError(f"{len(rows)} training rows is fewer than data.prompts_per_step={batch_size}")
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.rows)))
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def next(self) -> list[dict]:
        if self.pos + self.batch_size > len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._make_order()
        idx = self._order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return [self.rows[i] for i in idx]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._make_order()


def prompt_seed(seed: int, step: int, index: int) -> int:
    """The sampling seed of prompt `index` at `step`: a hash, not `base + index`, because vLLM seeds
    sample j of a request with seed s as s + j, so consecutive per-prompt seeds would give prompt
    i+1's samples the random streams of prompt i's samples shifted by one (correlated exploration
    across the whole batch)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 2**16)  # room for + j below 2**31


def pack_sequences(prompts: list[list[int]], responses: list[list[int]], logps: list[list[float]] | None,
                   pad_id: int) -> dict:
    """[left-padded prompt (P) | right-padded response (R)] with masks and positions.

    The one layout every role reads (see modeling.response_logprobs).
    """
    B = len(prompts)
    P = max(len(p) for p in prompts)
    R = max(1, max(len(r) for r in responses))
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    responses_BR = torch.full((B, R), pad_id, dtype=torch.long)
    resp_mask = torch.zeros((B, R), dtype=torch.float32)
    logp_BR = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, P - len(p):P] = torch.tensor(p)
        attn[i, P - len(p):P] = 1
        if r:
            input_ids[i, P:P + len(r)] = torch.tensor(r)
            attn[i, P:P + len(r)] = 1
            responses_BR[i, :len(r)] = torch.tensor(r)
            resp_mask[i, :len(r)] = 1
            if logps is not None:
                logp_BR[i, :len(r)] = torch.tensor(logps[i], dtype=torch.float32)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    out = {"input_ids": input_ids, "attention_mask": attn, "position_ids": position_ids,
           "responses": responses_BR, "response_mask": resp_mask, "response_length": resp_mask.sum(-1)}
    if logps is not None:
        out["rollout_logp"] = logp_BR
    return out


def sft_batch(encoder: PromptEncoder, rows: list[dict], completion_key: str = "completion") -> Batch:
    """Prompt + target completion (+ EOS) in the rollout layout; the loss covers the completion."""
    tok = encoder.tokenizer
    prompts = [encoder.encode(r) for r in rows]
    comps = [tok(r.get(completion_key) or (" " + str(r[encoder.answer_key])), add_special_tokens=False).input_ids
             + [tok.eos_token_id] for r in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Batch(tensors=pack_sequences(prompts, comps, None, pad))


def check_preference_rows(rows: list[dict], d, path: str) -> tuple[list[dict], int]:
    """Rows need prompt, chosen and rejected, with chosen != rejected. With data.bad_rows=error a
    bad row stops the job naming its file and line; with skip it is dropped and counted."""
    good, skipped = [], 0
    for row in rows:
        src = row.get("_source", path)
        problem = None
        for key in (d.prompt_key, d.chosen_key, d.rejected_key):
            if not isinstance(row.get(key), str):
                problem = f"missing or non-text field '{key}'"
                break
        if problem is None and row[d.chosen_key] == row[d.rejected_key]:
            problem = "chosen == rejected (the pair carries no preference)"
        if problem is None:
            good.append(row)
        elif d.bad_rows == "skip":
            skipped += 1
        else:
            raise DataError(f"{src}: {problem} (set data.bad_rows=skip to drop such rows)")
    if not good:
        raise DataError(f"{path}: no usable preference rows")
    return good, skipped


def pair_batch(tokenizer, rows: list[dict], d, max_length: int = 512) -> Batch:
    """Preference pairs as 2N sequences, chosen and rejected interleaved (rows 2i, 2i+1), so any
    even split keeps pairs together."""
    from rlengine.workers.reward_model import encode_texts

    prompts = [r[d.prompt_key] for r in rows for _ in (0, 1)]
    responses = [r[key] for r in rows for key in (d.chosen_key, d.rejected_key)]
    return Batch(tensors=encode_texts(tokenizer, prompts, responses, max_length))


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
