"""The memory planner (rlengine/memory.py, rlengine/memory_model.py): parameter counts from
config.json alone, the fine-tuning and GRPO seed tables, refusal before Ray, the CLI."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlengine import memory, memory_model as mm
from rlengine.compose import load_config
from rlengine.errors import ConfigError
from rlengine.memory_model import GiB

REPO = Path(__file__).resolve().parent.parent
LLAMA, QWEN7 = "meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-7B"


def states_gb(path: str, *overrides: str, precision: str = "auto") -> tuple[float, float, dict]:
    """(GB of one rank's model states, n in billions, bytes by kind) of a bf16 GPU fine-tune on one rank."""
    cfg, plan = load_config("sft_tiny", ["resources.device=cuda", "resources.gpus_per_trainer=1",
                                         "model.dtype=bfloat16", "trainer.world_size=1", f"model.path={path}",
                                         *overrides])
    shape = memory.model_shape(path)
    dev, host = mm.trainer_states(shape, memory.scenario(cfg, plan, precision))
    assert not host
    return sum(dev.values()) / 1e9, shape.n_params() / 1e9, dev


# -- parameter counts: the planner's arithmetic equals the real modules' numel -------------------

def _numel_meta(config, cls_name: str = "AutoModelForCausalLM") -> int:
    import torch
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, cls_name).from_config(config)
    return sum(p.numel() for p in model.parameters())


def test_param_count_tiny_models():
    from transformers import AutoConfig

    from rlengine import tiny

    config = AutoConfig.from_pretrained(tiny.resolve_path("tiny:base"))
    shape = mm.ModelShape.from_hf_config(config)
    assert shape.n_params() == _numel_meta(config) == 866_688
    config.num_labels = 1  # the critic's value head (bias) and the reward model's score head (none)
    assert shape.n_params("value") == _numel_meta(config, "AutoModelForTokenClassification")
    assert shape.n_params("score") == _numel_meta(config, "AutoModelForSequenceClassification")


@pytest.mark.parametrize("size", ["30m", "100m", "500m"])
def test_param_count_bench_sizes(size):
    from transformers import AutoConfig, Qwen2Config

    from bench.models import SIZES
    from rlengine import tiny

    vocab = AutoConfig.from_pretrained(tiny.resolve_path("tiny:base")).vocab_size
    config = Qwen2Config(vocab_size=vocab, tie_word_embeddings=False, **SIZES[size])
    assert mm.ModelShape.from_hf_config(config).n_params() == _numel_meta(config)


@pytest.mark.parametrize("name", sorted(p.name for p in memory.CONFIGS.iterdir()))
def test_param_count_shipped_configs(name):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(memory.CONFIGS / name)
    assert mm.ModelShape.from_hf_config(config).n_params() == _numel_meta(config)


def test_published_sizes_and_kv():
    # Published parameter counts: Qwen2.5-7B 7.62B (untied, V 152064), Llama-2-7B 6.74B.
    assert memory.model_shape(QWEN7).n_params() == 7_615_616_512
    assert memory.model_shape(LLAMA).n_params() == 6_738_415_616
    # KV bytes/token = 2 x layers x kv_heads x head_dim x 2 (bf16): 2*28*4*128*2; TP 2 halves the heads.
    assert memory.model_shape(QWEN7).kv_bytes_per_token(2) == 57_344
    assert memory.model_shape(QWEN7).kv_bytes_per_token(2, tp=2) == 28_672
    # Fewer KV heads than ranks: each rank keeps a replica.
    assert memory.model_shape("Qwen/Qwen2.5-1.5B").kv_bytes_per_token(2, tp=4) == 2 * 28 * 1 * 128 * 2


# -- seed table (a): GB of model states per n billion parameters, one rank ------------------------
# Scenario: recipe sft_tiny, resources.device=cuda, model.dtype=bfloat16, trainer.world_size=1 (ZeRO-2
# on one rank).  AMP is what rlengine runs for bf16: DeepSpeed's bf16 mode with fp32 master weights
# and trainer.grad_accum_dtype=float32 (the default).  Pure bf16 (bf16 master, grads and Adam states)
# is the planner's precision="pure_bf16" (DeepSpeed's bf16_master_weights_and_grads +
# bf16_optimizer_states; rlengine does not set them).  LoRA: r=8 on q_proj, v_proj (PEFT's default
# targets for Llama and Qwen2); QLoRA: the same on an nf4 double-quantized base.

@pytest.mark.parametrize("path", [LLAMA, QWEN7])
@pytest.mark.parametrize("mode,rule,overrides,precision", [
    ("full_amp", 18.0, [], "auto"),
    ("full_pure_bf16", 8.0, [], "pure_bf16"),
    ("lora", 2.0, ["model.lora.r=8", "model.lora.target_modules=[q_proj,v_proj]"], "auto"),
])
def test_seed_table_finetuning(path, mode, rule, overrides, precision):
    gb, n, _ = states_gb(path, *overrides, precision=precision)
    assert gb == pytest.approx(rule * n, rel=0.2), f"{path} {mode}: {gb:.2f} GB vs {rule}n = {rule * n:.2f} GB"


QLORA = ["model.lora.r=8", "model.lora.target_modules=[q_proj,v_proj]", "model.quantization=nf4",
         "model.double_quant=true"]


def test_seed_table_qlora_llama():
    gb, n, _ = states_gb(LLAMA, *QLORA)
    assert gb == pytest.approx(0.5 * n, rel=0.2), f"{gb:.2f} GB vs n/2 = {0.5 * n:.2f} GB"


def test_seed_table_qlora_big_vocabulary_sits_above_half_n():
    # bitsandbytes quantizes the decoder's linear layers only: Qwen2.5-7B's untied embedding and
    # lm_head (2 x 152064 x 3584 = 1.09B parameters) stay bf16, 2.18 GB that n/2 does not count
    # (Llama-2-7B's V = 32000 costs it 0.52 GB).  Without them the rule holds within 20%.
    gb, n, dev = states_gb(QWEN7, *QLORA)
    shape = memory.model_shape(QWEN7)
    c = shape.counts()
    unquantized = 2 * (c["embed"] + c["head"]) / 1e9
    assert gb > 1.2 * 0.5 * n
    assert gb - unquantized == pytest.approx(0.5 * c["linear"] / 1e9, rel=0.2)


# -- seed table (b): the fewest GPUs of a size that run full GRPO in the hybrid layout ------------
# Scenario (recipe grpo_qwen_math): no reference (algorithm.kl_coef=0), colocated trainer and vLLM
# (resources.colocate=true) with vLLM asleep at level 1 during the update and
# gpu_memory_utilization 0.35, ZeRO-3 over N ranks (one rank: ZeRO-2), gradient checkpointing,
# micro-batch 4 of 512 prompt + 1024 response tokens, no offload.  The planner searches N = 1, 2,
# 4, ... with vLLM's TP the smallest that holds its weights and one 2048-token sequence's KV.
# Usable memory: 22.5 GiB for a "24 GB" GPU, 39.5 for "40 GB", 79.2 for "80 GB".

SEED_GRPO = ["algorithm.kl_coef=0", "resources.colocate=true", "rollout.gpu_memory_utilization=0.35",
             "rollout.sleep_level=1", "model.gradient_checkpointing=true", "trainer.micro_batch_size=4",
             "trainer.zero_stage=3", "trainer.offload_optimizer=false", "trainer.offload_params=false",
             "trainer.offload_during_rollout=false", "data.max_prompt_tokens=512", "rollout.max_new_tokens=1024",
             "rollout.max_model_len=2048", "trainer.world_size=1", "rollout.num_workers=1",
             "rollout.tensor_parallel_size=1"]


def seed_grpo(size: str, gib: float, precision: str) -> dict:
    cfg, plan = load_config("grpo_qwen_math", [*SEED_GRPO, f"model.path=Qwen/Qwen2.5-{size}-Instruct"])
    return memory.min_devices(memory.scenario(cfg, plan, precision), memory.shapes_of(cfg), int(gib * GiB))


@pytest.mark.parametrize("size,gib,precision,want", [
    ("1.5B", 22.5, "pure_bf16", 1), ("1.5B", 22.5, "auto", 2),
    ("3B", 39.5, "pure_bf16", 1), ("3B", 39.5, "auto", 4),
    ("7B", 39.5, "pure_bf16", 4), ("7B", 39.5, "auto", 8),
    ("32B", 79.2, "pure_bf16", 8), ("32B", 79.2, "auto", 16),
])
def test_seed_table_grpo_devices(size, gib, precision, want):
    got = seed_grpo(size, gib, precision)
    assert got is not None and got["devices"] == want, got and got["per_device"]
    # Both phases fit on every device of that layout: the update too (activations with
    # checkpointing at micro-batch 4, the logits chunk, the optimizer step) with vLLM asleep.
    for g in got["per_device"]:
        assert g["phases"]["train"] <= g["capacity"] and g["phases"]["rollout"] <= g["capacity"]


# -- refusal before Ray: grpo_qwen_math on 2 x 24 GB, layout pinned ------------------------------

PINNED = ["trainer.world_size=2", "rollout.num_workers=2", "rollout.tensor_parallel_size=1", "resources.colocate=true",
          "reference.placement=trainer", "trainer.zero_stage=3", "trainer.offload_optimizer=false",
          "trainer.offload_params=false", "trainer.offload_during_rollout=false", "rollout.sleep_level=1",
          "rollout.gpu_memory_utilization=0.6", "trainer.micro_batch_size=16", "model.gradient_checkpointing=true"]


def test_refused_on_small_gpus_then_fits_with_the_suggestion(monkeypatch):
    from rlengine import preflight

    # As a driver without a GPU with RLENGINE_GPU_MEMORY_GIB=22.5 sees it (test_gpu_capacity_from_env).
    monkeypatch.setattr(memory, "gpu_capacity", lambda: (int(22.5 * GiB), memory.ENV_GPU_GIB))
    cfg, plan = load_config("grpo_qwen_math", PINNED)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        preflight.check_memory(cfg, plan)
    assert time.perf_counter() - t0 < 30
    msg = str(e.value)
    assert "trainer needs" in msg and "GiB/GPU" in msg and "22.5 GiB GPUs" in msg and "micro-batch 16" in msg
    assert "trainer.offload_optimizer=true" in msg and "trainer.world_size>=4" in msg
    assert e.value.key == "trainer.offload_optimizer"
    fixes = msg.split(": set ", 1)[1].split(" or ")
    for fix in fixes:
        key, value = fix.replace(">=", "=").split("=")
        cfg2, plan2 = load_config("grpo_qwen_math", PINNED + [f"{key}={value}"])
        assert memory.check_fits(cfg2, plan2)["fits"], fix


def test_gpu_check_skipped_without_device_memory(monkeypatch, caplog):
    monkeypatch.setattr(memory, "gpu_capacity", lambda: (None, "no GPU visible"))
    cfg, plan = load_config("grpo_qwen_math", PINNED)
    with caplog.at_level("INFO", logger="rlengine"):
        assert memory.check_fits(cfg, plan) is None
    assert "memory check skipped" in caplog.text


def test_gpu_capacity_from_env(monkeypatch):
    import os

    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("a GPU is visible: torch.cuda answers first")
    monkeypatch.setenv(memory.ENV_GPU_GIB, "39.5")
    assert memory.gpu_capacity() == (int(39.5 * GiB), memory.ENV_GPU_GIB)


def test_cpu_runs_are_never_refused(caplog):
    cfg, plan = load_config("grpo_tiny", [])
    with caplog.at_level("WARNING", logger="rlengine"):
        ev = memory.check_fits(cfg, plan, capacity=1)  # a 1-byte machine: warned, not refused
    assert not ev["fits"] and "host memory" in caplog.text


def test_predict_trainer_peak_gpu():
    cfg, plan = load_config("grpo_qwen_math", PINNED)
    shape = memory.model_shape(cfg.model.path)
    p = memory.predict_trainer_peak(cfg, shape, micro_batch=4, width=1536, plan=plan)
    b = p["bytes"]
    # ZeRO-3 over 2 ranks: each holds half of the AMP states (2 + 4 + 4 + 8 B per parameter).
    assert b["parameters"] + b["master"] + b["gradients"] + b["optimizer"] == 18 * shape.n_params() // 2
    assert b["logits"] == cfg.trainer.logits_chunk_tokens * shape.vocab * 4 * 3  # min(chunk, 4 x 1024 tokens)
    working = {k: v for k, v in b.items() if k not in ("parameters", "master", "gradients", "optimizer", "overhead")}
    assert p["total"] == p["resident"] + mm.trainer_peak(working, "cuda") + mm.GPU_PROCESS_OVERHEAD
    smaller = memory.predict_trainer_peak(cfg, shape, micro_batch=1, width=1536, plan=plan)
    assert smaller["bytes"]["activations"] * 4 == b["activations"]


# -- the CLI -------------------------------------------------------------------------------------

def test_cli_json(capsys):
    assert memory.main(["recipe=grpo_tiny", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for role in ("trainer", "rollout", "reference"):
        r = rep["roles"][role]
        assert set(r) >= {"bytes", "total", "devices"} and r["total"] > 0
    assert rep["roles"]["trainer"]["bytes"]["optimizer"] == 8 * rep["model"]["params"]
    assert rep["per_device"][0]["fits"] and rep["placement"][0].startswith("# placement")
    assert "devices_needed" in rep


def test_teacher_is_a_frozen_role_on_devices_of_its_own(capsys):
    """distill_qwen: the 7.6B teacher's bf16 weights on each of its two actors, beside the 1.5B student."""
    assert memory.main(["recipe=distill_qwen", "--json", "--gpu-memory-gib", "80"]) == 0
    rep = json.loads(capsys.readouterr().out)
    t = rep["roles"]["teacher"]
    assert t["devices"] == 2 and 7.5e9 * 2 < t["bytes"]["weights"] < 7.7e9 * 2 and "optimizer" not in t["bytes"]
    assert [g["count"] for g in rep["per_device"] if g["roles"] == ["teacher"]] == [2]
    assert rep["minimal"]["devices"] >= 3  # the teacher's 2 beside the hybrid trainer + engine
    # top_k 0 ships the whole [tokens, V] distribution: it shows in the plan.
    assert memory.main(["recipe=distill_qwen", "teacher.top_k=0", "--json", "--gpu-memory-gib", "80"]) == 0
    assert json.loads(capsys.readouterr().out)["roles"]["teacher"]["bytes"]["scores"] > 1e9


def test_cli_text_gpu_recipe():
    out = subprocess.run([sys.executable, "-m", "rlengine.plan", "recipe=grpo_qwen_math", *PINNED,
                          "--gpu-memory-gib", "22.5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr  # does not fit: exit 1, the plan still printed
    assert "DOES NOT FIT" in out.stdout and "minimal hybrid layout" in out.stdout and "KV cache" in out.stdout


# -- measured vs predicted on CPU (bench/plan_memory.py) -----------------------------------------

@pytest.mark.acceptance
def test_cpu_prediction_matches_measured_peaks(tmp_path):
    """The trainer actor's peak RSS at tiny, 31.8M and 99.6M parameters within 25% (minutes)."""
    out = subprocess.run([sys.executable, "bench/plan_memory.py", "--results", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = json.loads((tmp_path / "plan_memory.json").read_text())["rows"]
    assert [r["size"] for r in rows] == ["tiny", "30m", "100m"]
    for r in rows:
        assert abs(r["error"]) <= 0.25, r
        assert r["params_planner"] == r["params"]
