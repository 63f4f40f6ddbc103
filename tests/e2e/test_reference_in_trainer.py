"""reference.placement=trainer: the frozen reference inside the trainer ranks, partitioned by
ZeRO-3, gives the log-probs a separate reference role gives."""
import pytest
import ray

from rlengine import tiny
from rlengine.job import actor_env
from rlengine.main import load_config
from rlengine.workers.group import WorkerGroup, free_port
from rlengine.workers.reference import ReferenceWorker
from rlengine.workers.trainer import TrainerWorker
from tests.conftest import read_metrics, read_summary, run_main
from tests.e2e.test_grpo_e2e import SMALL, _check
from tests.e2e.test_zero3 import _synthetic_batch

pytestmark = pytest.mark.e2e


def test_trainer_ranks_hold_a_frozen_partitioned_reference():
    """ZeRO-3 over 2 ranks partitions the reference's weights (and one rank, stage 2, holds them
    whole); its log-probs equal a separate ReferenceWorker's on the same batch, at the rollout
    temperature; a policy update moves the policy and leaves the reference as it was."""
    path = tiny.resolve_path("tiny:base")
    batch = _synthetic_batch(16)
    common = ["model.path=tiny:base", "data.prompts_per_step=2", "trainer.micro_batch_size=4",
              "rollout.temperature=0.7", "algorithm.kl_coef=0.1", "reference.placement=trainer"]
    cfg, plan = load_config("grpo_tiny", common)
    want_BR = ReferenceWorker(cfg, path, plan.micro_batch_size).log_probs(batch)["ref_logp"]
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": actor_env()})
    try:
        for ws, stage in ((2, 3), (1, 2)):
            cfg, plan = load_config("grpo_tiny", [*common, f"trainer.world_size={ws}"])
            assert plan.reference_in_trainer and plan.zero_stage == stage
            port = free_port()
            group = WorkerGroup("trainer", TrainerWorker, ws, None, 0, 0.5, 0,
                                lambda rank: ((cfg, plan, path, rank, ws, "127.0.0.1", port), {}), actor_env())
            shards = group.call_all("shard_info", reference=True)
            big = {n: full for n, (_, full) in shards[0].items() if full >= 10_000}
            assert big and shards[0].keys() == group.call_all("shard_info")[0].keys()
            for name, full in big.items():
                local = [s[name][0] for s in shards]
                if ws == 1:
                    assert local == [full], (name, local)
                else:  # each rank holds about half of every partitioned tensor, together all of it
                    assert all(n < full for n in local) and sum(local) >= full, (name, local, full)

            ref = group.map_batch("ref_log_probs", batch)
            got_BR = ref["ref_logp"]
            assert got_BR.shape == want_BR.shape
            assert (got_BR - want_BR).abs().max() < 1e-5, (ws, (got_BR - want_BR).abs().max())
            old = group.map_batch("log_probs", batch)
            metrics = group.call_split("update", batch.union(ref).update(rollout_logp=old["old_logp"]))
            assert all(m["actor/kl"] < 1e-6 for m in metrics)  # reference == the policy before its update
            assert all(m["actor/grad_norm"] > 0 for m in metrics)
            assert group.map_batch("ref_log_probs", batch)["ref_logp"].equal(got_BR)  # frozen
            assert not group.map_batch("log_probs", batch)["old_logp"].equal(old["old_logp"])  # the policy moved
            group.kill()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_reference_in_trainer_matches_a_separate_reference(tmp_path):
    """GRPO with KL over 2 ZeRO-3 ranks, 3 steps: the in-trainer reference gives the same per-step
    losses, KL and rewards as the separate reference role, no reference role is placed, and a
    resumed run rebuilds the reference from model.path (its step 3 equals the uninterrupted one)."""
    args = [*SMALL, "trainer.world_size=2", "algorithm.kl_coef=0.1", "eval.before=false", "eval.after=false",
            "checkpoint.save_hf=false"]
    separate, inside = tmp_path / "separate", tmp_path / "trainer"
    _check(run_main([*args, "trainer.total_steps=3", f"run_dir={separate}"]))
    _check(run_main([*args, "trainer.total_steps=2", "reference.placement=trainer", f"run_dir={inside}"]))
    _check(run_main([*args, "trainer.total_steps=3", "reference.placement=trainer", f"run_dir={inside}"]))

    summary = read_summary(inside)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 3
    assert set(summary["placement"]) == {"trainer", "rollout"}
    assert len(summary["placement"]["trainer"]) == 2
    assert "reference" in read_summary(separate)["placement"]

    def steps(run_dir):
        return {m["step"]: m for m in read_metrics(run_dir) if "reward/mean" in m}

    want, got = steps(separate), steps(inside)
    assert sorted(got) == sorted(want) == [1, 2, 3]
    assert got[1]["actor/kl"] == pytest.approx(0.0, abs=1e-6)  # reference == initial policy
    assert want[3]["actor/kl"] > 1e-6  # the policy has moved away: the comparison below means something
    for step in (1, 2, 3):
        for key in ("actor/pg_loss", "actor/kl", "actor/kl_loss", "reward/mean"):
            assert got[step][key] == pytest.approx(want[step][key], abs=1e-5), (step, key)
        assert "timing_s/ref" in got[step]
