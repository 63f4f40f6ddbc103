"""WorkerGroup: N Ray actors of one role; splits a Batch by rank and gathers the results."""
from __future__ import annotations

import socket
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlengine.protocol import Batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@ray.remote
def _node_ip() -> str:
    return ray.util.get_node_ip_address()


class WorkerGroup:
    """Actors of one role, placed one per bundle of `pg` (bundle_offset onwards).

    `call_split` shards the batch evenly (ranks get equal row counts, so collective ops under
    ZeRO-3 stay in lock-step) and concatenates results in rank order; `call_all` calls every rank
    with the same arguments; `call_rank0` one rank.
    """

    def __init__(self, name: str, cls: type, n: int, pg, bundle_offset: int, num_cpus: float, num_gpus: float,
                 init: Callable[[int], tuple[tuple, dict]], env: dict[str, str] | None = None,
                 custom: dict[str, float] | None = None):
        self.name = name
        remote_cls = ray.remote(cls)
        self.actors = []
        for rank in range(n):
            args, kwargs = init(rank)
            opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "name": None,
                                    "resources": dict(custom or {}), "runtime_env": {"env_vars": env or {}}}
            if pg is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundle_offset + rank)
            self.actors.append(remote_cls.options(**opts).remote(*args, **kwargs))

    def __len__(self) -> int:
        return len(self.actors)

    def call_all(self, method: str, *args, **kwargs) -> list:
        return ray.get([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def call_rank0(self, method: str, *args, **kwargs):
        return ray.get(getattr(self.actors[0], method).remote(*args, **kwargs))

    def submit_split(self, method: str, batch: Batch, *args, **kwargs) -> list:
        """Like call_split, but returns the object refs at once (for overlapping two roles' work)."""
        shards = batch.split(len(self.actors))
        return [getattr(a, method).remote(s, *args, **kwargs) for a, s in zip(self.actors, shards)]

    def call_split(self, method: str, batch: Batch, *args, **kwargs) -> list:
        return ray.get(self.submit_split(method, batch, *args, **kwargs))

    def map_batch(self, method: str, batch: Batch, *args, **kwargs) -> Batch:
        return Batch.concat(self.call_split(method, batch, *args, **kwargs))

    def placement(self) -> list[dict]:
        """Where each actor landed: node id / ip per rank (recorded in the run log)."""
        return ray.get([a.__ray_call__.remote(lambda self: {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": __import__("os").getpid()}) for a in self.actors])

    def kill(self) -> None:
        for a in self.actors:
            try:
                ray.get(a.__ray_call__.remote(lambda self: getattr(self, "shutdown", lambda: None)()), timeout=30)
            except Exception:
                pass
            ray.kill(a, no_restart=True)
        self.actors = []
