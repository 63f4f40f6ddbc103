"""WorkerGroup: N Ray actors of one role; splits a Batch by rank and gathers the results."""
from __future__ import annotations

import random
import socket
import time
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlengine.protocol import Batch


def free_port(host: str = "127.0.0.1") -> int:
    """A free port for the trainers' rendezvous, drawn below the kernel's ephemeral range: a port
    from that range (what binding port 0 returns) can be handed to one of Ray's outgoing
    connections between this check and the trainer's listen (seen: EADDRINUSE in init_distributed)."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, low - 1) if low > 20001 else 0
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port for the trainers' rendezvous below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@ray.remote(num_cpus=0)
def _probe_rendezvous() -> tuple[str, int]:
    host = ray.util.get_node_ip_address()
    return host, free_port(host)


def rendezvous(pg, bundle_index: int = 0) -> tuple[str, int]:
    """(address, free port) for a process group whose rank 0 is placed in `pg`'s bundle: probed on
    that bundle's node, so ranks on other nodes meet there (not at the driver's 127.0.0.1)."""
    if pg is None:
        return "127.0.0.1", free_port()
    return ray.get(_probe_rendezvous.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=bundle_index)).remote())


class WorkerGroup:
    """Actors of one role, placed one per bundle of `pg` (bundle_offset onwards).

    `call_split` shards the batch evenly (ranks get equal row counts, so collective ops under
    ZeRO-3 stay in lock-step) and concatenates results in rank order; `call_all` calls every rank
    with the same arguments.  Results are collected fail-fast: the first
    dead actor raises at once instead of after its peers time out in a collective.

    `max_restarts > 0` lets Ray restart a dead actor (same constructor arguments, same bundle);
    the call in flight still fails, and the caller decides whether to redo the work.
    """

    def __init__(self, name: str, cls: type, n: int, pg, bundle_offset: int, num_cpus: float, num_gpus: float,
                 init: Callable[[int], tuple[tuple, dict]], env: dict[str, str] | None = None,
                 custom: dict[str, float] | None = None, max_restarts: int = 0):
        self.name, self.max_restarts = name, max_restarts
        remote_cls = ray.remote(cls)
        self.actors = []
        for rank in range(n):
            args, kwargs = init(rank)
            opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "name": None,
                                    "max_restarts": max_restarts, "max_task_retries": 0,
                                    "resources": dict(custom or {}), "runtime_env": {"env_vars": env or {}}}
            if pg is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundle_offset + rank)
            self.actors.append(remote_cls.options(**opts).remote(*args, **kwargs))

    def __len__(self) -> int:
        return len(self.actors)

    def submit_all(self, method: str, *args, **kwargs) -> list:
        """Every rank, same arguments, object refs returned at once (a collective the caller
        overlaps with another role's work, e.g. a weight export with the engines' loads)."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call_all(self, method: str, *args, **kwargs) -> list:
        return get_all(self.submit_all(method, *args, **kwargs))

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every actor answers (after a restart: until its constructor has run)."""
        deadline = time.monotonic() + timeout_s
        for a in self.actors:
            while True:
                try:
                    ray.get(a.__ray_call__.remote(lambda self: None), timeout=max(1.0, deadline - time.monotonic()))
                    break
                except ray.exceptions.RayActorError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)

    def submit_split(self, method: str, batch: Batch, *args, **kwargs) -> list:
        """Like call_split, but returns the object refs at once (for overlapping two roles' work)."""
        shards = batch.split(len(self.actors))
        return [getattr(a, method).remote(s, *args, **kwargs) for a, s in zip(self.actors, shards)]

    def call_split(self, method: str, batch: Batch, *args, **kwargs) -> list:
        return get_all(self.submit_split(method, batch, *args, **kwargs))

    def map_batch(self, method: str, batch: Batch, *args, join: Callable[[list[Batch]], Batch] = Batch.concat,
                  **kwargs) -> Batch:
        """call_split, results joined by `join` (e.g. data.concat_rollouts for batches of different widths)."""
        return join(self.call_split(method, batch, *args, **kwargs))

    def placement(self) -> list[dict]:
        """Where each actor landed: node id / ip per rank (recorded in the run log)."""
        return ray.get([a.__ray_call__.remote(lambda self: {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": __import__("os").getpid()}) for a in self.actors])

    def kill(self, graceful: bool = True) -> None:
        """Stop the actors: their `shutdown` first when graceful (vLLM frees its engine), then ray.kill."""
        if graceful:
            refs = []
            for a in self.actors:
                try:
                    refs.append(a.__ray_call__.remote(lambda self: getattr(self, "shutdown", lambda: None)()))
                except Exception:
                    pass
            try:
                ray.wait(refs, num_returns=len(refs), timeout=30)
            except Exception:
                pass
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []


def get_all(refs: list) -> list:
    """ray.get in order, but raise as soon as any ref fails (a dead rank does not wait for its peers)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
    return ray.get(refs)
