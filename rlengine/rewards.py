"""Reward manager: resolves the recipe's reward functions and scores responses in a process pool.

A reward function is `fn(prompt, response, ground_truth, **extra) -> float | dict` (a dict carries
"score" plus diagnostics); it may be `async def`.  With `batched: true` it is instead
`fn(prompts, responses, ground_truths, extras, **kwargs) -> list[float | dict]`, one call per batch.  An exception or a timeout scores `reward.error_score`, is counted in
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

from rlengine.config import RewardConfig
from rlengine.errors import ConfigError

log = logging.getLogger(__name__)
_REPO = Path(__file__).resolve().parent.parent


def resolve_fn(spec: str, key: str = "reward.fns", batched: bool = False) -> Callable:
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
    want = ("prompts", "responses", "ground_truths", "extras=...") if batched else \
        ("prompt", "response", "ground_truth", "**extra")
    try:
        if batched:
            inspect.signature(fn).bind([], [], [], extras=[])
        else:
            inspect.signature(fn).bind("prompt", "response", "ground_truth")
    except TypeError:
        raise ConfigError(key, f"{spec!r} must accept ({', '.join(want)}); "
                               f"its signature is {inspect.signature(fn)}") from None
    return fn


class _CallTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _CallTimeout()


def _call(fn: Callable, args: tuple, kwargs: dict, timeout_s: float):
    """One reward call under a per-call alarm (pool workers run tasks on their main thread)."""
    import asyncio
    import signal

    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        out = fn(*args, **kwargs)
        if inspect.isawaitable(out):
            out = asyncio.run(_awaitable(out))
        return out
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


async def _awaitable(x):
    return await x


def _as_score(out) -> float:
    score = out["score"] if isinstance(out, dict) else out
    return float(score)


def _score_chunk(spec: str, kwargs: dict, batched: bool, timeout_s: float, rows: list[tuple]) -> list[tuple]:
    """Runs in a pool process. rows: (prompt, response, ground_truth, extra).
    Returns one (score | None, status, traceback | None) per row; status is ok / error / timeout."""
    try:
        fn = resolve_fn(spec, batched=batched)
    except Exception:
        return [(None, "error", traceback.format_exc())] * len(rows)
    if batched:
        try:
            cols = list(zip(*rows))
            outs = _call(fn, (list(cols[0]), list(cols[1]), list(cols[2])), {"extras": list(cols[3]), **kwargs},
                         timeout_s)
            if len(outs) != len(rows):
                raise ValueError(f"batched reward function returned {len(outs)} scores for {len(rows)} rows")
            return [(_as_score(o), "ok", None) for o in outs]
        except _CallTimeout:
            return [(None, "timeout", None)] * len(rows)
        except Exception:
            return [(None, "error", traceback.format_exc())] * len(rows)
    results = []
    for prompt, response, gt, extra in rows:
        try:
            results.append((_as_score(_call(fn, (prompt, response, gt), {**extra, **kwargs}, timeout_s)), "ok", None))
        except _CallTimeout:
            results.append((None, "timeout", None))
        except Exception:
            results.append((None, "error", traceback.format_exc()))
    return results


def _die_with_parent(parent: int) -> None:
    """Pool workers must not outlive a driver that is SIGKILLed (they would hold its stdout open
    and linger as orphans): the kernel kills them when the parent goes (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(parent: int, fns: list[tuple[str, bool]]) -> None:
    _die_with_parent(parent)
    # Import the reward functions now, and run their module's optional `warmup()` (math-verify's
    # parser loads in ~1 s), not inside the first step this worker happens to get work in.
    # Errors surface, with their path, on the real calls.
    for spec, batched in fns:
        try:
            fn = resolve_fn(spec, batched=batched)
            warmup = getattr(sys.modules.get(getattr(fn, "__module__", ""), None), "warmup", None)
            if callable(warmup):
                _call(warmup, (), {}, 30.0)
        except BaseException:
            pass


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
            resolve_fn(f.fn, key=f"reward.fns[{i}].fn", batched=f.batched)  # fail at start-up, path named
        self._pool = None
        self._logged: set[str] = set()

    def _get_pool(self):
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.cfg.num_workers, mp_context=mp.get_context("spawn"),
                                                initializer=_init_worker,
                                                initargs=(os.getpid(), [(f.fn, f.batched) for f in self.cfg.fns]))
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
        rows = list(zip(prompts, responses, ground_truths, extras))
        n = len(rows)
        total = torch.zeros(n)
        per_fn, errors, timeouts = [], 0, 0
        for f in self.cfg.fns:
            scores = torch.full((n,), float(self.cfg.error_score))
            for i, (value, status, tb) in enumerate(self._run_fn(f, rows)):
                if status == "ok":
                    scores[i] = value
                elif status == "timeout":
                    timeouts += 1
                else:
                    errors += 1
                    if f.fn not in self._logged:
                        self._logged.add(f.fn)
                        log.warning("reward function %s raised (scored %s; logged once):\n%s",
                                    f.fn, self.cfg.error_score, tb)
            per_fn.append(scores)
            total += f.weight * scores
        return RewardResult(total, per_fn, errors, timeouts)

    def _run_fn(self, f, rows: list[tuple]) -> list[tuple]:
        """Rows go to the pool in chunks; each call has its own alarm. A call that ignores the alarm
        (stuck in C code) hits the chunk's hard deadline: its whole chunk counts as timed out and
        the pool is replaced."""
        if not rows:
            return []
        pool = self._get_pool()
        n_chunks = 1 if f.batched else min(len(rows), 4 * self.cfg.num_workers)
        bounds = [round(k * len(rows) / n_chunks) for k in range(n_chunks + 1)]
        chunks = [rows[a:b] for a, b in zip(bounds, bounds[1:])]
        t = self.cfg.timeout_s
        futs = [pool.submit(_score_chunk, f.fn, dict(f.kwargs), f.batched, t, c) for c in chunks]
        per_worker = -(-len(chunks) // self.cfg.num_workers)
        deadline = (1 if f.batched else max(map(len, chunks))) * t * per_worker + 5.0
        done, _ = cf.wait(futs, timeout=deadline)
        out: list[tuple] = []
        for fut, chunk in zip(futs, chunks):
            if fut in done and fut.exception() is None:
                out.extend(fut.result())
            else:
                out.extend([(None, "timeout", None)] * len(chunk))
        if len(done) < len(futs):
            log.warning("reward function %s did not return within %.0fs: replacing the scoring pool", f.fn, deadline)
            self._reset_pool()
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
