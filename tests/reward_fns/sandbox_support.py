"""What the sandbox test modules share: the suite's small limits and `sbx()` (run, then check that
nothing of the run is left).  Their fixtures are in conftest.py."""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import pytest

from reward_fns.sandbox import Limits, _procs_of_uid, run

ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[2]
LIM = Limits(cpu_s=1, wall_s=2, memory_mb=256, max_procs=8, max_open_files=32, max_file_mb=1, stack_mb=16,
             scratch_mb=8, max_output_bytes=64 * 1024)
SLACK_S = 3.0  # launcher start-up and cleanup on a loaded 2-core CI machine

needs_root = pytest.mark.skipif(not ROOT, reason="dedicated-uid sandbox needs root (CI runs as root)")


def cgroups_of(uid: int) -> list[str]:
    """The cgroups of the run with this uid that still exist (every v1 hierarchy and v2)."""
    from reward_fns import sandbox_cgroup as cg

    mounts, own, out = cg._mounts(), cg._own_paths(), []
    for fstype, root, point, opts in mounts:
        key = next((c for c in cg._CONTROLLERS_V1 if c in opts), None) if fstype == "cgroup" else ""
        if key is not None:
            for parent in {cg._dir_for(root, point, own.get(key, "/")), point}:
                if os.path.isdir(f"{parent}/rlengine-sandbox-{uid}"):
                    out.append(f"{parent}/rlengine-sandbox-{uid}")
    return out


def sbx(code: str, stdin: str = "", _disable: tuple = (), **limits):
    """run() with the suite's small limits, then check that nothing of the run is left."""
    lim = dataclasses.replace(LIM, **limits)
    t0 = time.monotonic()
    r = run(code, stdin, lim, _disable=_disable)
    elapsed = time.monotonic() - t0
    assert elapsed < lim.wall_s + SLACK_S, f"run took {elapsed:.1f}s, wall limit {lim.wall_s}s"
    if r.uid is not None:
        assert _procs_of_uid(r.uid, -1) == [], "processes of the sandbox uid survived the run"
        assert not cgroups_of(r.uid), "the run's cgroup was left behind"
    assert os.listdir(tempfile.tempdir) == [], "sandbox temporary directory left behind"
    r.elapsed = elapsed
    return r
