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
