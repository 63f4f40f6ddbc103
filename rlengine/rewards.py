"""Reward manager: resolves the recipe's reward functions and scores responses in a process pool.

A reward function is `fn(prompt, response, ground_truth, **extra) -> float | dict` (a dict carries
"score" plus diagnostics).  An exception or a timeout scores `reward.error_score`, is counted in
`reward/errors` / `reward/timeouts`, is logged once with its traceback, and never stops the run.
"""
from __future__ import annotations

import concurrent.futures as cf
import importlib
import importlib.util
import inspect
import logging
import multiprocessing as mp
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlengine.config import ConfigError, RewardConfig

log = logging.getLogger(__name__)
_REPO = Path(__file__).resolve().parent.parent


def resolve_fn(spec: str, key: str = "reward.fns") -> Callable:
    """`path/to/file.py:function` (relative to the cwd, then to the project) or `pkg.module.function`."""
    if ":" in spec:
        path, name = spec.rsplit(":", 1)
        candidates = [Path(path), _REPO / path]
        file = next((p for p in candidates if p.is_file()), None)
        if file is None:
            raise ConfigError(key, f"reward function file not found: {path!r} (looked in {os.getcwd()} and {_REPO})")
        mod_name = f"rlengine_reward_{abs(hash(str(file.resolve())))}"
        if mod_name not in sys.modules:
            s = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = module
            try:
                s.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]  # the next attempt must fail the same way, not find a half module
                raise
        module = sys.modules[mod_name]
    else:
        mod_path, _, name = spec.rpartition(".")
        try:
            module = importlib.import_module(mod_path)
        except ImportError as e:
            raise ConfigError(key, f"cannot import module {mod_path!r} for reward function {spec!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(key, f"{spec!r}: no function {name!r} in {getattr(module, '__file__', module)}")
    try:
        inspect.signature(fn).bind("prompt", "response", "ground_truth")
    except TypeError:
        raise ConfigError(key, f"{spec!r} must accept (prompt, response, ground_truth, **extra); "
                               f"its signature is {inspect.signature(fn)}") from None
    return fn


def _score_one(spec: str, kwargs: dict, prompt: str, response: str, ground_truth, extra: dict):
    """Runs in a pool process. Returns (score, error_traceback_or_None)."""
    try:
        out = resolve_fn(spec)(prompt, response, ground_truth, **extra, **kwargs)
        score = out["score"] if isinstance(out, dict) else out
        return float(score), None
    except Exception:
        return None, traceback.format_exc()


def _warm() -> None:
    import time

    time.sleep(0.05)  # keep this worker busy so the next submission starts another


@dataclass
class RewardResult:
    scores_N: torch.Tensor  # combined, weighted
    per_fn: list[torch.Tensor]  # one per reward.fns entry, in order
    errors: int
    timeouts: int


class RewardManager:
    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        for i, f in enumerate(cfg.fns):
            resolve_fn(f.fn, key=f"reward.fns[{i}].fn")  # fail at start-up, with the path named
        self._pool = None
        self._logged: set[str] = set()

    def _get_pool(self):
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.cfg.num_workers, mp_context=mp.get_context("spawn"))
            # Start every worker now, so process start-up never counts against a call's timeout.
            cf.wait([self._pool.submit(_warm) for _ in range(self.cfg.num_workers)])
        return self._pool

    def _reset_pool(self) -> None:
        """A hung call leaves its worker busy forever: kill the pool's processes and start over."""
        if self._pool is not None:
            for p in list(getattr(self._pool, "_processes", {}).values()):
                p.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def score(self, prompts: list[str], responses: list[str], ground_truths: list, extras: list[dict]) -> RewardResult:
        n = len(responses)
        total = torch.zeros(n)
        per_fn, errors, timeouts = [], 0, 0
        for f in self.cfg.fns:
            pool = self._get_pool()
            futs = [pool.submit(_score_one, f.fn, dict(f.kwargs), p, r, g, e)
                    for p, r, g, e in zip(prompts, responses, ground_truths, extras)]
            done, _ = cf.wait(futs, timeout=self.cfg.timeout_s * max(1, n / self.cfg.num_workers))
            scores = torch.full((n,), float(self.cfg.error_score))
            hung = 0
            for i, fut in enumerate(futs):
                if fut not in done:
                    hung += 1
                    continue
                value, err = fut.result()
                if err is not None:
                    errors += 1
                    if f.fn not in self._logged:
                        self._logged.add(f.fn)
                        log.warning("reward function %s raised (scored %s; logged once):\n%s",
                                    f.fn, self.cfg.error_score, err)
                else:
                    scores[i] = value
            if hung:
                timeouts += hung
                log.warning("reward function %s timed out on %d responses", f.fn, hung)
                self._reset_pool()
            per_fn.append(scores)
            total += f.weight * scores
        return RewardResult(total, per_fn, errors, timeouts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
