"""Multi-node placement without a second machine: several raylets on this one (ray.cluster_utils),
each advertising its own custom resource, and the up-front "not enough resources" error."""
import pytest

from tests.conftest import read_summary, run_main

pytestmark = pytest.mark.e2e

SMALL = ["recipe=grpo_tiny", "model.path=tiny:base", "trainer.total_steps=2", "data.prompts_per_step=8",
         "algorithm.group_size=4", "data.max_test_rows=16", "tracking.progress_bar=false"]


def test_trainer_and_rollout_land_on_different_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}})
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    try:
        run_dir = tmp_path / "run"
        proc = run_main([*SMALL, f"ray.address={cluster.address}", f"run_dir={run_dir}",
                         "+resources.role_resources={trainer:{node_a:0.1},rollout:{node_b:0.1},reference:{node_b:0.1}}"])
        assert proc.returncode == 0, proc.stderr[-5000:]
        where = read_summary(run_dir)["placement"]
        assert [p["resources"] for p in where["trainer"]] == [["node_a"]]
        assert [p["resources"] for p in where["rollout"]] == [["node_b"]]
        assert where["trainer"][0]["node_id"] != where["rollout"][0]["node_id"]
        assert read_summary(run_dir)["final_metrics"]["sync/checksum_ok"] == 1.0  # weights crossed nodes
    finally:
        cluster.shutdown()


def test_not_enough_resources_fails_before_any_actor(tmp_path):
    proc = run_main([*SMALL, "resources.device=cuda", "resources.gpus_per_trainer=2", "trainer.world_size=2",
                     f"run_dir={tmp_path / 'run'}"], timeout=180)
    assert proc.returncode == 2
    assert "GPU: need 4 (trainer 2x2), cluster has 0 (short 4)" in proc.stderr, proc.stderr[-3000:]
    assert "roles up" not in proc.stderr


def test_colocated_rollout_shares_the_trainer_bundle(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main([*SMALL, "resources.colocate=true", f"run_dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    s = read_summary(run_dir)
    assert s["placement"]["rollout"][0]["node_id"] == s["placement"]["trainer"][0]["node_id"]
    assert s["final_metrics"]["sync/checksum_ok"] == 1.0 and s["final_metrics"]["sync/logprob_drift"] < 1e-4
