"""Which run directory and checkpoint a job continues from, whether it fits, and saving/restoring
the whole job state (trainer and critic engines, driver state, RNG, metrics history).

resume=auto with `run_dir` set continues that directory's newest complete checkpoint; without
`run_dir` it continues the newest *unfinished* run of the same recipe whose config is the same
(so re-running the command that was interrupted resumes it, and a different experiment does not).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlengine import checkpoint, faults, tiny
from rlengine.config import RootConfig, to_dict
from rlengine.errors import ConfigError
from rlengine.plan import Plan

log = logging.getLogger("rlengine")

# Config keys that do not change what a run computes: a rerun may differ in them.
_IGNORED = ("run_dir", "resume")
_DIMS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "intermediate_size")


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _IGNORED}


def choose_run_dir(cfg: RootConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir).resolve()
    parent = (Path("outputs") / cfg.recipe).resolve()
    if cfg.resume == "auto" and parent.is_dir():
        mine = _comparable(json.loads(json.dumps(to_dict(cfg), default=str)))
        found = []
        for run in parent.iterdir():
            if (run / "summary.json").exists() or not (run / "config.json").exists():
                continue
            try:
                theirs = _comparable(json.loads((run / "config.json").read_text()))
            except ValueError:
                continue
            ckpt, _ = checkpoint.newest_complete(run)
            if theirs == mine and ckpt is not None:
                found.append((ckpt.stat().st_mtime, run))
        if found:
            run = max(found)[1]
            log.info("resume=auto: %s is an unfinished run of the same config; continuing it", run)
            return run
    return parent / time.strftime("%Y%m%d-%H%M%S")


def find_checkpoint(cfg: RootConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (None: start fresh). Bad `resume=PATH` raises ConfigError."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        found, skipped = checkpoint.newest_complete(run_dir)
        for path, why in skipped:
            log.warning("skipping checkpoint %s: %s", path, why)
        return found
    try:
        return checkpoint.resolve(cfg.resume)
    except (FileNotFoundError, checkpoint.NotACheckpoint) as e:
        raise ConfigError("resume", str(e).removeprefix(f"resume={cfg.resume}: "), "command-line override") from None


def _model_dims(path: str | None) -> dict | None:
    """Architecture numbers of a model's config.json, when it can be read without downloading or
    building anything (a `tiny:` model that is not built yet is deterministic: nothing to compare)."""
    if path is None:
        return None
    if tiny.is_tiny(path):
        name = tiny.tiny_name(path)
        if name in tiny.TRAINED and not tiny.is_built(name):
            return None
        path = tiny.resolve_path(path)
    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        return None
    raw = json.loads(cfg_file.read_text())
    return {k: raw.get(k) for k in _DIMS}


SHAPE_DEFAULTS = {"model.lora.r": 0, "model.quantization": None}


def shape(cfg: RootConfig, plan: Plan) -> dict:
    """What a checkpoint's tensors depend on: resuming with any of it changed cannot work."""
    return {"algorithm.name": cfg.algorithm.name, "model.dtype": cfg.model.dtype,
            "trainer.world_size": cfg.trainer.world_size, "trainer.zero_stage": plan.zero_stage,
            "critic": plan.use_critic, "model.lora.r": cfg.model.lora.r, "model.quantization": cfg.model.quantization}


def check_compatible(cfg: RootConfig, plan: Plan, ckpt: Path) -> dict:
    """Read the checkpoint's driver state; raise ConfigError naming every difference that makes
    it unusable for this config. Returns the state."""
    state = checkpoint.read_state(ckpt)
    theirs, mine = state.get("shape", {}), shape(cfg, plan)
    # Checkpoints written before a key existed hold its default.
    theirs = {**SHAPE_DEFAULTS, **theirs}
    diff = [f"{k}: checkpoint {theirs.get(k)!r}, this run {mine[k]!r}" for k in mine if theirs.get(k) != mine[k]]
    ck_dims = _model_dims(str(ckpt / "trainer" / "model_config"))
    my_dims = _model_dims(cfg.model.path)
    if ck_dims and my_dims:
        diff += [f"model {k}: checkpoint {ck_dims[k]!r}, {cfg.model.path} {my_dims[k]!r}"
                 for k in _DIMS if ck_dims[k] != my_dims[k]]
    if diff:
        raise ConfigError("resume", f"checkpoint {ckpt} does not fit this run: " + "; ".join(diff)
                          + " (resume=never starts fresh)", "command-line override" if cfg.resume != "auto" else None)
    if state.get("model") != cfg.model.path or state.get("recipe") != cfg.recipe:
        log.warning("resuming %s (recipe %s, model %s) as recipe %s, model %s: the shapes match", ckpt,
                    state.get("recipe"), state.get("model"), cfg.recipe, cfg.model.path)
    changed = sorted(k for k, v in _flat(_comparable(to_dict(cfg))).items()
                     if k in (old := _flat(_comparable(state.get("config", {})))) and old[k] != v)
    if changed:
        log.warning("resuming with config values changed since the checkpoint: %s", ", ".join(changed[:20]))
    return state


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(v, default=str))
    return out


def save(cfg: RootConfig, plan: Plan, ctl, roles, run_dir: Path, step: int, tok_path: str, hf: bool,
         summary: dict) -> Path:
    """One checkpoint of the whole job, written atomically (see checkpoint.py)."""
    from transformers import AutoTokenizer

    tmp = checkpoint.begin(run_dir, step)
    tag = f"step_{step:06d}"
    # A stage that does not train has no trainer: its checkpoint is the driver state alone.
    trainer = roles.trainer.actors if roles.trainer is not None else []
    refs = [a.save_checkpoint.remote(str(tmp / "trainer"), tag) for a in trainer]
    if roles.critic is not None:
        refs += [a.save_checkpoint.remote(str(tmp / "critic"), tag) for a in roles.critic.actors]
    from rlengine.workers.group import get_all

    get_all(refs)
    if trainer:
        AutoTokenizer.from_pretrained(tok_path).save_pretrained(tmp / "trainer" / "model_config")
    faults.maybe_kill("checkpoint_write", step)
    if hf and trainer:
        roles.trainer.call_all("save_hf", str(tmp / "hf"), tok_path)
    torch.save(checkpoint.capture_rng(), tmp / "driver_rng.pt")
    if (run_dir / "metrics.jsonl").exists():
        shutil.copyfile(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
    state = {"step": step, "tag": tag, "recipe": cfg.recipe, "model": cfg.model.path, "seed": cfg.seed,
             "shape": shape(cfg, plan), "controller": ctl.state_dict(), "summary": summary,
             # vLLM samples with per-prompt seeds data.prompt_seed(seed, step, index):
             # the seed and the step counter restore the sampling stream.
             "sampling": {"seed": cfg.seed, "next_step": step + 1},
             "time": time.time(), "config": to_dict(cfg)}
    final = checkpoint.commit(run_dir, step, state, cfg.checkpoint.keep_last)
    log.info("checkpoint step %d: %s", step, final)
    faults.maybe_kill("after_checkpoint", step)
    return final


@dataclass(frozen=True)
class Decision:
    """Where a job runs and what it continues from, decided before Ray starts."""

    run_dir: Path
    checkpoint: Path | None  # None: a fresh start
    state: dict | None  # the checkpoint's driver state, checked against this config


def decide(cfg: RootConfig, plan: Plan) -> Decision:
    """The run directory and the checkpoint to resume (resume=auto|never|PATH), checked to fit
    this config; a checkpoint that does not fit raises ConfigError naming every difference."""
    run_dir = choose_run_dir(cfg)
    ckpt = find_checkpoint(cfg, run_dir)
    return Decision(run_dir, ckpt, check_compatible(cfg, plan, ckpt) if ckpt is not None else None)


def begin(decision: Decision, ctl, roles) -> tuple[int, dict]:
    """Restore the decided checkpoint into the roles and the driver (or set the run directory up
    for a fresh start); returns (the step to continue after, the summary carried over)."""
    if decision.checkpoint is None:
        fresh_start(decision.run_dir)
        return 0, {}
    restore_files(decision.checkpoint, decision.run_dir)
    step = restore(decision.checkpoint, decision.state, ctl, roles)
    return step, dict(decision.state.get("summary", {}))


def restore_files(ckpt: Path, run_dir: Path) -> None:
    """Before the tracker opens: the run's metrics history becomes the checkpoint's (steps logged
    after the checkpoint by the interrupted run are dropped, so the history has no duplicates)."""
    src = ckpt / "metrics.jsonl"
    if src.exists() and src.resolve() != (run_dir / "metrics.jsonl").resolve():
        tmp = run_dir / "metrics.jsonl.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, run_dir / "metrics.jsonl")


def restore(ckpt: Path, state: dict, ctl, roles) -> int:
    """Load every engine and the driver state from `ckpt`; returns the step it holds."""
    from rlengine.workers.group import get_all

    tag = state["tag"]
    trainer = roles.trainer.actors if roles.trainer is not None else []
    refs = [a.load_checkpoint.remote(str(ckpt / "trainer"), tag) for a in trainer]
    if roles.critic is not None:
        refs += [a.load_checkpoint.remote(str(ckpt / "critic"), tag) for a in roles.critic.actors]
    get_all(refs)
    ctl.load_state_dict(state["controller"])
    checkpoint.restore_rng(torch.load(ckpt / "driver_rng.pt", weights_only=False))
    return int(state["step"])


def fresh_start(run_dir: Path) -> None:
    """A fresh run in a directory that has history: keep the old history under another name."""
    old = run_dir / "metrics.jsonl"
    if old.exists() and old.stat().st_size:
        os.replace(old, run_dir / f"metrics.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
