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
