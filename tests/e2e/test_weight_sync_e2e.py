"""Weight sync through the real topology: tensor-parallel engines, a tensor corrupted in transit on
every transport (and on a TP rank other than 0), an engine killed in the middle of a broadcast,
and a member that never joins the sync group."""
import time

import pytest

from tests.conftest import read_metrics, read_summary, run_main

pytestmark = pytest.mark.e2e

SMALL = ["recipe=grpo_tiny", "model.path=tiny:base", "data.prompts_per_step=8", "algorithm.group_size=4",
         "tracking.progress_bar=false", "eval.before=false", "eval.after=false", "checkpoint.save_hf=false",
         "reward.fns=[{fn:'reward_fns/math.py:compute_score',weight:1.0},"
         "{fn:'examples/custom_reward.py:concise_number',weight:1.0}]"]
VOLATILE = ("timing_s/", "perf/", "sync/gbps", "sync/load_s", "time", "faults/")


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


def _steps(run_dir):
    return [m for m in read_metrics(run_dir) if "reward/mean" in m]


def test_tensor_parallel_engine_takes_broadcast_weights_on_every_rank(tmp_path):
    """rollout.tensor_parallel_size=2 on the CPU build: both TP workers join the gloo group, receive
    every bucket, report checksums of what arrived and their shards' sums; the log-probs agree
    with the trainer's at the fp32 level."""
    run_dir = tmp_path / "run"
    _ok(run_main([*SMALL, "trainer.total_steps=2", "rollout.tensor_parallel_size=2", "rollout.sync_method=broadcast",
                  f"run_dir={run_dir}"]))
    steps = _steps(run_dir)
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["sync/ranks_verified"] == 2.0 and m["sync/broadcast"] == 1.0
        assert m["sync/logprob_drift"] < 1e-4, m["sync/logprob_drift"]
    # Both ranks' replicated tensors plus the shards checked over the two ranks.
    assert steps[-1]["sync/engine_tensors_verified"] > 15


@pytest.mark.parametrize("method,extra,target", [
    ("shm", [], "0/0/model.norm.weight"),
    ("object_store", [], "0/0/lm_head.weight"),
    ("broadcast", ["rollout.num_workers=2"], "1/0/model.layers.1.mlp.down_proj.weight"),
    pytest.param("shm", ["rollout.tensor_parallel_size=2"], "0/1/model.embed_tokens.weight", marks=pytest.mark.slow),
], ids=["shm", "object_store", "broadcast-engine1", "shm-tp-rank1"])
def test_tensor_corrupted_in_transit_stops_the_run_naming_engine_rank_and_tensor(tmp_path, method, extra, target):
    engine, rank, tensor = target.split("/")
    run_dir = tmp_path / "run"
    proc = run_main([*SMALL, "trainer.total_steps=2", f"rollout.sync_method={method}", *extra, f"run_dir={run_dir}"],
                    env={"RLENGINE_FAULT": "corrupt:1", "RLENGINE_FAULT_TARGET": target})
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert (f"weight sync ({method}) to rollout engine {engine}, tensor-parallel rank {rank} failed verification"
            in proc.stderr), proc.stderr[-4000:]
    assert f"['{tensor}']" in proc.stderr, proc.stderr[-4000:]
    assert [m["step"] for m in _steps(run_dir)] == [], "the step whose sync failed was logged"


@pytest.mark.slow
def test_engine_killed_mid_broadcast_is_restarted_resynced_and_the_run_matches(tmp_path):
    """Engine 0 dies after its first tensor of step 1's broadcast: Ray restarts it, a new group is
    formed, the sync is redone, and every step equals an uninterrupted run's."""
    args = [*SMALL, "trainer.total_steps=3", "rollout.sync_method=broadcast", "rollout.sync_timeout_s=30"]
    want = tmp_path / "want"
    _ok(run_main([*args, f"run_dir={want}"]))
    run_dir = tmp_path / "run"
    proc = run_main([*args, f"run_dir={run_dir}"], env={"RLENGINE_FAULT": "sync:1"})
    _ok(proc)
    assert read_summary(run_dir)["faults"]["faults/rollout_restarts"] == 1
    assert "rollout engine 0 died during the weight sync" in proc.stderr
    got, ref = _steps(run_dir), _steps(want)
    assert [m["step"] for m in got] == [1, 2, 3]
    for g, w in zip(got, ref):
        keys = [k for k in w if not k.startswith(VOLATILE)]
        diff = {k: (g.get(k), w[k]) for k in keys if g.get(k) != pytest.approx(w[k], rel=1e-5, abs=1e-6)}
        assert not diff, diff


@pytest.mark.slow
def test_member_that_never_joins_the_sync_group_fails_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    proc = run_main([*SMALL, "trainer.total_steps=2", "rollout.sync_method=broadcast", "rollout.sync_timeout_s=5",
                     f"run_dir={tmp_path / 'run'}"], env={"RLENGINE_FAULT": "sync_join:1"}, timeout=300)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "rank 1 (rollout engine 0 tp rank 0) did not join within 5 s" in proc.stderr, proc.stderr[-4000:]
    assert time.monotonic() - t0 < 150
