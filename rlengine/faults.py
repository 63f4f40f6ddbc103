"""Fault injection for the failure tests (and for rehearsing failures on a real cluster).

`RLENGINE_FAULT="point:step[,point:step...]"` SIGKILLs a process at a named point of a step,
once per (point, step) for the run (a marker file under RLENGINE_FAULT_STATE records it, so a
restarted actor is not killed again):

  rollout:N / reference:N / reward_model:N / trainer:N
      the role's actor (rank 0) kills itself when its step-N work arrives;
  checkpoint_write:N   the driver dies after the trainer's files of checkpoint N are written,
                       before the checkpoint is complete;
  after_checkpoint:N   the driver dies right after checkpoint N is complete.

Unset (the default) it costs one environment lookup.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "RLENGINE_FAULT"
STATE_ENV = "RLENGINE_FAULT_STATE"
POINTS = ("rollout", "reference", "reward_model", "trainer", "checkpoint_write", "after_checkpoint")


def parse(spec: str) -> set[tuple[str, int]]:
    out = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, step = item.partition(":")
        if point not in POINTS or not step.isdigit():
            raise ValueError(f"{ENV}={spec!r}: {item!r} is not POINT:STEP with POINT one of {POINTS}")
        out.add((point, int(step)))
    return out


def armed(point: str, step: int | None) -> bool:
    spec = os.environ.get(ENV)
    if not spec or step is None or (point, step) not in parse(spec):
        return False
    state = Path(os.environ.get(STATE_ENV) or ".")
    state.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(state / f"fired_{point}_{step}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def maybe_kill(point: str, step: int | None, rank: int = 0) -> None:
    if rank == 0 and armed(point, step):
        os.kill(os.getpid(), signal.SIGKILL)
