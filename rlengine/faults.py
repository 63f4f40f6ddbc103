"""Fault injection for the failure tests (and for rehearsing failures on a real cluster).

`RLENGINE_FAULT="point:step[,point:step...]"` SIGKILLs a process at a named point of a step,
once per (point, step) for the run (a marker file under RLENGINE_FAULT_STATE records it, so a
restarted actor is not killed again):

  rollout:N / reference:N / reward_model:N / trainer:N
      the role's actor (rank 0) kills itself when its step-N work arrives;
  checkpoint_write:N   the driver dies after the trainer's files of checkpoint N are written,
                       before the checkpoint is complete;
  after_checkpoint:N   the driver dies right after checkpoint N is complete;
  sync:N               rollout engine 0 (its TP rank 0) dies in the middle of step N's weight
                       transfer, after its first tensor arrived;
  sync_join:N          rollout engine 0 never joins the weight-sync process group formed at step N
                       (it hangs instead);
  corrupt:N            one tensor of step N's weight sync is altered on arrival, before the
                       receiver's checksum: RLENGINE_FAULT_TARGET="ENGINE/TP_RANK/TENSOR_NAME"
                       (default 0/0/the first tensor) says where.

Unset (the default) it costs one environment lookup.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "RLENGINE_FAULT"
STATE_ENV = "RLENGINE_FAULT_STATE"
TARGET_ENV = "RLENGINE_FAULT_TARGET"
POINTS = ("rollout", "reference", "reward_model", "trainer", "checkpoint_write", "after_checkpoint", "sync",
          "sync_join", "corrupt")


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


def maybe_corrupt(engine: int, rank: int, step: int | None, name: str, t):
    """`t`, or a copy of it with its first element changed when corrupt:STEP targets this tensor."""
    if not os.environ.get(ENV) or "corrupt" not in os.environ[ENV]:
        return t
    want_engine, want_rank, want_name = (os.environ.get(TARGET_ENV, "0/0/").split("/", 2) + ["", "", ""])[:3]
    if int(want_engine or 0) != engine or int(want_rank or 0) != rank or (want_name and want_name != name):
        return t
    if not armed("corrupt", step):
        return t
    bad = t.clone()
    bad.view(-1)[0] += 1
    return bad
