"""Batch: the typed bundle that moves between roles (controller <-> Ray workers).

A Batch has N rows and three parts:
  tensors  dict[str, Tensor]  every tensor has leading dim N
  meta     dict[str, list]    per-row python objects (prompt strings, ground truths), len N
  info     dict               batch-level values, not per row (e.g. the global token
                              count used as the loss normaliser); copied to every split

Methods never mutate: they return a new Batch (sharing tensor storage where
they can, like torch views). Row-wise operations (index, split, concat,
repeat_interleave) apply to tensors and meta alike, so a prompt string always
stays on the row of its token ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

Index = slice | int | Sequence[int] | Tensor


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:  # e.g. numpy arrays: ambiguous truth value
        return False


class Batch:
    __slots__ = ("tensors", "meta", "info")

    def __init__(
        self,
        tensors: dict[str, Tensor] | None = None,
        meta: dict[str, Sequence[Any]] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.tensors: dict[str, Tensor] = dict(tensors or {})
        self.meta: dict[str, list[Any]] = {k: list(v) for k, v in (meta or {}).items()}
        self.info: dict[str, Any] = dict(info or {})
        self._validate()

    def _validate(self) -> None:
        first: tuple[str, int] | None = None
        for k, t in self.tensors.items():
            if not isinstance(t, Tensor):
                raise TypeError(f"Batch tensor {k!r} is a {type(t).__name__}, not a torch.Tensor")
            if t.dim() == 0:
                raise ValueError(f"Batch tensor {k!r} is 0-dim; per-row tensors need a leading dim")
            if first is None:
                first = (k, t.shape[0])
            elif t.shape[0] != first[1]:
                raise ValueError(
                    f"Batch tensor {k!r} has shape {tuple(t.shape)} (leading dim {t.shape[0]}) "
                    f"but {first[0]!r} has leading dim {first[1]}"
                )
        for k, v in self.meta.items():
            if k in self.tensors:
                raise ValueError(f"Batch key {k!r} is both a tensor and a meta field")
            if first is None:
                first = (k, len(v))
            elif len(v) != first[1]:
                raise ValueError(
                    f"Batch meta {k!r} has length {len(v)} but {first[0]!r} has leading dim {first[1]}"
                )

    # -- access -----------------------------------------------------------------

    def __len__(self) -> int:
        for t in self.tensors.values():
            return t.shape[0]
        for v in self.meta.values():
            return len(v)
        return 0

    def __getitem__(self, key: str) -> Tensor | list[Any]:
        if not isinstance(key, str):
            raise TypeError(f"Batch[...] takes a key name, got {type(key).__name__}; use .index() for rows")
        if key in self.tensors:
            return self.tensors[key]
        if key in self.meta:
            return self.meta[key]
        raise KeyError(f"{key!r} not in Batch; keys: {self.keys()}")

    def __contains__(self, key: object) -> bool:
        return key in self.tensors or key in self.meta

    def keys(self) -> list[str]:
        return [*self.tensors, *self.meta]

    def __repr__(self) -> str:
        ts = ", ".join(f"{k}: {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for k, t in self.tensors.items())
        return f"Batch(n={len(self)}, tensors={{{ts}}}, meta={list(self.meta)}, info={list(self.info)})"

    # -- building new batches -----------------------------------------------------

    def _rows(self, fn_t, fn_m) -> Batch:
        """New Batch with ``fn_t`` applied to each tensor and ``fn_m`` to each meta list."""
        return Batch(
            {k: fn_t(t) for k, t in self.tensors.items()},
            {k: fn_m(v) for k, v in self.meta.items()},
            self.info,
        )

    def update(self, **items: Tensor | Sequence[Any]) -> Batch:
        """Add or replace fields: Tensors go to ``tensors``, other sequences to ``meta``."""
        tensors, meta = dict(self.tensors), dict(self.meta)
        for k, v in items.items():
            tensors.pop(k, None)
            meta.pop(k, None)
            (tensors if isinstance(v, Tensor) else meta)[k] = v
        return Batch(tensors, meta, self.info)

    def with_info(self, **info: Any) -> Batch:
        """Add or replace batch-level ``info`` entries."""
        return Batch(self.tensors, self.meta, {**self.info, **info})

    def union(self, other: Batch) -> Batch:
        """Merge two Batches of the same rows. A key present in both must hold equal values."""
        if len(self) != len(other) and self.keys() and other.keys():
            raise ValueError(f"cannot union Batches of {len(self)} and {len(other)} rows")
        merged: list[dict[str, Any]] = []
        for mine, theirs, what in (
            (self.tensors, other.tensors, "tensor"),
            (self.meta, other.meta, "meta"),
            (self.info, other.info, "info"),
        ):
            out = dict(mine)
            for k, v in theirs.items():
                if k in out and not _same(out[k], v):
                    raise ValueError(f"union: {what} {k!r} differs between the two Batches")
                out[k] = v
            merged.append(out)
        return Batch(*merged)

    def select(self, keys: Iterable[str]) -> Batch:
        """Keep only ``keys`` (tensor or meta names); info is kept."""
        keys = list(keys)
        missing = [k for k in keys if k not in self]
        if missing:
            raise KeyError(f"select: {missing} not in Batch; keys: {self.keys()}")
        return Batch(
            {k: t for k, t in self.tensors.items() if k in keys},
            {k: v for k, v in self.meta.items() if k in keys},
            self.info,
        )

    def index(self, idx: Index) -> Batch:
        """Rows by slice, int (kept as a 1-row Batch), list of ints, or a long/bool tensor."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        if isinstance(idx, slice):
            return self._rows(lambda t: t[idx], lambda v: v[idx])
        if isinstance(idx, Tensor):
            idx_t = idx
        else:
            rows = list(idx)
            is_mask = bool(rows) and all(isinstance(i, bool) for i in rows)
            idx_t = torch.tensor(rows, dtype=torch.bool if is_mask else torch.long)
        if idx_t.dtype == torch.bool:
            if idx_t.shape != (len(self),):
                raise ValueError(f"bool index has shape {tuple(idx_t.shape)}, Batch has {len(self)} rows")
            idx_t = idx_t.nonzero().squeeze(-1)
        if idx_t.dim() != 1 or idx_t.is_floating_point():
            raise ValueError(f"index must be a 1-D integer index, got {idx_t.dtype} shape {tuple(idx_t.shape)}")
        rows = idx_t.tolist()
        return self._rows(lambda t: t[idx_t.to(t.device)], lambda v: [v[i] for i in rows])

    def split(self, n_chunks: int, allow_empty: bool = False) -> list[Batch]:
        """``n_chunks`` contiguous chunks of as-equal-as-possible size, larger ones first.

        E.g. 10 rows into 4 -> sizes [3, 3, 2, 2]. With n_chunks > len(self) this
        raises unless ``allow_empty``, in which case trailing chunks have 0 rows.
        """
        n = len(self)
        if n_chunks < 1:
            raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
        if n_chunks > n and not allow_empty:
            raise ValueError(f"cannot split {n} rows into {n_chunks} non-empty chunks")
        q, r = divmod(n, n_chunks)
        out, start = [], 0
        for i in range(n_chunks):
            size = q + (1 if i < r else 0)
            out.append(self.index(slice(start, start + size)))
            start += size
        return out

    def chunk_by_size(self, size: int) -> list[Batch]:
        """Contiguous chunks of ``size`` rows; the last may be smaller."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        return [self.index(slice(s, s + size)) for s in range(0, len(self), size)]

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """Stack rows of Batches with the same keys. ``info`` is merged; a key with
        different values in two inputs raises (silently keeping one would lose data)."""
        if not batches:
            raise ValueError("concat of an empty list")
        t_keys, m_keys = list(batches[0].tensors), list(batches[0].meta)
        for i, b in enumerate(batches):
            if sorted(b.tensors) != sorted(t_keys) or sorted(b.meta) != sorted(m_keys):
                raise ValueError(f"concat: batch {i} has keys {b.keys()}, batch 0 has {batches[0].keys()}")
        tensors = {}
        for k in t_keys:
            try:
                tensors[k] = torch.cat([b.tensors[k] for b in batches], dim=0)
            except RuntimeError as e:
                shapes = [tuple(b.tensors[k].shape) for b in batches]
                raise ValueError(f"concat: tensor {k!r} has incompatible shapes {shapes}") from e
        meta = {k: [x for b in batches for x in b.meta[k]] for k in m_keys}
        info: dict[str, Any] = {}
        for b in batches:
            for k, v in b.info.items():
                if k in info and not _same(info[k], v):
                    raise ValueError(f"concat: info {k!r} differs between batches")
                info[k] = v
        return Batch(tensors, meta, info)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._rows(lambda t: t.to(device, non_blocking=non_blocking), lambda v: v)

    def repeat_interleave(self, n: int) -> Batch:
        """Each row repeated ``n`` times in place: rows [a, b] -> [a, a, b, b] for n=2.

        Used to expand prompts to G samples each, so row i*n + j is sample j of prompt i.
        """
        if n < 1:
            raise ValueError(f"repeat count must be >= 1, got {n}")
        return self._rows(lambda t: t.repeat_interleave(n, dim=0), lambda v: [x for x in v for _ in range(n)])

    def __getstate__(self) -> tuple[dict, dict, dict]:
        # torch pickles a view with its whole storage, so a split of a big batch
        # would ship the full batch to every worker. Copy views that don't own
        # their storage compactly before they leave the process.
        def compact(t: Tensor) -> Tensor:
            return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()

        return {k: compact(t) for k, t in self.tensors.items()}, self.meta, self.info

    def __setstate__(self, state: tuple[dict, dict, dict]) -> None:
        self.tensors, self.meta, self.info = state
