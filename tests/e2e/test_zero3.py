"""Two DeepSpeed ZeRO-3 ranks as Ray actors on CPU: parameters are partitioned, gathered weights agree."""
import pytest
import ray

from rlengine import tiny
from rlengine.job import actor_env
from rlengine.main import load_config
from rlengine.workers.group import WorkerGroup, free_port
from rlengine.workers.trainer import TrainerWorker

pytestmark = pytest.mark.e2e


def test_two_ranks_partition_and_gather():
    cfg, plan = load_config("grpo_tiny", ["model.path=tiny:base", "trainer.world_size=2"])
    path = tiny.resolve_path("tiny:base")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": actor_env()})
    try:
        group = WorkerGroup("trainer", TrainerWorker, 2, None, 0, 0.5, 0,
                            lambda rank: ((cfg, plan, path, rank, 2, "127.0.0.1", port), {}), actor_env())
        shards = group.call_all("shard_info")
        big = {n: full for n, (_, full) in shards[0].items() if full >= 10_000}
        assert big, "the tiny model has tensors above the persistence threshold"
        for name, full in big.items():
            local = [s[name][0] for s in shards]
            # Each rank holds about half of every partitioned tensor, and together all of it.
            assert all(n < full for n in local), (name, local, full)
            assert sum(local) >= full and max(local) - min(local) <= 1 + full % 2, (name, local)
        sums = group.call_all("gathered_checksums")
        assert sums[0] == sums[1]
        from safetensors.torch import load_file

        from rlengine.weight_sync import checksum

        on_disk = checksum(sorted(load_file(f"{path}/model.safetensors").items()))
        assert {k: on_disk[k] for k in sums[0]} == sums[0]
        group.kill()
    finally:
        ray.shutdown()


def _synthetic_batch(n: int, seed: int = 0):
    """n sequences of the tiny task's tokens with fixed random advantages (the rollout layout)."""
    import torch

    from rlengine.layout import pack_sequences
    from rlengine.protocol import Batch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 200, (int(torch.randint(4, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    responses = [torch.randint(3, 200, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    t = pack_sequences(prompts, responses, None, pad_id=0)
    adv = torch.randn(n, generator=g)
    t["advantages"] = adv[:, None] * t["response_mask"]
    return Batch(tensors=t)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-sum"])
def test_two_ranks_match_one_rank(loss_agg):
    """The loss normaliser is global: 2 ranks x half the batch give the same loss and gradient
    norm as 1 rank with the whole batch (uneven response lengths on purpose). And the single-update
    path that takes the old log-probs from the update's own forward pass (no `old_logp` in the
    batch) gives the same loss and gradient norm as a separate old-log-prob pass."""
    path = tiny.resolve_path("tiny:base")
    batch = _synthetic_batch(16)
    results = {}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": actor_env()})
    try:
        for ws, separate_pass in ((1, True), (2, True), (1, False)):
            cfg, plan = load_config("grpo_tiny", ["model.path=tiny:base", f"trainer.world_size={ws}",
                                                  "data.prompts_per_step=2", "algorithm.kl_coef=0",
                                                  f"algorithm.loss_agg={loss_agg}", "trainer.micro_batch_size=4"])
            port = free_port()
            group = WorkerGroup("trainer", TrainerWorker, ws, None, 0, 0.5, 0,
                                lambda rank: ((cfg, plan, path, rank, ws, "127.0.0.1", port), {}), actor_env())
            old = group.map_batch("log_probs", batch)
            b = batch.union(old) if separate_pass else batch.update(rollout_logp=old["old_logp"])
            metrics = group.call_split("update", b)
            results[(ws, separate_pass)] = {k: sum(m[k] for m in metrics) / len(metrics)
                                            for k in ("actor/pg_loss", "actor/grad_norm")}
            if not separate_pass:
                assert metrics[0]["sync/logprob_drift"] < 1e-6  # rollout_logp here = the same weights' pass
            group.kill()
    finally:
        ray.shutdown()
    ref = results[(1, True)]
    assert ref["actor/grad_norm"] > 0
    for k in ref:
        assert results[(2, True)][k] == pytest.approx(ref[k], rel=1e-4, abs=1e-7), (k, results)
        assert results[(1, False)][k] == pytest.approx(ref[k], rel=1e-6, abs=1e-8), (k, results)


@pytest.mark.slow
def test_compiled_trainer_matches_eager():
    """trainer.compile=true (torch.compile, inductor on CPU) gives the same loss and gradient norm
    as the eager model on the same batch, over two optimizer steps (the second after the compiled
    graph's own update)."""
    path = tiny.resolve_path("tiny:base")
    batch = _synthetic_batch(16)
    results = {}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": actor_env()})
    try:
        for compiled in (False, True):
            cfg, plan = load_config("grpo_tiny", ["model.path=tiny:base", "data.prompts_per_step=2",
                                                  "algorithm.kl_coef=0", "trainer.micro_batch_size=8",
                                                  f"trainer.compile={str(compiled).lower()}"])
            port = free_port()
            group = WorkerGroup("trainer", TrainerWorker, 1, None, 0, 0.5, 0,
                                lambda rank: ((cfg, plan, path, rank, 1, "127.0.0.1", port), {}), actor_env())
            assert group.call_all("is_compiled") == [compiled]
            old = group.map_batch("log_probs", batch)
            b = batch.update(rollout_logp=old["old_logp"])
            results[compiled] = [group.call_split("update", b)[0] for _ in range(2)]
            group.kill()
    finally:
        ray.shutdown()
    for eager, comp in zip(results[False], results[True]):
        assert eager["actor/grad_norm"] > 0
        for k in ("actor/pg_loss", "actor/grad_norm"):
            assert comp[k] == pytest.approx(eager[k], rel=1e-4, abs=1e-7), (k, results)
