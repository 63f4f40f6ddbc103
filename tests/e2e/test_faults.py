"""Checkpoint, resume and failures with real processes: Ray, vLLM (CPU), DeepSpeed on the tiny model.

Faults are injected with RLENGINE_FAULT (rlengine/faults.py): the named process SIGKILLs itself
at a named point of a step, once.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rlengine import checkpoint
from tests.conftest import REPO, read_metrics, read_summary, run_main

pytestmark = pytest.mark.e2e

ARGS = ["recipe=grpo_tiny", "model.path=tiny:base", "data.prompts_per_step=8", "algorithm.group_size=4",
        "data.max_test_rows=16", "tracking.progress_bar=false", "trainer.total_steps=4", "checkpoint.every_steps=2",
        "reward.fns=[{fn:'reward_fns/math.py:compute_score',weight:1.0},"
        "{fn:'examples/custom_reward.py:concise_number',weight:1.0}]"]
VOLATILE = ("timing_s/", "perf/", "sync/gbps", "sync/load_s", "time", "faults/")


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


def _steps(run_dir: Path) -> dict[int, dict]:
    rows = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert len({m["step"] for m in rows}) == len(rows), "a step logged twice"
    return {m["step"]: m for m in rows}


def _same(got: dict, want: dict):
    keys = [k for k in want if not k.startswith(VOLATILE)]
    assert "actor/pg_loss" in keys and "reward/mean" in keys
    diff = {k: (got.get(k), want[k]) for k in keys if got.get(k) != pytest.approx(want[k], rel=1e-5, abs=1e-6)}
    assert not diff, diff


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faults") / "uninterrupted"
    _ok(run_main([*ARGS, f"run_dir={run_dir}"]))
    return run_dir


def test_rollout_and_reference_killed_mid_step_are_restarted(uninterrupted, tmp_path):
    """SIGKILL of the vLLM rollout actor in step 2 and of the reference actor in step 3: Ray restarts
    them, the rollout gets the current weights again, the step's work is redone with the same seeds,
    and every step's metrics equal the uninterrupted run's."""
    run_dir = tmp_path / "run"
    proc = run_main([*ARGS, f"run_dir={run_dir}"], env={"RLENGINE_FAULT": "rollout:2,reference:3"})
    _ok(proc)
    s = read_summary(run_dir)
    assert s["steps"] == 4 and s["resumed_from_step"] is None
    assert s["faults"] == {"faults/rollout_restarts": 1, "faults/reference_restarts": 1}
    steps, want = _steps(run_dir), _steps(uninterrupted)
    assert sorted(steps) == [1, 2, 3, 4]
    assert [steps[i]["faults/rollout_restarts"] for i in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert [steps[i]["faults/reference_restarts"] for i in (1, 2, 3, 4)] == [0, 0, 1, 1]
    for i in (1, 2, 3, 4):
        _same(steps[i], want[i])
    assert "a rollout actor died during generate" in proc.stderr


@pytest.mark.slow
def test_driver_killed_after_checkpoint_resumes_where_it_stopped(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    killed = run_main([*ARGS, f"run_dir={run_dir}"], env={"RLENGINE_FAULT": "after_checkpoint:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000002"
    # A leftover that is not a complete checkpoint must not be picked, only named.
    junk = run_dir / "checkpoints" / "step_000003"
    junk.mkdir()
    (junk / "driver_state.json").write_text("{not json")

    proc = run_main([*ARGS, f"run_dir={run_dir}"])  # the same command
    _ok(proc)
    assert "skipping checkpoint" in proc.stderr and "step_000003" in proc.stderr
    s = read_summary(run_dir)
    assert s["resumed_from_step"] == 2 and s["steps"] == 4
    assert s["eval/accuracy_before"] == read_summary(uninterrupted)["eval/accuracy_before"]
    steps, want = _steps(run_dir), _steps(uninterrupted)
    assert sorted(steps) == [1, 2, 3, 4]
    for i in (1, 2, 3, 4):
        _same(steps[i], want[i])
    # Complete checkpoints are kept (keep_last=2); the damaged directory is left for the user to inspect.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_000002", "step_000003",
                                                                                 "step_000004"]
    assert checkpoint.problem(junk) is not None

    # Any checkpoint exports to an HF model with one command; the final one equals the run's own export.
    out = tmp_path / "exported"
    exp = subprocess.run([sys.executable, "-m", "rlengine.export", str(run_dir / "checkpoints" / "step_000004"),
                          str(out)], cwd=REPO, capture_output=True, text=True)
    assert exp.returncode == 0, exp.stderr[-3000:]
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(Path(s["hf_checkpoint"]) / "model.safetensors")
    assert sorted(a) == sorted(b) and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    killed = run_main([*ARGS, f"run_dir={run_dir}"], env={"RLENGINE_FAULT": "checkpoint_write:4"})
    assert killed.returncode == -signal.SIGKILL
    ckpts = run_dir / "checkpoints"
    assert (ckpts / ".tmp_step_000004" / "trainer").is_dir()  # the trainer's files were written...
    assert not (ckpts / "step_000004").exists()  # ...but the checkpoint never became complete
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    found, skipped = checkpoint.newest_complete(run_dir)
    assert found == ckpts / "step_000002" and not skipped
    assert not (ckpts / ".tmp_step_000004").exists()  # the interrupted write is cleaned up

    proc = run_main([*ARGS, f"run_dir={run_dir}"])
    _ok(proc)
    assert read_summary(run_dir)["resumed_from_step"] == 2
    _same(_steps(run_dir)[4], _steps(uninterrupted)[4])


@pytest.mark.slow
def test_a_dead_trainer_rank_stops_the_run_resumably(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main([*ARGS, f"run_dir={run_dir}"], env={"RLENGINE_FAULT": "trainer:3"})
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert "trainer rank 0 died" in proc.stderr and "step_000002" in proc.stderr
    assert "Rerun the same command to resume" in proc.stderr
    proc = run_main([*ARGS, f"run_dir={run_dir}"])
    _ok(proc)
    s = read_summary(run_dir)
    assert s["resumed_from_step"] == 2 and s["steps"] == 4


def _ours() -> set[int]:
    """Ray and vLLM processes (and anything else under `ray::`) on this machine."""
    pids = set()
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                k in cmd for k in ("ray::", "raylet", "gcs_server", "vllm", "rlengine.main")):
            pids.add(p.pid)
    return pids


def test_sigterm_checkpoints_stops_and_leaves_nothing_behind(tmp_path):
    run_dir = tmp_path / "run"
    before_pids, before_shm = _ours(), set(os.listdir("/dev/shm"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "rlengine.main", *ARGS, "trainer.total_steps=200",
                               f"run_dir={run_dir}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (run_dir / "metrics.jsonl").exists() or '"step": 2,' not in (run_dir / "metrics.jsonl").read_text():
            assert driver.poll() is None and time.time() < deadline, driver.communicate()[1][-3000:]
            time.sleep(0.2)
        during = _ours() - before_pids
        assert len(during) >= 3, "expected the driver, Ray and the actors to be running"
        driver.send_signal(signal.SIGTERM)
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 75, err[-3000:]
    assert "stopped by SIGTERM" in err and "Rerun the same command to resume" in err
    found, _ = checkpoint.newest_complete(run_dir)
    state = checkpoint.read_state(found)
    last = max(_steps(run_dir))
    assert state["step"] == last >= 2 and last < 200
    deadline = time.time() + 30
    while (left := (_ours() - before_pids) & during) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, [" ".join(psutil.Process(p).cmdline())[:120] for p in left if psutil.pid_exists(p)]
    assert set(os.listdir("/dev/shm")) - before_shm == set()


def test_resume_from_a_path_that_is_not_a_checkpoint_fails_before_any_actor(tmp_path):
    t0 = time.time()
    proc = run_main([*ARGS, f"run_dir={tmp_path / 'run'}", f"resume={tmp_path}"])
    assert proc.returncode == 2
    assert "resume" in proc.stderr and "not a complete rlengine checkpoint" in proc.stderr
    assert "roles up" not in proc.stderr and time.time() - t0 < 60


def test_resume_from_a_checkpoint_of_another_shape_names_the_difference(uninterrupted, tmp_path):
    ckpt = uninterrupted / "checkpoints" / "step_000004"
    proc = run_main([*ARGS, "trainer.world_size=2", f"run_dir={tmp_path / 'run'}", f"resume={ckpt}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "trainer.world_size: checkpoint 1, this run 2" in proc.stderr and "roles up" not in proc.stderr
    proc = run_main([*ARGS, "recipe=ppo_tiny", "reward_model.path=null", f"run_dir={tmp_path / 'run2'}",
                     f"resume={uninterrupted}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "algorithm.name: checkpoint 'grpo', this run 'ppo'" in proc.stderr
