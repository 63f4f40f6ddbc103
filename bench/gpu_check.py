"""The trainer on one GPU, driven directly: what a bare GPU machine can check without Ray or vLLM.

    python bench/gpu_check.py [--quick] [--out bench/results/gpu]

Needs torch, transformers, peft and DeepSpeed only (DeepSpeed installs from its sdist with no ops
prebuilt: `pip install --no-deps --no-build-isolation deepspeed-*.tar.gz`; the project's code runs
from the checkout).  The config is built from the schema's dataclasses, so Hydra is not needed.
On a Qwen2.5-1.5B-shaped model with random weights (bf16, gradient checkpointing) it measures:

- a bf16 update (ZeRO-2, one rank: what one rank of ZeRO-3 runs) at micro-batches 4/8/16 and
  widths 256-1024: peak allocated memory against the planner's prediction (rlengine.memory), step
  time and MFU = 6 N tokens / time / the measured bf16 matmul peak (the best of several shapes,
  taken before and after: a ceiling, so MFU <= 1);
- a ZeRO-3 gather and HF export (save_hf gathers every parameter as the weight sync does);
- bf16-vs-fp32 log-prob error on the model's own samples: the drift floor for
  `rollout.max_logprob_drift` in bf16;
- which attention ran (flash_attention_2, or sdpa when flash-attn is missing).

Writes gpu_check.json and gpu_check.md under --out.  `--device cpu --quick` runs the same code on
a tiny shape as a smoke test (tests/bench/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QWEN_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, tie_word_embeddings=True, max_position_embeddings=2048)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(device: str, repeats: int = 5) -> float:
    """Best bf16 (GPU) / fp32 (CPU) matmul rate over several square shapes."""
    dtype, sizes = (torch.bfloat16, (4096, 8192, 12288)) if device == "cuda" else (torch.float32, (512, 1024))
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        torch.mm(a, b)
        _sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b)
            _sync(device)
            best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
        del a, b
    return best


def build_model(shape: dict, out: Path, tokenizer_from: str) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    cfg = Qwen2Config(**shape, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def config_for(model_dir: Path, device: str, micro_batch: int, zero_stage: int = 3, dtype: str = "bfloat16"):
    from rlengine.config import (AlgorithmConfig, DataConfig, EvalConfig, ModelConfig, ResourcesConfig, RootConfig,
                                 TrainerConfig, freeze)
    from rlengine.plan import validate

    cfg = RootConfig(
        recipe="gpu_check",
        model=ModelConfig(path=str(model_dir), dtype=dtype if device == "cuda" else "float32",
                          attn_implementation="flash_attention_2", gradient_checkpointing=True),
        data=DataConfig(prompts_per_step=micro_batch // 4),
        algorithm=AlgorithmConfig(name="grpo", group_size=4, kl_coef=0.0),
        trainer=TrainerConfig(micro_batch_size=micro_batch, zero_stage=zero_stage, total_steps=10, lr=1e-6),
        eval=EvalConfig(before=False, after=False),
        resources=ResourcesConfig(device=device, gpus_per_trainer=1.0 if device == "cuda" else 0.0))
    freeze(cfg)
    return cfg, validate(cfg)


def batch_of(rows: int, width: int, vocab: int, prompt: int = 64):
    from rlengine.layout import pack_sequences
    from rlengine.protocol import Batch

    g = torch.Generator().manual_seed(rows * 7919 + width)
    R = width - prompt
    t = pack_sequences([torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(rows)],
                       [torch.randint(3, vocab, (R,), generator=g).tolist() for _ in range(rows)], None, pad_id=0)
    adv = torch.randn(rows, generator=g)[:, None] * t["response_mask"]
    return Batch(tensors={**t, "advantages": adv, "rollout_logp": torch.zeros_like(t["response_mask"])})


def trainer(cfg, plan, model_dir: Path):
    from rlengine.workers.group import free_port
    from rlengine.workers.trainer import TrainerWorker

    os.environ.setdefault("LOCAL_RANK", "0")
    return TrainerWorker(cfg, plan, str(model_dir), 0, 1, "127.0.0.1", free_port())


def _peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int | None:
    return torch.cuda.max_memory_allocated() if device == "cuda" else None


def update_grid(args, model_dir: Path, shape: dict, peak_gflops: float) -> list[dict]:
    from transformers import AutoConfig

    n_params = None
    rows = []
    mbs, widths = ((4,), (256,)) if args.quick else ((4, 8, 16), (256, 512, 1024))
    cfg, plan = config_for(model_dir, args.device, max(mbs))
    w = trainer(cfg, plan, model_dir)
    n_params = sum(p.numel() for p in w.module.parameters())
    model_config = AutoConfig.from_pretrained(model_dir)
    try:
        from rlengine.memory import predict_trainer_peak
    except ImportError:
        predict_trainer_peak = None
    for mb in mbs:
        for width in widths:
            batch = batch_of(mb, width, shape["vocab_size"])
            w.update(batch)  # warm-up: allocator, kernels
            _sync(args.device)
            _peak_reset(args.device)
            times = []
            for _ in range(1 if args.quick else 3):
                t0 = time.perf_counter()
                w.update(batch)
                _sync(args.device)
                times.append(time.perf_counter() - t0)
            peak = _peak(args.device)
            tokens = mb * width
            sec = min(times)
            row = {"micro_batch": mb, "width": width, "tokens": tokens, "update_s": sec,
                   "tokens_per_s": tokens / sec, "mfu": 6 * n_params * tokens / sec / (peak_gflops * 1e9),
                   "peak_allocated_bytes": peak}
            if predict_trainer_peak is not None:
                cfg_mb, _ = config_for(model_dir, args.device, mb)
                pred = predict_trainer_peak(cfg_mb, model_config, mb, width)
                row["predicted_bytes"] = pred
                if peak:
                    row["measured_over_predicted"] = peak / pred["total"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    attn = getattr(w.module.config, "_attn_implementation", None)
    del w
    _peak_reset(args.device)
    return rows, n_params, attn


def zero3_export(args, model_dir: Path, out: Path) -> dict:
    cfg, plan = config_for(model_dir, args.device, 4)
    plan = dataclasses.replace(plan, zero_stage=3)  # one rank: the Plan would run stage 2
    w = trainer(cfg, plan, model_dir)
    sharded = all(hasattr(p, "ds_tensor") for p in w.module.parameters())
    t0 = time.perf_counter()
    sums = w.gathered_checksums()
    gather_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = w.save_hf(str(out / "export"), str(model_dir))
    export_s = time.perf_counter() - t0
    from safetensors.torch import load_file

    written = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        written.update(load_file(str(f)))
    from rlengine.weight_sync import checksum

    same = all(checksum([(n, t)])[n] == sums[n] for n, t in written.items() if n in sums)
    del w
    _peak_reset(args.device)
    return {"zero3_partitioned": sharded, "gather_s": gather_s, "export_s": export_s, "tensors": len(written),
            "export_matches_gathered": same}


def bf16_logprob_error(args, model_dir: Path, shape: dict) -> dict:
    """mean and max |logp_bf16 - logp_fp32| over 64 tokens the fp32 model sampled itself."""
    from transformers import AutoModelForCausalLM

    from rlengine.layout import pack_sequences
    from rlengine.modeling import response_logprobs

    dev = args.device
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").to(dev)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, shape["vocab_size"], (8, 32), generator=g).to(dev)
    with torch.no_grad():
        out = fp32.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=64, do_sample=True,
                            top_k=0, pad_token_id=0)
    t = pack_sequences(prompts.tolist(), out[:, 32:].tolist(), None, pad_id=0)
    t = {k: v.to(dev) for k, v in t.items()}
    with torch.no_grad():
        ref = response_logprobs(fp32, t)
        bf16 = fp32.to(torch.bfloat16)
        low = response_logprobs(bf16, t)
    d = (low - ref).abs()[t["response_mask"].bool()]
    del fp32, bf16
    _peak_reset(dev)
    return {"mean_abs": float(d.mean()), "max_abs": float(d.max()), "tokens": int(d.numel())}


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    g = 1024**3
    lines = [f"# GPU check — {result['date']}", "", f"Device: {result['device_name']}, torch {result['torch']}, "
             f"DeepSpeed {result['deepspeed']}; attention: {result['attention']}; model: {result['shape']} "
             f"({result['params'] / 1e9:.2f}B parameters, bf16, gradient checkpointing). bf16 matmul peak "
             f"(the best of several shapes, before and after): {result['matmul_peak_gflops']:.0f} GFLOP/s.", "",
             "| micro-batch | width | update s | tokens/s | MFU | peak GiB | predicted GiB | measured/predicted |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["update"]:
        pred, ratio = r.get("predicted_bytes", {}).get("total"), r.get("measured_over_predicted", float("nan"))
        lines.append(f"| {r['micro_batch']} | {r['width']} | {r['update_s']:.3f} | {r['tokens_per_s']:.0f} | "
                     f"{r['mfu']:.1%} | {(r['peak_allocated_bytes'] or 0) / g:.2f} | "
                     f"{pred / g if pred else float('nan'):.2f} | {ratio:.2f} |")
    z, e = result["zero3"], result["bf16_logprob_error"]
    lines += ["", f"ZeRO-3 (one rank, partitioned: {z['zero3_partitioned']}): gather {z['gather_s']:.2f} s, HF export "
              f"{z['export_s']:.2f} s, {z['tensors']} tensors, export equals the gathered weights: "
              f"{z['export_matches_gathered']}.", "",
              f"bf16 vs fp32 log-probs on {e['tokens']} sampled tokens: mean |Δ| {e['mean_abs']:.4f}, max "
              f"{e['max_abs']:.4f}: `rollout.max_logprob_drift` must sit above the mean in bf16.", ""]
    (out / "gpu_check.md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one micro-batch and width")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu"))
    ap.add_argument("--work", default="/tmp/rlengine-gpu-check")
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", args.device)
    from rlengine import tiny

    shape = QWEN_1_5B if args.device == "cuda" and not os.environ.get("GPU_CHECK_TINY") else TINY
    work = Path(args.work)
    model_dir = build_model(shape, work / ("qwen1.5b" if shape is QWEN_1_5B else "tiny"),
                            tiny.resolve_path("tiny:base"))
    import deepspeed

    before = matmul_peak_gflops(args.device)
    update, n_params, attn = update_grid(args, model_dir, shape, before)
    zero3 = zero3_export(args, model_dir, work)
    err = bf16_logprob_error(args, model_dir, shape)
    peak = max(before, matmul_peak_gflops(args.device))
    for r in update:  # over the run's ceiling
        r["mfu"] = 6 * n_params * r["tokens"] / r["update_s"] / (peak * 1e9)
        assert r["mfu"] <= 1, f"MFU {r['mfu']:.2f} > 1: the FLOP count or the timing is wrong"
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
              "deepspeed": deepspeed.__version__,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "shape": "Qwen2.5-1.5B" if shape is QWEN_1_5B else "tiny", "params": n_params, "attention": attn,
              "matmul_peak_gflops": peak, "update": update, "zero3": zero3, "bf16_logprob_error": err}
    write(Path(args.out), result)
    print(f"wrote {Path(args.out) / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
