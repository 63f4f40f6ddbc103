"""The rollout side of a weight sync, run inside every vLLM worker (each tensor-parallel rank)
through `LLM.collective_rpc`: these functions take the vLLM worker as their first argument and
are pickled by reference, so the worker process imports this module.

Each rank receives the full tensors (from shared memory, Ray objects, the process group or CUDA
IPC), checksums each as it arrives, streams them into vLLM's own loader (which keeps this rank's
shard), and then reports on what it holds: the checksums of what arrived and the float64 sums of
its readable engine tensors against the tensors they were loaded from.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from rlengine import faults
from rlengine.weight_sync.broadcast import SyncGroup, bucket_views, flat_buffers
from rlengine.weight_sync.shm import open_shared
from rlengine.weight_sync.verify import engine_check, hf_parts, tensor_checksum


def tp_rank(worker) -> int:
    from vllm.distributed import get_tensor_model_parallel_rank

    return get_tensor_model_parallel_rank()


def _device(worker) -> torch.device:
    return torch.device(getattr(worker.model_runner, "device", "cpu"))


def join(worker, host: str, port: int, base_rank: int, world: int, timeout_s: float, my_host: str,
         layout: list, engine: int, step: int) -> int:
    """Join the weight-sync group as rank base_rank + this worker's TP rank."""
    rank = base_rank + tp_rank(worker)
    if faults.armed("sync_join", step) and engine == 0 and tp_rank(worker) == 0:
        time.sleep(10 * timeout_s)  # a member that never joins (fault rehearsal)
    worker._rlengine_group = SyncGroup(host, port, rank, world, _device(worker), timeout_s, {}, my_host=my_host)
    # One layout per sync kind (full; with LoRA base+adapter and adapter, or merged).
    worker._rlengine_layout = {kind: [[(n, tuple(s), getattr(torch, d)) for n, s, d in b] for b in groups]
                               for kind, groups in layout.items()}
    return rank


def _arrivals(worker, spec: dict):
    """(name, full tensor) as the transport delivers them."""
    method = spec["method"]
    if method == "shm":
        named = open_shared(spec["payload"]["shm"])
        if named is None:
            raise FileNotFoundError("shared-memory weights not reachable from this process")
        yield from named
    elif method == "object_store":
        for b in spec["payload"]["buckets"]:
            yield from b["tensors"]
    elif method == "broadcast":
        group: SyncGroup = worker._rlengine_group
        for bucket in worker._rlengine_layout[spec.get("kind", "full")]:
            flats, views = flat_buffers(bucket, _device(worker))
            group.broadcast(list(flats.values()))
            yield from views
    elif method == "cuda_ipc":
        from rlengine.weight_sync.cuda_ipc import open_handle

        for bucket in spec["payload"]["ipc"]:
            flats = {getattr(torch, d): open_handle(h, _device(worker)) for d, h in bucket["handles"].items()}
            yield from bucket_views(flats, [(n, tuple(s), getattr(torch, d)) for n, s, d in bucket["layout"]])
    else:
        raise ValueError(f"unknown weight-sync method {method!r}")


def _readable(model) -> tuple[dict[str, torch.Tensor], dict]:
    packed = dict(getattr(model, "packed_modules_mapping", {}) or {})
    # The CPU build leaves repacked linear weights as empty tensors: nothing to read back there.
    # With LoRA enabled vLLM wraps each adaptable layer: its weight is `<layer>.base_layer.weight`.
    return {n.replace(".base_layer.", "."): p for n, p in model.named_parameters() if p.numel() > 0}, packed


def is_adapter_tensor(name: str) -> bool:
    """PEFT adapter tensors (lora_A/lora_B/lora_magnitude_vector); no HF base weight has `lora_`."""
    return ".lora_" in name


def _wanted(names, packed) -> set[str]:
    """The received tensors whose float64 sums the engine check needs."""
    return {p for n in names for p in hf_parts(n, packed)}


def receive(worker, spec: dict) -> dict:
    """Receive, checksum, load and verify one sync on this rank."""
    engine, rank, step = spec["engine"], tp_rank(worker), spec.get("step")
    kind = spec.get("kind", "full")
    adapter: dict[str, torch.Tensor] = {}
    model = worker.model_runner.model
    wanted = _wanted(*_readable(model))
    sums: dict[str, tuple[float, int]] = {}
    checks: dict[str, Future] = {}
    n_bytes = [0]
    # Host checksums run beside vLLM's loader (zlib releases the GIL; the loader only reads the
    # tensors); device checksums are queued on the device anyway.
    pool = ThreadPoolExecutor(max(1, spec.get("threads", 1)))

    def stream():
        for i, (name, t) in enumerate(_arrivals(worker, spec)):
            if i == 1:
                faults.maybe_kill("sync", step, engine + rank)
            t = faults.maybe_corrupt(engine, rank, step, name, t)
            checks[name] = pool.submit(tensor_checksum, t)
            n_bytes[0] += t.numel() * t.element_size()
            if is_adapter_tensor(name):
                adapter[name] = t  # written to the adapter directory below, before the next sync reuses t
                continue
            if name in wanted:
                sums[name] = (float(t.detach().double().sum()), t.numel())
            yield name, t

    t0 = time.perf_counter()
    try:
        if kind == "adapter":
            for _ in stream():
                raise RuntimeError("an adapter-only sync carried base weights")
        else:
            worker.model_runner.reload_weights(weights_iterator=stream(), is_checkpoint_format=True)
        checks = {name: f.result() for name, f in checks.items()}
        adapter_dir = None
        if adapter and rank == 0:
            from rlengine.lora import write_adapter

            adapter_dir = write_adapter(spec["adapter_dir"], adapter, spec["adapter_config"])
    finally:
        pool.shutdown(wait=True)
    load_s = time.perf_counter() - t0
    if kind == "adapter":  # the base is untouched: nothing in the engine to read back
        return {"rank": rank, "pid": os.getpid(), "checksums": checks, "bytes": n_bytes[0], "load_s": load_s,
                "verified": 0, "bad": [], "shards": {}, "adapter_dir": adapter_dir}
    held, packed = _readable(worker.model_runner.model)
    engine_sums = {n: (float(p.detach().double().sum()), p.numel()) for n, p in held.items()}
    report = engine_check(sums, engine_sums, packed)
    return {"rank": rank, "pid": os.getpid(), "checksums": checks, "bytes": n_bytes[0], "load_s": load_s,
            "adapter_dir": adapter_dir, **report}
