"""Checkpoints: RUN_DIR/checkpoints/step_000002/ (one per save) and a `latest` pointer.

Each checkpoint directory is written under a temporary name and renamed when complete, and
`latest` is updated last, so a reader never sees a half-written checkpoint as the newest.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def tmp_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f".tmp_step_{step:06d}"


def begin(run_dir: Path, step: int) -> Path:
    tmp = tmp_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())


def commit(run_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write the driver state, fsync, rename into place, move `latest`, prune old ones."""
    tmp = tmp_dir(run_dir, step)
    (tmp / "driver_state.json").write_text(json.dumps(state, indent=1, default=str))
    _fsync_tree(tmp)
    final = step_dir(run_dir, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest = run_dir / "checkpoints" / "latest"
    latest_tmp = latest.with_name("latest.tmp")
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, latest)
    if keep_last > 0:
        done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir())
        for old in done[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    ptr = run_dir / "checkpoints" / "latest"
    if not ptr.exists():
        return None
    path = run_dir / "checkpoints" / ptr.read_text().strip()
    return path if (path / "driver_state.json").exists() else None
