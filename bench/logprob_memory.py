"""Extra peak memory and time of a log-prob pass: full-vocabulary logits (old) vs chunked head (new).

    .venv/bin/python bench/logprob_memory.py                      # all cells, writes the results
    .venv/bin/python bench/logprob_memory.py --one new train 1024 # one cell: prints one JSON line

A random Qwen2-architecture model with Qwen's vocabulary (151,936; hidden 256, 2 layers, fp32, so
it runs on CPU) scores B=8 rows of [left-padded prompt (48..64 tokens, P=64) | response (R=448,
every position a real token, so the new path's savings here come from the chunking alone)].
Cells, each in a fresh process:
  old:  modeling.forward_logits (logits [B, L, V]), sliced to the response columns, then
        algos.losses.logprobs_from_logits / entropy_from_logits: the code response_logprobs ran.
  new:  modeling.response_logprobs: backbone, then the head over the response positions in chunks
        of --chunk tokens (trainer.logits_chunk_tokens), checkpointed under gradients.
  nograd: logp only under torch.no_grad (the reference / old-log-prob pass).
  train:  logp and entropy with gradients on, the RL actor's call at entropy_coef 0 (old: the
          entropy in the graph, as it always was; new: entropy_grad=False), then backward of the
          token-mean -logp loss (parameter gradients, the same in both, are included).
Memory: after the model, the inputs and a small warm-up pass, the peak RSS is reset
(/proc/self/clear_refs 5) and the extra memory is VmHWM minus VmRSS at that point (falls back to
ru_maxrss where clear_refs is not writable; `method` says which).  PyTorch's CPU allocator does not
cache, so RSS follows the live tensors.  Reported as a fraction of one full [B, T, V] fp32 tensor
(T = P + R).  Temperature 1 (the old path then makes no divided copy: its most favourable case).
Writes bench/results/logprob_memory.json and .md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO))

MB = 2**20
V, HIDDEN, LAYERS = 151_936, 256, 2
# 512: trainer.logits_chunk_tokens' default.
CELLS = [("old", "nograd", 0), ("new", "nograd", 512), ("new", "nograd", 1024),
         ("old", "train", 0), ("new", "train", 512), ("new", "train", 1024)]


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> str:
    """Reset VmHWM to the current RSS; the method the peak is then read with."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM after clear_refs"
    except OSError:
        return "ru_maxrss"


def _peak_kb(method: str) -> int:
    return _status_kb("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def build(batch_rows: int, prompt_len: int, resp_len: int, seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlengine.layout import pack_sequences

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).float()
    model.set_attn_implementation("sdpa")
    g = torch.Generator().manual_seed(seed)
    lengths = [prompt_len] + torch.randint(3 * prompt_len // 4, prompt_len + 1, (batch_rows - 1,), generator=g).tolist()
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]
    responses = [torch.randint(0, V, (resp_len,), generator=g).tolist() for _ in range(batch_rows)]
    return model, pack_sequences(prompts, responses, None, pad_id=0)


def old_logprobs(model, batch, with_entropy: bool):
    """response_logprobs as it was: full logits, sliced, fp32, full-vocabulary log-softmax."""
    from rlengine.algos.losses import entropy_from_logits, logprobs_from_logits
    from rlengine.modeling import forward_logits

    P = batch["input_ids"].shape[1] - batch["responses"].shape[1]
    logits_BRV = forward_logits(model, batch)[:, P - 1:-1].float()
    logp_BR = logprobs_from_logits(logits_BRV, batch["responses"])
    return (logp_BR, entropy_from_logits(logits_BRV)) if with_entropy else (logp_BR, None)


def run_pass(model, batch, path: str, kind: str, chunk: int) -> float:
    """One pass; returns the mean response log-prob (a checksum across cells)."""
    import torch

    from rlengine.modeling import response_logprobs

    mask_BR = batch["response_mask"]
    if kind == "nograd":
        with torch.no_grad():
            logp_BR = (old_logprobs(model, batch, False)[0] if path == "old"
                       else response_logprobs(model, batch, chunk_tokens=chunk))
        return float((logp_BR * mask_BR).sum() / mask_BR.sum())
    if path == "old":
        logp_BR, ent_BR = old_logprobs(model, batch, True)
    else:
        logp_BR, ent_BR = response_logprobs(model, batch, with_entropy=True, entropy_grad=False, chunk_tokens=chunk)
    loss = -(logp_BR * mask_BR).sum() / mask_BR.sum()
    loss.backward()
    float((ent_BR.detach() * mask_BR).sum())  # the entropy metric, read after backward as rl.py does
    return -float(loss.detach())


def one_cell(path: str, kind: str, chunk: int, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    model, batch = build(args.batch, args.prompt_len, args.resp_len)
    model.train(kind == "train")
    from rlengine.layout import pack_sequences

    run_pass(model, pack_sequences([[5, 6, 7]], [[8, 9, 10, 11]], None, pad_id=0), path, kind, chunk)  # warm-up
    model.zero_grad(set_to_none=True)
    gc.collect()
    method = _reset_peak()
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    checksum = run_pass(model, batch, path, kind, chunk)
    seconds = time.perf_counter() - t0
    extra = (_peak_kb(method) - base_kb) * 1024
    B, L = batch["input_ids"].shape
    full = B * L * V * 4
    return {"path": path, "pass": kind, "chunk": chunk if path == "new" else None, "extra_bytes": extra,
            "frac_of_full_BTV_fp32": extra / full, "seconds": seconds, "baseline_rss_mb": base_kb / 1024,
            "method": method, "mean_logp": checksum, "B": B, "T": L, "R": batch["responses"].shape[1],
            "response_tokens": int(batch["response_mask"].sum()), "full_BTV_fp32_bytes": full,
            "threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0]}


def machine() -> dict:
    import torch

    try:
        name = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        name = platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": name, "cores": os.cpu_count(), "mem_gib": round(mem, 1), "torch": torch.__version__,
            "python": platform.python_version(), "loadavg": os.getloadavg()}


def write_md(out: dict, path: Path) -> None:
    m, rows = out["machine"], out["rows"]
    full = rows[0]["full_BTV_fp32_bytes"]
    old = {r["pass"]: r for r in rows if r["path"] == "old"}
    lines = [f"# Log-prob pass memory: full logits vs chunked head ({out['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB; torch {m['torch']}; "
             f"{rows[0]['threads']} threads; load average {m['loadavg'][0]:.1f} before.",
             f"Model: random Qwen2 architecture, V = {V:,}, hidden {HIDDEN}, {LAYERS} layers, fp32. "
             f"Batch: B = {rows[0]['B']}, T = {rows[0]['T']} (R = {rows[0]['R']}, {rows[0]['response_tokens']} "
             f"response tokens); one full [B, T, V] fp32 tensor = {full / MB:,.0f} MiB.",
             "Extra peak = peak RSS during the pass minus RSS before it (after model, inputs, warm-up), "
             f"measured with {rows[0]['method']}, each cell in a fresh process. *nograd*: logp under "
             "torch.no_grad (reference / old-log-prob pass). *train*: logp + entropy with grad enabled "
             "(old: entropy in the graph; new: entropy_grad=False, as at entropy_coef 0) and backward of the "
             "token-mean -logp loss; parameter gradients (~" f"{2 * V * HIDDEN * 4 / MB:,.0f} MiB for embeddings + "
             "head, the same in both) are included.", "",
             "| pass | path | chunk tokens | extra peak MiB | × full [B,T,V] fp32 | vs old | seconds | vs old | "
             "load avg | mean logp |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o = old[r["pass"]]
        lines.append(f"| {r['pass']} | {r['path']} | {r['chunk'] or '-'} | {r['extra_bytes'] / MB:,.0f} | "
                     f"{r['frac_of_full_BTV_fp32']:.3f} | {r['extra_bytes'] / o['extra_bytes']:.3f}x | "
                     f"{r['seconds']:.2f} | {r['seconds'] / o['seconds']:.2f}x | {r['loadavg_1m']:.1f} | "
                     f"{r['mean_logp']:.6f} |")
    lines += ["", "Equal *mean logp* across a pass's rows: the paths compute the same values. Times are one pass "
              "each on a shared 2-core machine (*load avg*: 1-minute load when the cell started); the head's "
              "FLOPs are the same in both paths (the new one skips the prompt columns, the training pass "
              "recomputes each chunk's logits in backward)."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=3, metavar=("PATH", "PASS", "CHUNK"), help="run one cell, print JSON")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--resp-len", type=int, default=448)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "logprob_memory.json")
    args = ap.parse_args()
    if args.one:
        path, kind, chunk = args.one
        print(json.dumps(one_cell(path, kind, int(chunk), args)))
        return
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    rows = []
    for path, kind, chunk in CELLS:
        cmd = [sys.executable, __file__, "--one", path, kind, str(chunk), "--batch", str(args.batch),
               "--prompt-len", str(args.prompt_len), "--resp-len", str(args.resp_len), "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if res.returncode != 0:
            sys.exit(f"cell {path} {kind} {chunk} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{kind:6s} {path} chunk={r['chunk']}: extra {r['extra_bytes'] / MB:8.0f} MiB "
              f"({r['frac_of_full_BTV_fp32']:.3f} x full) {r['seconds']:.2f} s", flush=True)
    out = {"date": date, "machine": info, "args": {k: v for k, v in vars(args).items() if k not in ("one", "out")},
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    write_md(out, args.out.with_suffix(".md"))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
