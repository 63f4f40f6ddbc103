"""The DeepSpeed config a recipe implies (rlengine/zero.py): pure dictionaries, no engine."""
import dataclasses

from rlengine.main import load_config
from rlengine.zero import bucket_sizes, deepspeed_config


def _cfg(*overrides):
    return load_config("grpo_tiny", list(overrides))


def test_bf16_accumulates_gradients_in_fp32_unless_told_otherwise():
    cfg, plan = _cfg("model.dtype=bfloat16")
    ds = deepspeed_config(cfg, plan, 64)
    assert ds["bf16"]["enabled"] and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    cfg, plan = _cfg("model.dtype=bfloat16", "trainer.grad_accum_dtype=null")
    assert "data_types" not in deepspeed_config(cfg, plan, 64)
    cfg, plan = _cfg()  # fp32 weights: nothing to widen
    assert "data_types" not in deepspeed_config(cfg, plan, 64)


def test_buckets_follow_the_hidden_size_with_floors_and_overrides():
    cfg, _ = _cfg()
    assert bucket_sizes(cfg, 1536) == {"reduce_bucket_size": 1536 * 1536,
                                       "stage3_prefetch_bucket_size": int(0.9 * 1536 * 1536),
                                       "stage3_param_persistence_threshold": 15360}
    # A tiny model: floors keep collectives few and its norms replicated.
    assert bucket_sizes(cfg, 64) == {"reduce_bucket_size": 1_000_000, "stage3_prefetch_bucket_size": 1_000_000,
                                     "stage3_param_persistence_threshold": 10_000}
    cfg, _ = _cfg("trainer.reduce_bucket_size=123", "trainer.stage3_param_persistence_threshold=0")
    b = bucket_sizes(cfg, 4096)
    assert b["reduce_bucket_size"] == 123 and b["stage3_param_persistence_threshold"] == 0


def test_zero3_keys_and_overlap_default():
    cfg, plan = _cfg("trainer.world_size=2", "data.prompts_per_step=8")
    z = deepspeed_config(cfg, plan, 1024)["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_max_live_parameters"] == 1_000_000_000
    assert z["overlap_comm"] is False  # CPU (gloo): nothing to overlap
    cfg, plan = _cfg("trainer.world_size=2", "data.prompts_per_step=8", "trainer.overlap_comm=true")
    assert deepspeed_config(cfg, plan, 1024)["zero_optimization"]["overlap_comm"] is True


def test_offload_only_on_gpus():
    cfg, plan = _cfg("trainer.world_size=2", "data.prompts_per_step=8", "trainer.offload_optimizer=true",
                     "trainer.offload_params=true")
    z = deepspeed_config(cfg, plan, 64)["zero_optimization"]
    assert "offload_optimizer" not in z and "offload_param" not in z  # CPU: states already in host memory
    gpu = dataclasses.replace(cfg, resources=dataclasses.replace(cfg.resources, device="cuda"))
    z = deepspeed_config(gpu, plan, 64)["zero_optimization"]
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    gpu = dataclasses.replace(gpu, trainer=dataclasses.replace(gpu.trainer, world_size=4))
    assert deepspeed_config(gpu, plan, 64)["zero_optimization"]["overlap_comm"] is True
