"""Token-budget micro-batches (trainer.max_tokens_per_micro_batch) vs fixed micro-batches of
trainer.micro_batch_size rows, side by side in one process on the real TrainerWorker (DeepSpeed,
one rank, no Ray), at natural response lengths (drawn uniformly in [--min-len, --max-len]).

Both sort rows by length and trim each micro-batch to its own widths; they differ in how many
rows a micro-batch takes.  Budgets compared, in tokens (rows x trimmed width):
  median: micro x the median row width (the fixed path's memory at a typical row; its longest
          micro-batches are larger than this)
  peak:   the fixed path's largest micro-batch (the same peak activation memory)
Each repeat times a no-grad log-prob pass and one update (one optimizer step, GRPO loss) per
variant, in an order that rotates every repeat; reported: medians and ratios to fixed.

    python bench/token_budget.py [--size 30m] [--rows 32] [--micro 8] [--repeats 3] \
        [--out bench/results/token_budget]
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown"


def make_batch(rows: int, min_len: int, max_len: int, seed: int = 0):
    """Prompts of 8..24 tokens, responses of min_len..max_len, random advantages."""
    from rlengine.layout import pack_sequences
    from rlengine.protocol import Batch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 200, (int(torch.randint(8, 25, (1,), generator=g)),), generator=g).tolist()
               for _ in range(rows)]
    responses = [torch.randint(3, 200, (int(torch.randint(min_len, max_len + 1, (1,), generator=g)),),
                               generator=g).tolist() for _ in range(rows)]
    t = pack_sequences(prompts, responses, None, pad_id=0)
    t["advantages"] = torch.randn(rows, generator=g)[:, None] * t["response_mask"]
    t["rollout_logp"] = torch.zeros_like(t["response_mask"])
    return Batch(tensors=t)


def grouping(batch, micro: int, budget: int | None) -> dict:
    from rlengine.layout import micro_batches

    shapes = [tuple(m["input_ids"].shape) for m in micro_batches(batch, micro, budget)]
    tokens = [b * w for b, w in shapes]
    return {"micro_batches": len(shapes), "max_tokens": max(tokens), "padded_tokens": sum(tokens),
            "rows": [b for b, _ in shapes]}


def worker(model_dir: str, a, budget: int | None):
    from rlengine.main import load_config
    from rlengine.workers.group import free_port
    from rlengine.workers.trainer import TrainerWorker

    over = [f"model.path={model_dir}", "algorithm.group_size=8", f"data.prompts_per_step={a.rows // 8}",
            f"trainer.micro_batch_size={a.micro}", "algorithm.kl_coef=0", f"trainer.cpu_threads={a.threads}",
            f"rollout.max_new_tokens={a.max_len}"]
    if budget is not None:
        over.append(f"trainer.max_tokens_per_micro_batch={budget}")
    cfg, plan = load_config("grpo_tiny", over)
    return TrainerWorker(cfg, plan, model_dir, 0, 1, "127.0.0.1", free_port())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="30m", help="bench/models.py size: tiny, 30m, 100m")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--min-len", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/token_budget")
    a = ap.parse_args()
    from bench.models import build, n_params
    from rlengine.layout import row_widths

    torch.set_num_threads(a.threads)
    model_dir = str(build(a.size))
    batch = make_batch(a.rows, a.min_len, a.max_len)
    prompt_N, response_N = row_widths(batch.tensors)
    median_width = int(statistics.median(p + r for p, r in zip(prompt_N, response_N)))
    fixed_groups = grouping(batch, a.micro, None)
    budgets = {"fixed": None, "median": a.micro * median_width, "peak": fixed_groups["max_tokens"]}
    groups = {name: grouping(batch, a.micro, b) for name, b in budgets.items()}
    workers = {name: worker(model_dir, a, b) for name, b in budgets.items()}
    names = list(workers)
    for w in workers.values():  # warm-up: first-call allocations, DeepSpeed's lazy setup
        w.log_probs(batch)
        w.update(batch)
    times = {name: {"log_probs_s": [], "update_s": []} for name in names}
    for rep in range(a.repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            w = workers[name]
            t0 = time.perf_counter()
            w.log_probs(batch)
            t1 = time.perf_counter()
            w.update(batch)
            t2 = time.perf_counter()
            times[name]["log_probs_s"].append(t1 - t0)
            times[name]["update_s"].append(t2 - t1)
            print(f"rep {rep} {name:6s} log_probs {t1 - t0:6.2f} s  update {t2 - t1:6.2f} s", flush=True)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    ratios = {n: {k: med[n][k] / med["fixed"][k] for k in med[n]} for n in names if n != "fixed"}
    out = {"machine": machine(), "date": datetime.date.today().isoformat(), "torch_threads": a.threads,
           "model": a.size, "params": n_params(Path(model_dir)), "args": vars(a), "median_width": median_width,
           "budgets": budgets, "grouping": groups, "times": times, "median_s": med, "ratio_to_fixed": ratios}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    Path(a.out + ".md").write_text(report(out))
    print(report(out))
    return 0


def report(r: dict) -> str:
    a = r["args"]
    lines = [f"# Token-budget micro-batches vs fixed micro-batches ({r['date']})", "",
             f"Machine: {r['machine']}, {r['torch_threads']} torch threads, fp32.  Model: {r['model']} "
             f"({r['params'] / 1e6:.1f}M params), DeepSpeed one rank (ZeRO-2), GRPO token-mean, one optimizer "
             f"step per update.  {a['rows']} rows: prompts of 8-24 tokens, responses drawn uniformly in "
             f"{a['min_len']}..{a['max_len']} tokens (median row width {r['median_width']}); fixed: "
             f"{a['micro']} rows per micro-batch.  Every variant sorts rows by length and trims each "
             f"micro-batch to its own widths.  1 warm-up + {a['repeats']} repeats, order rotated; medians.", "",
             "| variant | budget (tokens) | micro-batches | rows per micro-batch | largest (tokens) | padded tokens "
             "| log-probs s (min-max) | update s (min-max) | log-probs / fixed | update / fixed |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(name: str, key: str) -> str:
        v = r["times"][name][key]
        return f"{r['median_s'][name][key]:.2f} ({min(v):.2f}-{max(v):.2f})"

    for n, g in r["grouping"].items():
        ratio = r["ratio_to_fixed"].get(n, {"log_probs_s": 1.0, "update_s": 1.0})
        lines.append(f"| {n} | {r['budgets'][n] or '-'} | {g['micro_batches']} | {g['rows']} | {g['max_tokens']} "
                     f"| {g['padded_tokens']} | {cell(n, 'log_probs_s')} | {cell(n, 'update_s')} "
                     f"| {ratio['log_probs_s']:.3f} | {ratio['update_s']:.3f} |")
    lines += ["", "median: budget = micro-batch rows x the median row width; peak: the fixed path's largest "
              "micro-batch (equal peak activation memory).  Padded tokens: sum of rows x width over the "
              "micro-batches (the work a forward does).  Ratios are of medians; the min-max spread shows "
              "how much other processes on the same cores moved single runs.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
