"""Checkpoints: RUN_DIR/checkpoints/step_000002/ (one per save) and a `latest` pointer.

A checkpoint is written under `.tmp_step_NNNNNN`, every file is fsynced, a `manifest.json`
(every file with its size) is written last, the directory is renamed into place, and `latest`
is replaced after that.  So a directory named `step_*` with a manifest that matches its files
is complete, and a crash at any point leaves the previous checkpoint the newest complete one.

Contents (see resume.save): `trainer/` and `critic/` (DeepSpeed engine state per rank:
ZeRO-3 model/optimizer partitions, scheduler, per-rank RNG), `driver_state.json` (step, data
position, KL controller, fault counters, shape), `driver_rng.pt`, `metrics.jsonl` (history up to
this step), `model_config/` (HF config + tokenizer, for `python -m rlengine.export`), and `hf/`
when an HF export was requested.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

log = logging.getLogger("rlengine")
MANIFEST = "manifest.json"
STATE = "driver_state.json"
_STEP = re.compile(r"^step_(\d{6,})$")


def capture_rng() -> dict:
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def commit(run_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write the driver state and manifest, fsync everything, rename into place, move `latest`,
    prune old checkpoints (only complete `step_*` directories count towards keep_last)."""
    tmp = tmp_dir(run_dir, step)
    (tmp / STATE).write_text(json.dumps(state, indent=1, default=str))
    for root, dirs, files in os.walk(tmp):
        for name in files:
            _fsync_path(Path(root, name))
        _fsync_path(Path(root))
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": _files(tmp)}, indent=1))
    _fsync_path(tmp / MANIFEST)
    final = step_dir(run_dir, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ckpts = run_dir / "checkpoints"
    latest_tmp = ckpts / "latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    _fsync_path(latest_tmp)
    os.replace(latest_tmp, ckpts / "latest")
    _fsync_path(ckpts)
    if keep_last > 0:
        done = sorted(p for p in ckpts.glob("step_*") if p.is_dir() and problem(p) is None)
        for old in done[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint, or None when it is."""
    if not path.is_dir():
        return "not a directory"
    manifest = path / MANIFEST
    if not manifest.exists():
        return f"no {MANIFEST} (partial write, or not a checkpoint directory)"
    try:
        want = json.loads(manifest.read_text())["files"]
        json.loads((path / STATE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} or {STATE}: {e}"
    have = _files(path)
    missing = sorted(set(want) - set(have))
    if missing:
        return f"missing files {missing[:3]}"
    wrong = sorted(f for f in want if have[f] != want[f])
    if wrong:
        return f"files of the wrong size (truncated or modified): {wrong[:3]}"
    return None


def read_state(path: Path) -> dict:
    return json.loads((path / STATE).read_text())


def newest_complete(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint of a run and the (path, reason) of every one skipped.

    Leftover `.tmp_step_*` directories are interrupted writes: they are removed (with a warning)."""
    ckpts = run_dir / "checkpoints"
    skipped: list[tuple[Path, str]] = []
    if not ckpts.is_dir():
        return None, skipped
    for tmp in sorted(ckpts.glob(".tmp_step_*")):
        log.warning("removing %s: a checkpoint write that never finished", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    candidates = sorted((p for p in ckpts.iterdir() if _STEP.match(p.name)), key=lambda p: int(p.name[5:]),
                        reverse=True)
    for path in candidates:
        why = problem(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


def resolve(spec: str) -> Path:
    """`resume=PATH`: a checkpoint directory, or a run directory (its newest complete checkpoint)."""
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"resume={spec}: no such file or directory")
    if (path / "checkpoints").is_dir() and not (path / STATE).exists():
        found, skipped = newest_complete(path)
        for p, why in skipped:
            log.warning("skipping checkpoint %s: %s", p, why)
        if found is None:
            raise NotACheckpoint(f"resume={spec}: the run directory has no complete checkpoint"
                                 + (f" (skipped: {', '.join(f'{p.name}: {w}' for p, w in skipped)})" if skipped else ""))
        return found
    why = problem(path)
    if why is not None:
        raise NotACheckpoint(f"resume={spec} is not a complete rlengine checkpoint: {why}; expected "
                             f"RUN_DIR/checkpoints/step_NNNNNN or a run directory")
    return path


class NotACheckpoint(ValueError):
    pass
