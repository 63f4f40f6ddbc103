"""What vLLM's CPU build costs the weight sync, and what its oneDNN repack buys the rollout.

    .venv/bin/python bench/sync_bound.py [--sizes 30m,100m] [--tokens 32] [--results bench/results]

vLLM's CPU build repacks every linear weight into oneDNN's blocked layout as it loads it
(`dispatch_cpu_unquantized_gemm`).  Per size, in fresh processes (in-process engine, vLLM's
default thread binding), once with that path and once with it switched off (plain `F.linear` on
the loaded weights, no repack):

  reload   `reload_weights` exactly as the rollout role calls it, against a plain in-process
           copy of the model's bytes in the same process;
  repack   (oneDNN only) vLLM's repack call alone, `create_onednn_mm(weight.t(), 32)` on every
           linear weight, with the engine's own thread setting: a sync that hands vLLM new
           weights cannot take less time, so the model's bytes over it, against the copy, bound
           `sync_vs_memcpy` from above whatever the engine does around it;
  rollout  standalone vLLM tokens/s, compiled, the benchmark's prompts and sampling.

Writes sync_bound.json in --results; bench/report.py adds it to REPORT.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import models  # noqa: E402
from bench.compare_trl import RESULTS, memcpy_gbps, write_prompts  # noqa: E402
from bench.vllm_standalone import use_gemm  # noqa: E402


def child(size: str, gemm: str, repeats: int, out: Path) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from safetensors.torch import load_file
    import torch
    from vllm import LLM

    use_gemm(gemm)

    path = models.build(size)
    llm = LLM(model=str(path), dtype="float32", enforce_eager=True, max_model_len=256, seed=1)
    named = [(n, t.clone()) for n, t in load_file(str(path / "model.safetensors")).items()]
    nbytes = sum(t.numel() * t.element_size() for _, t in named)
    copy = memcpy_gbps(nbytes)
    llm.collective_rpc(_load_weights, args=(named,))  # warm
    reload = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        llm.collective_rpc(_load_weights, args=(named,))
        reload.append(time.perf_counter() - t0)
    reload_s = statistics.median(reload)
    res = {"size": size, "gemm": gemm, "bytes": nbytes, "memcpy_gbps": copy, "threads": torch.get_num_threads(),
           "reload_s": reload_s, "reload_vs_memcpy": nbytes / reload_s / 1e9 / copy}
    if gemm == "onednn":
        res["repack_s"] = repack_s(named, repeats)
        res["repack_bound_vs_memcpy"] = nbytes / res["repack_s"] / 1e9 / copy
    out.write_text(json.dumps(res))


def _load_weights(worker, named) -> None:
    """vLLM's own reload, the call rlengine/weight_sync/receiver.py makes on every rank."""
    worker.model_runner.reload_weights(weights_iterator=iter(named), is_checkpoint_format=True)


def repack_s(named: list, repeats: int) -> float:
    """Median time of vLLM-CPU's oneDNN repack of every linear weight (not the embedding), the
    call its `dispatch_cpu_unquantized_gemm` makes (the first round is a warm-up)."""
    import vllm._custom_ops as ops

    linear = [t for n, t in named if t.dim() == 2 and "embed_tokens" not in n]
    times, handles = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        new = [ops.create_onednn_mm(w.t(), 32) for w in linear]
        times.append(time.perf_counter() - t0)
        handles = new  # the previous round's are freed outside the timed part
    del handles, new
    return statistics.median(times[1:])


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {proc.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="30m,100m")
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens of the rollout tokens/s runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="/tmp/rlengine-bench")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--child", nargs=3, metavar=("SIZE", "GEMM", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.repeats, Path(a.child[2]))
        return 0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    prompts = write_prompts(work / "prompts_sync.jsonl", 16)
    out = {"tokens": a.tokens, "sizes": {}}
    for size in a.sizes.split(","):
        entry = out["sizes"][size] = {}
        for gemm in ("onednn", "torch"):
            f = work / f"sync_bound_{size}_{gemm}.json"
            _run([sys.executable, __file__, "--repeats", str(a.repeats), "--child", size, gemm, str(f)])
            entry[gemm] = json.loads(f.read_text())
            g = work / f"sync_bound_{size}_{gemm}_gen.json"
            _run([sys.executable, str(REPO / "bench" / "vllm_standalone.py"), "--model", str(models.build(size)),
                  "--prompts", str(prompts), "--tokens", str(a.tokens), "--compiled", "--gemm", gemm, "--out", str(g)])
            gen = json.loads(g.read_text())
            entry[gemm].update(rollout_tokens_per_s=gen["tokens_per_s"], rollout_tokens=gen["tokens"])
        print(json.dumps({size: entry}))
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "sync_bound.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {results / 'sync_bound.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
