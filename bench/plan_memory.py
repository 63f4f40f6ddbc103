"""The memory planner's CPU prediction for the trainer actor against its measured peak RSS.

    .venv/bin/python bench/plan_memory.py                   # tiny, 30m, 100m (bench/models.py sizes)
    .venv/bin/python bench/plan_memory.py --sizes tiny      # one size
    .venv/bin/python bench/plan_memory.py --one 30m         # one cell here: prints one JSON line

Each size runs in a fresh process that builds the real TrainerWorker (DeepSpeed, one rank, no Ray,
as bench/parity.py and bench/lora_memory.py do) and runs one warm-up plus --steps updates of a
fixed synthetic GRPO batch (fp32, KL 0: no reference).  The peak is RSS sampled every 20 ms over
the warm-up and the updates (bench/lora_memory.Sampler), which is what the planner predicts: the
process baseline plus the trainer's states plus the update's working memory
(rlengine.memory.predict_trainer_peak on the same config).  Writes
bench/results/plan_memory.json and bench/results/plan_memory.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO))

from bench.lora_memory import MB, Sampler, maxrss_mb, statm, synthetic_batch  # noqa: E402

SIZES = ("tiny", "30m", "100m")
CELL_ARGS = ("steps", "seqs", "group_size", "prompt_len", "resp_len", "micro_batch", "threads")
DEFAULTS = (2, 16, 8, 16, 32, 8, 2)
TOLERANCE = 0.25  # the planner's CPU prediction must be within this of the measured peak


def overrides(model_dir: str, a) -> list[str]:
    """The recipe overrides of one cell: grpo_tiny at a fixed batch, micro-batch and width."""
    return [f"model.path={model_dir}", "model.dtype=float32", "algorithm.kl_coef=0",
            f"algorithm.group_size={a.group_size}", f"data.prompts_per_step={a.seqs // a.group_size}",
            f"trainer.micro_batch_size={a.micro_batch}", f"trainer.cpu_threads={a.threads}", "trainer.lr=1e-5",
            f"rollout.max_new_tokens={a.resp_len}", f"rollout.max_model_len={a.prompt_len + a.resp_len + 16}",
            f"data.max_prompt_tokens={a.prompt_len}"]


def run_one(size: str, a) -> dict:
    sampler = Sampler()
    sampler.start()
    import deepspeed  # noqa: F401  (the imports the trainer actor pays for, counted in the baseline)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from bench.models import build, n_params
    from rlengine.compose import load_config
    from rlengine.workers.group import free_port
    from rlengine.workers.trainer import TrainerWorker

    model_dir = str(build(size))
    batch = synthetic_batch(model_dir, a.seqs, a.prompt_len, a.resp_len, a.group_size)
    row: dict = {"size": size, "rss_imports_mb": statm()[0] / MB, "params": n_params(Path(model_dir))}
    cfg, plan = load_config("grpo_tiny", overrides(model_dir, a))
    w = TrainerWorker(cfg, plan, model_dir, 0, 1, "127.0.0.1", free_port())
    row["rss_after_build_mb"] = statm()[0] / MB
    # RSS around each optimizer step: where the update's peak sits (backward vs step).
    marks: dict = {"before_step_mb": 0.0, "after_step_mb": 0.0}
    opt = w.engine.optimizer
    inner = opt.step

    def step(*args, **kw):
        marks["before_step_mb"] = max(marks["before_step_mb"], statm()[0] / MB)
        out = inner(*args, **kw)
        marks["after_step_mb"] = max(marks["after_step_mb"], statm()[0] / MB)
        return out

    opt.step = step
    sampler.enter("update")
    t0 = time.perf_counter()
    for _ in range(1 + a.steps):  # the warm-up update allocates the optimizer states: it is the peak
        w.update(batch)
    row["update_s"] = (time.perf_counter() - t0) / (1 + a.steps)
    peaks = sampler.stop()
    row.update(marks, peak_update_mb=peaks["update"]["rss_mb"], peak_overall_mb=maxrss_mb(),
               zero_stage=plan.zero_stage, model_dir=model_dir)
    return row


def run_child(size: str, a) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", size] + [
        x for k in CELL_ARGS for x in (f"--{k.replace('_', '-')}", str(getattr(a, k)))]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"size"')]
    if proc.returncode or not rows:
        raise RuntimeError(f"{size}: rc {proc.returncode}: {proc.stderr[-3000:]}")
    return {**rows[-1], "wall_s": time.perf_counter() - t0}


def predict(row: dict, a) -> dict:
    """The planner's prediction for the cell's config (model_config read from its config.json)."""
    from rlengine import memory
    from rlengine.compose import load_config

    cfg, plan = load_config("grpo_tiny", overrides(row["model_dir"], a))
    shape = memory.model_shape(cfg.model.path)
    p = memory.predict_trainer_peak(cfg, shape, plan.micro_batch_size, a.prompt_len + a.resp_len, plan=plan)
    return {"predicted_mb": p["total"] / MB, "predicted_bytes": p["bytes"], "params_planner": shape.n_params()}


def write_md(raw: dict, path: Path) -> None:
    a = raw["args"]
    L = [f"# Memory planner vs measured trainer peak RSS, CPU ({raw['date']})", "",
         f"Machine: {raw['machine']}. One TrainerWorker per fresh process (DeepSpeed ZeRO-2 on one rank, fp32, "
         f"{a['threads']} threads, no Ray), a fixed GRPO batch of {a['seqs']} sequences x ({a['prompt_len']} prompt "
         f"+ {a['resp_len']} response) tokens, micro-batch {a['micro_batch']}, 1 warm-up + {a['steps']} updates. "
         "*measured*: peak RSS sampled every 20 ms over the updates; *predicted*: "
         "`rlengine.memory.predict_trainer_peak` (process baseline + model states + DeepSpeed buffers + "
         "activations + logits) for the same config, read from the model's config.json only.", "",
         "| size | parameters (planner = model) | measured MB | predicted MB | error | within "
         f"{TOLERANCE:.0%} | before step MB | after step MB |", "|" + "---|" * 8]
    for r in raw["rows"]:
        L.append(f"| {r['size']} | {r['params'] / 1e6:.2f}M ({'=' if r['params_planner'] == r['params'] else '!='}) "
                 f"| {r['peak_update_mb']:.0f} | {r['predicted_mb']:.0f} | {100 * r['error']:+.1f}% | "
                 f"{'yes' if abs(r['error']) <= TOLERANCE else 'NO'} | {r['before_step_mb']:.0f} | "
                 f"{r['after_step_mb']:.0f} |")
    L += ["", "Predicted bytes by kind (MB):", "", "| size | " + " | ".join(raw["kinds"]) + " |",
          "|" + "---|" * (1 + len(raw["kinds"]))]
    for r in raw["rows"]:
        L.append(f"| {r['size']} | " + " | ".join(f"{r['predicted_bytes'].get(k, 0) / MB:.0f}"
                                                  for k in raw["kinds"]) + " |")
    path.write_text("\n".join(L) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES))
    ap.add_argument("--one", metavar="SIZE", help="run one cell here, print its JSON row")
    for k, d in zip(CELL_ARGS, DEFAULTS):
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=d)
    ap.add_argument("--results", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.one:
        return print(json.dumps(run_one(a.one, a)), flush=True) or 0
    from bench.lora_memory import machine
    from bench.models import build

    m = machine()
    raw = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{m['cpu'] or m['processor']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']}",
           "args": {k: v for k, v in vars(a).items() if k != "one"}, "rows": []}
    for size in a.sizes:
        build(size)  # once, cached: the child only loads it
        row = run_child(size, a)
        row.update(predict(row, a))
        row["error"] = row["predicted_mb"] / row["peak_update_mb"] - 1
        raw["rows"].append(row)
        print(f"{size}: measured {row['peak_update_mb']:.0f} MB, predicted {row['predicted_mb']:.0f} MB "
              f"({100 * row['error']:+.1f}%)", flush=True)
    raw["kinds"] = list(dict.fromkeys(k for r in raw["rows"] for k in r["predicted_bytes"]))
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "plan_memory.json").write_text(json.dumps(raw, indent=1))
    write_md(raw, results / "plan_memory.md")
    print(f"wrote {results / 'plan_memory.json'}, {results / 'plan_memory.md'}")
    return 0 if all(abs(r["error"]) <= TOLERANCE for r in raw["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
