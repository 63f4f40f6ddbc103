"""Multi-node placement without a second machine: several raylets on this one (ray.cluster_utils),
each advertising its own custom resource, and the up-front "not enough resources" error."""
import pytest

from tests.conftest import read_metrics, read_summary, run_main

pytestmark = pytest.mark.e2e

SMALL = ["recipe=grpo_tiny", "model.path=tiny:base", "trainer.total_steps=2", "data.prompts_per_step=8",
         "algorithm.group_size=4", "data.max_test_rows=16", "tracking.progress_bar=false"]


@pytest.mark.slow
def test_trainer_ranks_on_two_nodes_engines_on_a_third_match_one_node(tmp_path):
    """Two ZeRO-3 trainer ranks on two nodes (rendezvous at rank 0's node), two rollout engines on a
    third fed by the gloo broadcast, the reference inside the trainer group: three steps whose
    losses equal the same job's on one node within 1e-5."""
    from ray.cluster_utils import Cluster

    args = [*(a for a in SMALL if not a.startswith("trainer.total_steps")), "trainer.total_steps=3", "eval.before=false", "eval.after=false", "checkpoint.save_hf=false",
            "trainer.world_size=2", "rollout.num_workers=2", "rollout.sync_method=broadcast",
            "reference.placement=trainer", "algorithm.kl_coef=0.05",
            "reward.fns=[{fn:'reward_fns/math.py:compute_score',weight:1.0},"
            "{fn:'examples/custom_reward.py:concise_number',weight:1.0}]"]
    one = tmp_path / "one_node"
    proc = run_main([*args, f"run_dir={one}"])
    assert proc.returncode == 0, proc.stderr[-5000:]

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1, "trainer_slot": 1}})
    cluster.add_node(num_cpus=1, resources={"node_b": 1, "trainer_slot": 1})
    cluster.add_node(num_cpus=1, resources={"node_c": 1})
    cluster.wait_for_nodes()
    try:
        run_dir = tmp_path / "three_nodes"
        proc = run_main([*args, f"ray.address={cluster.address}", f"run_dir={run_dir}", "+resources.role_nodes={trainer:2}",
                         "+resources.role_resources={trainer:{trainer_slot:1.0},rollout:{node_c:0.1}}"])
        assert proc.returncode == 0, proc.stderr[-5000:]
    finally:
        cluster.shutdown()
    where = read_summary(run_dir)["placement"]
    assert sorted(r for p in where["trainer"] for r in p["resources"] if r.startswith("node_")) == ["node_a", "node_b"]
    assert [r for p in where["rollout"] for r in p["resources"] if r.startswith("node_")] == ["node_c", "node_c"]
    assert "reference" not in where
    got = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    want = [m for m in read_metrics(one) if "reward/mean" in m]
    assert [m["step"] for m in got] == [1, 2, 3]
    for g, w in zip(got, want):
        assert g["sync/broadcast"] == 1.0 and g["sync/ranks_verified"] == 2.0
        for k in ("actor/pg_loss", "actor/kl", "actor/kl_loss", "reward/mean", "actor/grad_norm"):
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-5), (g["step"], k)


def test_not_enough_resources_fails_before_any_actor(tmp_path):
    proc = run_main([*SMALL, "resources.device=cuda", "resources.gpus_per_trainer=2", "trainer.world_size=2",
                     f"run_dir={tmp_path / 'run'}"], timeout=180)
    assert proc.returncode == 2
    assert "GPU: need 4 (trainer 2x2), cluster has 0 (short 4)" in proc.stderr, proc.stderr[-3000:]
    assert "roles up" not in proc.stderr


def test_colocated_rollout_shares_the_trainer_bundle(tmp_path):
    """Hybrid colocation on CPU: the engine shares the trainer's bundle, and the controller puts it
    to sleep after each generation and wakes it (weights, sync, KV cache) before the next and for
    evaluation.  vLLM's CPU build has no sleep mode: every call is made, skipped, logged once; the
    engine's own bookkeeping still fails any generation or weight load that the order forbids."""
    run_dir = tmp_path / "run"
    proc = run_main([*SMALL, "resources.colocate=true", "rollout.sleep_level=1", "trainer.offload_during_rollout=true",
                     f"run_dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    s = read_summary(run_dir)
    assert s["placement"]["rollout"][0]["node_id"] == s["placement"]["trainer"][0]["node_id"]
    assert s["final_metrics"]["sync/checksum_ok"] == 1.0 and s["final_metrics"]["sync/logprob_drift"] < 1e-4
    out = proc.stdout + proc.stderr
    skipped = "vLLM sleep skipped: rollout engine 0: vLLM's sleep mode is not supported on CPU"
    assert out.count(skipped) == 1, out[-5000:]
    assert out.count("trainer offload skipped: rank 0") == 1
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["timing_s/sleep"] >= 0 and m["timing_s/wake"] >= 0
    # Start, eval before, 2 steps: 4 sleeps; every call skipped.  Waking: weights and KV cache
    # for the evaluation and step 1, the weights for each step's sync, the KV cache for step 2.
    last = steps[-1]
    assert (last["sleep/sleeps"], last["sleep/wakes"]) == (4, 7)
    assert last["sleep/skipped"] == last["sleep/sleeps"] + last["sleep/wakes"]
