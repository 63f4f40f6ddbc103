"""The DeepSpeed configuration a recipe implies: ZeRO stage, precision, buckets and offload.

Sizes default as DeepSpeed and transformers' "auto" values do, from the model's hidden size h
(reduce bucket h*h, ZeRO-3 prefetch bucket 0.9*h*h, persistence threshold 10*h), floored so that
a tiny model neither issues thousands of tiny collectives nor partitions its norms and biases.
"""
from __future__ import annotations

import logging

from rlengine.config import RootConfig
from rlengine.plan import Plan

log = logging.getLogger("rlengine")

# DeepSpeed's dtype names for data_types.grad_accum_dtype.
_DS_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_warned: set = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg)


def bucket_sizes(cfg: RootConfig, hidden_size: int | None) -> dict:
    """reduce_bucket_size, stage3_prefetch_bucket_size and stage3_param_persistence_threshold in
    elements: the recipe's values, else sized from the hidden size."""
    t, h = cfg.trainer, hidden_size or 1024
    return {
        "reduce_bucket_size": t.reduce_bucket_size or max(h * h, 1_000_000),
        "stage3_prefetch_bucket_size": t.stage3_prefetch_bucket_size or max(int(0.9 * h * h), 1_000_000),
        # Tensors below this stay replicated on every rank (norms, biases): gathering them costs
        # more in latency than their memory is worth.
        "stage3_param_persistence_threshold": (t.stage3_param_persistence_threshold
                                               if t.stage3_param_persistence_threshold is not None
                                               else max(10 * h, 10_000)),
    }


def offload_enabled(cfg: RootConfig) -> tuple[bool, bool]:
    """(optimizer, params) offload to host memory: GPU runs only, where a CPU run already keeps
    every state in host memory (logged once, not an error, so one recipe serves both)."""
    t = cfg.trainer
    if cfg.resources.device != "cuda":
        if t.offload_optimizer or t.offload_params:
            _warn_once("offload", "trainer.offload_optimizer/offload_params skipped: a CPU run already holds "
                                  "its optimizer states and parameters in host memory")
        return False, False
    return t.offload_optimizer, t.offload_params


def deepspeed_config(cfg: RootConfig, plan: Plan, hidden_size: int | None = None) -> dict:
    t, gpu = cfg.trainer, cfg.resources.device == "cuda"
    buckets = bucket_sizes(cfg, hidden_size)
    zero = {
        "stage": plan.zero_stage,
        # Overlapping the gradient reduction with the backward pays on NCCL; gloo's collectives run
        # on the compute threads, so on CPU it only adds buffers.
        "overlap_comm": t.overlap_comm if t.overlap_comm is not None else gpu and t.world_size > 1,
        "contiguous_gradients": True,
        "reduce_bucket_size": buckets["reduce_bucket_size"],
    }
    if plan.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=buckets["stage3_prefetch_bucket_size"],
                    stage3_param_persistence_threshold=buckets["stage3_param_persistence_threshold"],
                    stage3_max_live_parameters=t.stage3_max_live_parameters,
                    stage3_max_reuse_distance=t.stage3_max_reuse_distance)
    offload_optim, offload_params = offload_enabled(cfg)
    if offload_optim:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    out = {
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.micro_batches_per_minibatch,
        "train_batch_size": plan.micro_batch_size * plan.micro_batches_per_minibatch * t.world_size,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "zero_allow_untested_optimizer": True,
        # The trainer's optimizer is torch's (or bitsandbytes'): with offload DeepSpeed would insist
        # on its own CPU Adam, whose extension builds only where a compiler and CUDA headers are.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.model.dtype != "float32" and t.grad_accum_dtype is not None:
        # bf16 weights, gradients accumulated across micro-batches in fp32 (DeepSpeed's default
        # follows the model dtype: bf16 sums lose the small micro-batches' contributions).
        out["data_types"] = {"grad_accum_dtype": _DS_DTYPE[t.grad_accum_dtype]}
    return out
