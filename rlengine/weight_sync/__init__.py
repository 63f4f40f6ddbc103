"""Trainer -> rollout weight sync: one design, several transports, every one verified.

The trainer gathers full parameters bucket by bucket (ZeRO-3 GatheredParameters) and rank 0 hands
each bucket to the transports the engines use (`sender.py`):

  shm           one flat, unlinked /dev/shm file on rank 0's host; engines there map it (`shm.py`)
  object_store  Ray objects, bucket by bucket (an engine whose host cannot map the file)
  broadcast     one process group of rank 0 and every vLLM worker, gloo on CPU, NCCL on GPU
                (`broadcast.py`): the path across nodes
  cuda_ipc      IPC handles of rank 0's GPU buffers for engines on the same GPUs (`cuda_ipc.py`)

Every TP rank of every engine receives the full tensors inside its vLLM worker (`receiver.py`),
checksums them where they live, streams them into vLLM's loader and reports what it holds; the
driver (`driver.py`) compares it all with what rank 0 sent (`verify.py`) and stops the run naming
the engine, rank and tensor on any mismatch.  On vLLM's CPU build the loaded linear weights are
repacked into oneDNN handles and cannot be read back: the loaded model is verified there by the
log-prob drift check (`sync/logprob_drift`, controller), every step.
"""
from rlengine.weight_sync.shm import SharedWeights, boot_id, open_shared
from rlengine.weight_sync.verify import (BUCKET_BYTES, SyncReport, WeightSyncError, bucketize, check_shards,
                                         checksum, compare, engine_check, tensor_checksum)

__all__ = ["BUCKET_BYTES", "EngineLost", "SharedWeights", "SyncReport", "WeightSync", "WeightSyncError", "boot_id",
           "bucketize", "check_shards", "checksum", "compare", "engine_check", "open_shared", "tensor_checksum"]


def __getattr__(name: str):
    # The driver imports Ray; the trainer side (sender, verify) must import without it, so that a
    # trainer runs on a bare GPU machine (bench/gpu_check.py).
    if name in ("EngineLost", "WeightSync"):
        from rlengine.weight_sync import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'rlengine.weight_sync' has no attribute {name!r}")
