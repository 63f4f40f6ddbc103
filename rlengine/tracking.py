"""Where metrics go: a progress bar and one line per step on the console, the run log,
tensorboard, wandb (when `tracking.wandb=true`), a metrics.jsonl history and summary.json."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("rlengine")

# The per-step console line: metric -> short label, in this order.
CONSOLE_KEYS = {"reward/mean": "reward", "eval/accuracy": "eval_acc", "actor/pg_loss": "pg_loss", "actor/kl": "kl",
                "actor/entropy": "entropy", "actor/clip_frac": "clip_frac", "actor/grad_norm": "grad_norm",
                "sft/loss": "sft_loss", "sft/truncated_frac": "truncated", "rm/loss": "rm_loss",
                "rm/train_accuracy": "rm_acc", "eval/pairwise_accuracy": "eval_pair_acc",
                "dpo/loss": "dpo_loss", "rewards/accuracies": "rew_acc", "rewards/margins": "margin",
                "eval/rewards/accuracies": "eval_rew_acc", "critic/value_loss": "vf_loss",
                "critic/vf_explained_var": "vf_ev", "reward/rm_mean": "rm_score", "response_length/mean": "resp_len",
                "sync/logprob_drift": "drift", "sample/single_accuracy": "single_acc",
                "sample/kept_accuracy": "kept_acc", "sample/pass_at_k": "pass@k", "sample/rows": "rows",
                "timing_s/step": "step_s"}


class _BarSafeHandler(logging.StreamHandler):
    """A console handler that writes through tqdm: a record clears the progress bar, prints, and the
    bar is redrawn below it, instead of the record landing in the middle of the bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def setup_logging(run_dir: Path, stream=None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_rlengine", False):
            root.removeHandler(h)
            h.close()
    fh = logging.FileHandler(run_dir / "run.log")
    fh.setFormatter(fmt)
    # Unwrap: a handler made while a Tracker's bar is up must write to the real stream.
    sh = _BarSafeHandler(getattr(stream or sys.stderr, "_rlengine_wrapped", stream or sys.stderr))
    sh.setFormatter(fmt)
    for h in (fh, sh):
        h._rlengine = True
        root.addHandler(h)


class _LinesAboveBar:
    """Stands in for sys.stdout / sys.stderr while the bar is up, so that whole lines from anywhere
    in the driver (Ray's worker-log printer thread, warnings, print) are written above the bar."""

    def __init__(self, wrapped, bar_stream):
        self._rlengine_wrapped, self._bar_stream = wrapped, bar_stream
        self._buf, self._lock = "", threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            head, sep, self._buf = self._buf.rpartition("\n")
        if sep:
            self._emit(head + sep)
        return len(s)

    def _emit(self, text: str) -> None:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self._bar_stream):
            self._rlengine_wrapped.write(text)
            self._rlengine_wrapped.flush()

    def flush(self) -> None:
        self._rlengine_wrapped.flush()

    def drain(self) -> None:
        with self._lock:
            rest, self._buf = self._buf, ""
        if rest:
            self._emit(rest)

    def __getattr__(self, name):
        return getattr(self._rlengine_wrapped, name)


def _fmt(v: float) -> str:
    if isinstance(v, float) and (abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3)):
        return f"{v:.2e}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Tracker:
    def __init__(self, run_dir: Path, cfg, total_steps: int, config_dict: dict, start_step: int = 0,
                 stream=None):
        """`start_step` > 0 continues a resumed run: metrics.jsonl already holds the history up to
        it, and tensorboard drops events logged after it by the interrupted run."""
        self.run_dir, self.cfg = run_dir, cfg
        self._jsonl = open(run_dir / "metrics.jsonl", "a")
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self._wandb = None
        if cfg.wandb:
            import wandb

            os.environ.setdefault("WANDB_MODE", cfg.wandb_mode)
            self._wandb = wandb.init(project=cfg.project, name=cfg.experiment or run_dir.name,
                                     dir=str(run_dir), config=config_dict, mode=cfg.wandb_mode)
        # Console lines go to `stream` (default stderr); the bar too, and only on a terminal: in a
        # file or a pipe its carriage-return redraws would be kept around every line.
        self._out = stream or sys.stderr
        self._bar = None
        self._redirected: list[tuple[str, _LinesAboveBar]] = []
        if cfg.progress_bar and getattr(self._out, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="steps", unit="step", dynamic_ncols=True,
                             file=self._out)
            for name in ("stdout", "stderr"):
                proxy = _LinesAboveBar(getattr(sys, name), self._out)
                setattr(sys, name, proxy)
                self._redirected.append((name, proxy))

    def _print(self, msg: str, file) -> None:
        from tqdm import tqdm

        # Through tqdm's lock: the bar is cleared, the line written whole, the bar redrawn.
        file = getattr(file, "_rlengine_wrapped", file)
        with tqdm.external_write_mode(file=self._out):
            file.write(msg + "\n")
            file.flush()

    def log(self, step: int, metrics: dict[str, float], advance: bool = True) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        bad = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isfinite(float(v)))
        if bad:
            log.warning("step %d: non-finite metrics %s", step, bad)
        rec = {"step": step, "time": time.time(), **clean}
        self._jsonl.write(json.dumps(rec) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=step)
        line = " ".join(f"{label}={_fmt(clean[k])}" for k, label in CONSOLE_KEYS.items() if k in clean)
        msg = f"step {step}: {line}"
        if line:  # an evaluation's own metrics are in the held-out note above
            self._print(msg, self._out)
        if self._bar is not None:
            self._bar.set_postfix_str(line[:60], refresh=not advance)
            if advance:
                self._bar.update(1)
        with open(self.run_dir / "run.log", "a") as f:
            f.write(msg + "\n")

    def note(self, msg: str) -> None:
        """A line for people: printed to stdout and kept in run.log."""
        self._print(msg, sys.stdout)
        with open(self.run_dir / "run.log", "a") as f:
            f.write(msg + "\n")

    def close(self) -> None:
        for name, proxy in reversed(self._redirected):
            proxy.drain()
            if getattr(sys, name) is proxy:  # someone else may have swapped it since
                setattr(sys, name, proxy._rlengine_wrapped)
        self._redirected = []
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl.close()


def write_summary(run_dir: Path, summary: dict) -> Path:
    """summary.json: the stable, machine-readable result of a run (see README for the keys)."""
    path = run_dir / "summary.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path
