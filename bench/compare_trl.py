"""rlengine vs TRL GRPOTrainer, side by side on this machine; writes bench/results/{raw,summary}.json,
REPORT.md and step_time.png.

    .venv/bin/python bench/compare_trl.py                      # tiny, 30m, 100m; fixed and natural length
    .venv/bin/python bench/compare_trl.py --sizes tiny --pairs 1 --steps 2   # a quick look
    .venv/bin/python bench/compare_trl.py --lora 16 --sizes 30m --results bench/results/lora_trl  # LoRA on both

Identical work for both engines: the same locally built model, the same prompts in the same
order (no shuffling), G samples per prompt, the same max new tokens (EOS suppressed unless
--natural), KL coefficient 0, one update per batch (ppo_epochs = minibatches = 1), token-mean
loss, the same micro-batch size, fp32, 2 threads. Every figure comes from fresh processes, the
engines alternating A B B A ..., warm-up steps dropped. A parity check (bench/parity.py) runs
first for each size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
TRL_DIR = BENCH / ".trl"
TRL_VERSION = "1.16.0"
sys.path.insert(0, str(REPO))

PHASES = ("rollout", "reward", "ref", "old_logp", "adv", "update", "sync")


def ensure_trl() -> None:
    """TRL goes into bench/.trl (on PYTHONPATH for the TRL runs only): its requirements are all met by
    rlengine's environment (same torch, transformers, accelerate), so both engines run the same kernels."""
    if (TRL_DIR / "trl" / "__init__.py").exists():
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TRL_DIR),
                    f"trl=={TRL_VERSION}"], check=True)


def matmul_gflops(threads: int = 2, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """This machine's matmul throughput: fp32 on 2 CPU threads, or bf16 on the GPU (the limit for MFU)."""
    import torch

    if device == "cuda":
        n = 8192
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))

        def mm():
            for _ in range(10):
                torch.mm(a, b)
            torch.cuda.synchronize()

        mm()
        return 10 * 2 * n**3 / min(_timed(mm) for _ in range(repeats)) / 1e9
    torch.set_num_threads(threads)
    best = 0.0
    # The ceiling MFU divides by: the best of several shapes and repeats (one shape's rate dips with
    # the cache and the machine's state; bench/report.py also takes the run's highest).
    for m in (n // 2, n, n + n // 2):
        a, b = torch.randn(m, m), torch.randn(m, m)
        torch.mm(a, b)
        best = max(best, 2 * m**3 / min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats)) / 1e9)
    return best


def memcpy_gbps(n_bytes: int, repeats: int = 5) -> float:
    """Bandwidth of a plain in-process copy of `n_bytes` (the weight-sync baseline)."""
    import torch

    src = torch.empty(n_bytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return n_bytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_prompts(path: Path, n: int) -> Path:
    """n prompts of the tiny task with two-digit operands (every prompt the same token length)."""
    from rlengine.data import load_rows

    rows = [r for r in load_rows("tiny:train", None) if re.fullmatch(r"Q: \d\d\+\d\d=\? A:", r["prompt"])][:n]
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    return path


def warmup_steps(a, natural: bool) -> int:
    """Natural-length steps each bring new shapes: one more warm-up step for both engines covers a
    compiled trainer's single dynamic-shape recompile (trainer.compile)."""
    return a.warmup + (1 if natural else 0)


def run_rlengine(model: Path, prompts: Path, a, tokens: int, natural: bool, run_dir: Path) -> dict:
    warm = warmup_steps(a, natural)
    args = ["recipe=grpo_tiny", f"model.path={model}", f"data.train_path={prompts}", f"data.test_path={prompts}",
            "data.shuffle=false", f"data.prompts_per_step={a.prompts}", f"algorithm.group_size={a.group_size}",
            f"rollout.max_new_tokens={tokens}", f"rollout.ignore_eos={str(not natural).lower()}",
            f"rollout.max_model_len={tokens + 64}", "algorithm.kl_coef=0", "algorithm.ppo_epochs=1",
            "algorithm.minibatches=1", "algorithm.loss_agg=token-mean", f"trainer.micro_batch_size={a.micro_batch}",
            "trainer.lr=1e-5", f"trainer.total_steps={warm + a.steps}", "eval.before=false", "eval.after=false",
            "checkpoint.save_hf=false", "tracking.progress_bar=false", "tracking.tensorboard=false",
            "rollout.kv_cache_gib=2", f"run_dir={run_dir}", "resume=never"]
    if a.rollout_bind:
        args.append(f"rollout.cpu_bind={a.rollout_bind}")
    args += a.rlengine_override
    if a.lora:  # the same PEFT config as TRL's side (trl_grpo.py --lora)
        args += [f"model.lora.r={a.lora}", f"model.lora.alpha={2 * a.lora}", "model.lora.target_modules=all-linear"]
    if a.device == "cuda":  # one GPU: trainer and rollout share it (colocated), bf16
        args += ["resources.device=cuda", "model.dtype=bfloat16", "resources.gpus_per_trainer=1",
                 "resources.gpus_per_rollout=1", "resources.colocate=true", "rollout.gpu_memory_utilization=0.3",
                 "model.attn_implementation=sdpa"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlengine.main", *args], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"rlengine run failed ({proc.returncode}): {proc.stderr[-3000:]}")
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "timing_s/step" in m][warm:]
    roles_up = float(re.search(r"roles up in ([\d.]+)s", (run_dir / "run.log").read_text()).group(1))
    return {"engine": "rlengine", "step_times_s": [m["timing_s/step"] for m in steps],
            "phases": {p: [m.get(f"timing_s/{p}", 0.0) for m in steps] for p in PHASES},
            "response_tokens": [m["response_length/mean"] * a.prompts * a.group_size for m in steps],
            "trained_tokens": [m["perf/throughput_tokens_per_s"] * m["timing_s/step"] for m in steps],
            "sync_bytes": steps[0].get("sync/bytes", 0.0), "sync_load_s": [m.get("sync/load_s", 0.0) for m in steps],
            "roles_up_s": roles_up, "wall_s": wall}


def run_trl(model: Path, prompts: Path, a, tokens: int, natural: bool, out: Path) -> dict:
    warm = warmup_steps(a, natural)
    cmd = [sys.executable, str(BENCH / "trl_grpo.py"), "--model", str(model), "--prompts", str(prompts),
           "--steps", str(warm + a.steps), "--prompts-per-step", str(a.prompts), "--group-size", str(a.group_size),
           "--max-new-tokens", str(tokens), "--micro-batch", str(a.micro_batch), "--out", str(out)]
    if natural:
        cmd.append("--natural-length")
    if a.lora:
        cmd += ["--lora", str(a.lora)]
    if a.device == "cuda":
        cmd += ["--device", "cuda"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRL_DIR), str(REPO)])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"TRL run failed ({proc.returncode}): {proc.stderr[-3000:]}")
    r = json.loads(out.read_text())
    logs = [entry for entry in r["logs"] if "completions/mean_length" in entry][warm:]
    return {"engine": "trl", "step_times_s": r["step_times_s"][warm:], "generate_s": r.get("generate_s", [])[warm:],
            "setup_s": r["setup_s"], "wall_s": wall,
            "response_tokens": [entry["completions/mean_length"] * a.prompts * a.group_size for entry in logs]}


def run_vllm(model: Path, prompts: Path, a, tokens: int, bind: str | None, out: Path) -> dict:
    cmd = [sys.executable, str(BENCH / "vllm_standalone.py"), "--model", str(model), "--prompts", str(prompts),
           "--n", str(a.prompts), "--group-size", str(a.group_size), "--tokens", str(tokens), "--out", str(out)]
    if bind:
        cmd += ["--bind", bind]
    if "rollout.enforce_eager=false" in a.rlengine_override:  # the same engine settings as the rollout
        cmd.append("--compiled")
    if a.device == "cuda":
        cmd += ["--dtype", "bfloat16"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"standalone vLLM failed: {proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_parity(model: Path, out: Path, mixed: bool) -> dict:
    cmd = [sys.executable, str(BENCH / "parity.py"), "--model", str(model), "--out", str(out)]
    if mixed:
        cmd.append("--mixed-lengths")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRL_DIR), str(REPO)])}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,30m,100m")
    ap.add_argument("--tokens", default="128,32", help="max new tokens, fixed-length work")
    ap.add_argument("--natural-sizes", default="30m", help="sizes also run with EOS allowed ('' for none)")
    ap.add_argument("--pairs", type=int, default=2, help="A/B pairs per configuration (A B B A ...)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--rollout-bind", default="", help="rollout.cpu_bind for rlengine (default: the engine's own, vLLM's binding)")
    ap.add_argument("--work", default="/tmp/rlengine-bench")
    ap.add_argument("--results", default=str(RESULTS), help="where REPORT.md, summary.json and the plot go")
    ap.add_argument("--rlengine-override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra rlengine config override for the timed runs (repeatable), e.g. trainer.compile=true")
    ap.add_argument("--merge", action="store_true",
                    help="keep what an existing raw.json in --results holds and this run does not redo "
                         "(other sizes, other work of the same size)")
    ap.add_argument("--natural-only", action="store_true", help="only the natural-length work of --natural-sizes")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: bf16 on one GPU, MFU over the GPU's measured bf16 matmul peak")
    ap.add_argument("--lora", type=int, default=0,
                    help="both engines train rank-R LoRA adapters (alpha 2R, all-linear) instead of every weight; "
                         "use with --results bench/results/lora_trl")
    args = ap.parse_args()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    from bench.models import build, embed_params, n_params

    ensure_trl()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prompts = write_prompts(work / "prompts.jsonl", args.prompts * (args.warmup + args.steps + 2))
    raw = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "args": vars(args), "matmul_gflops_2threads": matmul_gflops(device=args.device), "sizes": {}}
    if args.merge and (results / "raw.json").exists():
        old = json.loads((results / "raw.json").read_text())
        raw["sizes"] = dict(old["sizes"])
        raw["args_by_size"] = {**old.get("args_by_size", {k: old["args"] for k in old["sizes"]})}
    if not args.natural_only:  # a natural-only rerun adds to what the size's full run recorded
        raw.setdefault("args_by_size", {}).update({k: vars(args) for k in filter(None, args.sizes.split(","))})
    print(f"matmul peak: {raw['matmul_gflops_2threads']:.1f} GFLOP/s "
          f"({'bf16, GPU' if args.device == 'cuda' else 'fp32, 2 threads'})", flush=True)
    for size in filter(None, args.sizes.split(",")):
        model = build(size)
        entry = raw["sizes"][size] = {**raw["sizes"].get(size, {}), "params": n_params(model),
                                      "embed_params": embed_params(model)}
        if not args.natural_only or "matmul_gflops" not in entry:  # this size's MFU is over its own run's peak
            entry["matmul_gflops"] = raw["matmul_gflops_2threads"]
        entry.setdefault("runs", {})
        entry.setdefault("vllm", {})
        entry["parity"] = run_parity(model, work / f"parity_{size}.json", mixed=False)
        entry["parity_mixed_lengths"] = run_parity(model, work / f"parity_{size}_mixed.json", mixed=True)
        print(size, "parity", json.dumps(entry["parity"].get("rel_diff", entry["parity"])), flush=True)
        configs = [] if args.natural_only else [(int(t), False) for t in args.tokens.split(",")]
        if size in args.natural_sizes.split(","):
            configs.append((int(args.tokens.split(",")[0]), True))
        for tokens, natural in configs:
            key = f"{tokens}{'_natural' if natural else ''}"
            runs = entry["runs"][key] = {"rlengine": [], "trl": []}
            # what this work ran with, where a later --merge run redoes only some of a size's work
            entry.setdefault("work_args", {})[key] = {"pairs": args.pairs, "steps": args.steps,
                                                      "matmul_gflops": raw["matmul_gflops_2threads"]}
            for i in range(args.pairs):
                order = ("rlengine", "trl") if i % 2 == 0 else ("trl", "rlengine")
                for eng in order:
                    tag = f"{size}_{key}_{eng}_{i}"
                    r = (run_rlengine(model, prompts, args, tokens, natural, work / tag) if eng == "rlengine"
                         else run_trl(model, prompts, args, tokens, natural, work / f"{tag}.json"))
                    runs[eng].append(r)
                    print(f"{tag}: step {statistics.median(r['step_times_s']):.2f}s", flush=True)
            if not natural:
                for bind in sorted({"", "0-1", args.rollout_bind}):
                    entry["vllm"][f"{tokens}_{bind or 'default'}"] = run_vllm(
                        model, prompts, args, tokens, bind or None, work / f"vllm_{size}_{tokens}_{bind or 'd'}.json")
        nbytes = entry["runs"][next(iter(entry["runs"]))]["rlengine"][0]["sync_bytes"]
        entry["memcpy_gbps"] = memcpy_gbps(int(nbytes)) if nbytes else None
        (results / "raw.json").write_text(json.dumps(raw, indent=1))  # partial results survive a crash
    raw["matmul_gflops_after"] = max(raw.get("matmul_gflops_after") or 0.0, matmul_gflops(device=args.device))
    (results / "raw.json").write_text(json.dumps(raw, indent=1))
    from bench.report import write_report

    write_report(raw, results)
    print(f"wrote {results / 'REPORT.md'}, {results / 'summary.json'}, {results / 'step_time.png'}")
    return 0


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) / 2**20
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(), "gpu": gpu}


if __name__ == "__main__":
    sys.exit(main())
