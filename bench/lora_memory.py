"""Trainer memory, update time and weight-sync size: full fine-tuning vs LoRA vs QLoRA, side by side.

    .venv/bin/python bench/lora_memory.py                         # 30m, 100m, 500m; 3 modes each
    .venv/bin/python bench/lora_memory.py --sizes 30m --steps 1   # a quick look
    .venv/bin/python bench/lora_memory.py --one 100m lora         # one cell: prints one JSON line
    .venv/bin/python bench/lora_memory.py --md-only [--supplement OTHER/lora_memory.json]  # rewrite the .md

Each (size, mode) cell runs in a fresh process that builds the real TrainerWorker (DeepSpeed, one
rank, no Ray; as bench/parity.py does) and runs one warm-up plus --steps timed updates of a fixed
synthetic GRPO batch (fp32, 2 threads, KL 0: no reference).  Modes: full, lora (r=16, alpha=32,
all-linear), qlora (lora on an nf4 double-quantized bitsandbytes base).  Per cell: ru_maxrss before
any export, peak RSS during the timed updates (/proc/self/statm every 20 ms), RSS after build,
parameter counts, seconds per update, the bytes one weight sync sends (sync_layout "full", or
"adapter" with LoRA) and seconds per export_weights(["object_store"]).  Writes
bench/results/lora_memory.json (rows, machine) and bench/results/lora_memory.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO))

MODES = ("full", "lora", "qlora")
LORA = ["model.lora.r=16", "model.lora.alpha=32", "model.lora.target_modules=all-linear"]
MODE_OVERRIDES = {"full": [], "lora": LORA, "qlora": LORA + ["model.quantization=nf4", "model.double_quant=true"]}
# The fine-tuning rule of thumb, GB per billion parameters (weights + grads + optimizer state).
RULE_GB_PER_B = {"full_amp": 18.0, "full_bf16": 8.0, "lora": 2.0, "qlora": 0.5}
FP32_FULL_GB_PER_B = 16.0  # fp32 weights 4 + grads 4 + AdamW m, v 8
CELL_ARGS = ("steps", "exports", "seqs", "group_size", "prompt_len", "resp_len", "micro_batch", "threads")
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


# -- one cell (child process) ------------------------------------------------------------------

def statm() -> tuple[int, int]:
    """(resident, resident minus file-backed/shared) bytes of this process."""
    f = Path("/proc/self/statm").read_text().split()
    return int(f[1]) * PAGE, (int(f[1]) - int(f[2])) * PAGE


def status_mb() -> dict:
    """RssAnon / RssFile / RssShmem of /proc/self/status, MB."""
    rows = (line.partition(":") for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(v.split()[0]) / 1024 for k, _, v in rows if k in ("RssAnon", "RssFile", "RssShmem")}


def mapped_mb(suffix: str = ".safetensors") -> float:
    """Resident MB of this process's file mappings whose path ends with `suffix` (the checkpoint
    safetensors maps: clean, reclaimable page cache, but counted in RSS)."""
    total, hit = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            hit = head[-1].endswith(suffix)
        elif hit and head and head[0] == "Rss:":
            total += int(head[1])
    return total / 1024


def matmul_gflops(n: int = 1024, repeats: int = 3) -> float:
    """fp32 matmul throughput now, on this process's threads: how busy the cores are."""
    import torch

    x, y = torch.randn(n, n), torch.randn(n, n)
    torch.mm(x, y)
    return 2 * n**3 / min(timed(lambda: torch.mm(x, y)) for _ in range(repeats)) / 1e9


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class Sampler(threading.Thread):
    """Peak RSS (and anonymous RSS) per named window, sampled every `every` seconds."""

    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.window, self.peaks = every, None, {}
        self._lock, self._done = threading.Lock(), threading.Event()

    def enter(self, window: str | None = "") -> None:
        """Sample into the current window; with `window` (not ""), switch to it and sample again."""
        rss, anon = statm()
        with self._lock:
            if self.window:
                p = self.peaks.setdefault(self.window, [0, 0])
                p[0], p[1] = max(p[0], rss), max(p[1], anon)
            if window != "":
                self.window = window
        if window != "":
            self.enter()

    def run(self) -> None:
        while not self._done.wait(self.every):
            self.enter()

    def stop(self) -> dict:
        self.enter(None)
        self._done.set()
        return {w: {"rss_mb": r / MB, "anon_mb": a / MB} for w, (r, a) in self.peaks.items()}


def synthetic_batch(model_dir: str, seqs: int, prompt_len: int, resp_len: int, group: int, seed: int = 0):
    """`seqs` rows of random non-special tokens (prompt, then a response with no EOS) and fixed
    group-normalised advantages; rollout_logp zeros (only the drift metric reads it)."""
    import torch
    from transformers import AutoTokenizer

    from rlengine.algos.advantages import get_advantage
    from rlengine.layout import pack_sequences
    from rlengine.protocol import Batch

    tok = AutoTokenizer.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(seed)
    vocab = torch.tensor([i for i in range(len(tok)) if i not in set(tok.all_special_ids)])
    pick = lambda n: vocab[torch.randint(len(vocab), (n,), generator=g)].tolist()  # noqa: E731
    prompts = [p for p in (pick(prompt_len) for _ in range(seqs // group)) for _ in range(group)]  # G per prompt
    responses = [pick(resp_len) for _ in range(seqs)]
    t = pack_sequences(prompts, responses, [[0.0] * resp_len] * seqs, tok.pad_token_id)
    rewards = torch.randint(0, 2, (seqs,), generator=g).float()
    adv_N = get_advantage("grpo")(rewards, torch.arange(seqs // group).repeat_interleave(group))
    return Batch(tensors={**t, "advantages": adv_N[:, None] * t["response_mask"]})


def layout_bytes(groups) -> int:
    import torch

    return sum(math.prod(s) * getattr(torch, d).itemsize for g in groups for _, s, d in g)


def run_one(size: str, mode: str, a) -> dict:
    sampler = Sampler()
    sampler.start()
    row: dict = {"size": size, "mode": mode, "rss_start_mb": statm()[0] / MB}
    import deepspeed  # noqa: F401  (the imports the trainer pays for, counted before the build)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from bench.models import build, n_params
    from rlengine.main import load_config
    from rlengine.workers.group import free_port
    from rlengine.workers.trainer import TrainerWorker

    model_dir = str(build(size))
    batch = synthetic_batch(model_dir, a.seqs, a.prompt_len, a.resp_len, a.group_size)
    row["rss_imports_mb"] = statm()[0] / MB
    overrides = [f"model.path={model_dir}", "model.dtype=float32", "algorithm.kl_coef=0",
                 f"algorithm.group_size={a.group_size}", f"data.prompts_per_step={a.seqs // a.group_size}",
                 f"trainer.micro_batch_size={a.micro_batch}", f"trainer.cpu_threads={a.threads}", "trainer.lr=1e-5",
                 f"rollout.max_new_tokens={a.resp_len}", f"rollout.max_model_len={a.prompt_len + a.resp_len + 16}",
                 f"data.max_prompt_tokens={a.prompt_len}", *MODE_OVERRIDES[mode]]
    cfg, plan = load_config("grpo_tiny", overrides)
    sampler.enter("build")
    t0 = time.perf_counter()
    w = TrainerWorker(cfg, plan, model_dir, 0, 1, "127.0.0.1", free_port())
    row["build_s"] = time.perf_counter() - t0
    sampler.enter(None)
    row.update(rss_after_build_mb=statm()[0] / MB, rss_after_build_detail_mb=status_mb(),
               checkpoint_mapped_after_build_mb=mapped_mb(), peak_through_build_mb=maxrss_mb())
    ps = list(w.module.parameters())  # params_stored: 4-bit weights count packed (two per byte)
    row.update(params_model=n_params(Path(model_dir)), params_trainable=sum(p.numel() for p in ps if p.requires_grad),
               params_stored=sum(p.numel() for p in ps), param_bytes=sum(p.numel() * p.element_size() for p in ps),
               zero_stage=plan.zero_stage, threads=torch.get_num_threads())

    sampler.enter("warmup")
    row.update(warmup_s=timed(lambda: w.update(batch)), loadavg_before=os.getloadavg(),
               matmul_gflops_before=matmul_gflops())
    sampler.enter("update")
    times, cpu = [], []
    for _ in range(a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        m = w.update(batch)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    sampler.enter(None)
    # CPU seconds of the process (all threads): less sensitive than wall time to other processes on the cores.
    row.update(loadavg_after=os.getloadavg(), checkpoint_mapped_after_updates_mb=mapped_mb(),
               rss_after_updates_detail_mb=status_mb(), update_s=times, update_s_median=statistics.median(times),
               update_cpu_s=cpu, update_cpu_s_median=statistics.median(cpu), pg_loss=m["actor/pg_loss"],
               grad_norm=m["actor/grad_norm"], peak_overall_mb=maxrss_mb())  # before any export

    kind = "full" if mode == "full" else "adapter"
    layout = w.sync_layout(kind)
    row.update(sync_kind=kind, sync_bytes=layout_bytes(layout), sync_tensors=sum(len(g) for g in layout))
    if mode != "full":
        row["merged_bytes"] = layout_bytes(w.sync_layout("merged"))  # what a merged sync would send
    sampler.enter("export")
    ex = [timed(lambda: w.export_weights(["object_store"], kind=kind)) for _ in range(a.exports)]  # payload dropped
    peaks = sampler.stop()
    row.update(export_s=ex, export_s_median=statistics.median(ex), peak_with_export_mb=maxrss_mb(),
               sampled_peaks=peaks, peak_update_mb=peaks["update"]["rss_mb"],
               peak_update_anon_mb=peaks["update"]["anon_mb"])
    return row


# -- the driver ------------------------------------------------------------------------------------

def run_child(size: str, mode: str, a) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", size, mode] + [
        x for k in CELL_ARGS for x in (f"--{k.replace('_', '-')}", str(getattr(a, k)))]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"size"')]
    if proc.returncode or not rows:
        return {"size": size, "mode": mode, "error": f"rc {proc.returncode}: {proc.stderr[-3000:]}", "wall_s": wall}
    return {**rows[-1], "wall_s": wall}


def machine() -> dict:
    from bench.compare_trl import machine as base  # /proc/cpuinfo model name, cores, memory, torch, ...

    return {**base(), "processor": platform.processor()}


def state_bytes(r: dict) -> float:
    """Weights + grads + AdamW state this cell must hold, from its own parameter counts (fp32):
    trainable 16 B each, frozen stored weights at their own size (4-bit: packed bytes)."""
    frozen_bytes = r["param_bytes"] - 4 * r["params_trainable"]
    return 16 * r["params_trainable"] + frozen_bytes


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def explain(by: dict, big: str | None, imports: float) -> str:
    """The paragraph on where the measured ratios leave the rule of thumb, with this run's numbers."""
    txt = ("The rule of thumb counts weights, gradients and optimizer state only. Every process first holds "
           f"~{imports:.0f} "
           "MB before any weight exists (Python, torch, DeepSpeed, transformers, PEFT, bitsandbytes, the tokenizer), "
           "then activations, DeepSpeed's buffers and, for QLoRA, fp32 dequantized copies of the layer computing. "
           "That fixed part is most of a 30m/100m footprint, so adapters save little in ratio terms there. ")
    if big:
        f, lo, ql = by[(big, "full")], by[(big, "lora")], by[(big, "qlora")]
        bpp = (f["peak_update_mb"] - f["rss_imports_mb"]) * MB / f["params_model"]
        txt += (f"Full fine-tuning took {bpp:.1f} B/param above that baseline at {big}, not 16: DeepSpeed ZeRO-2 (one "
                "rank too) keeps an fp32 master copy of the flat weights and an fp32 gradient partition beside the "
                "model's weights and gradients (4+4+4+4 B + AdamW's 8 = 24 B/param) and flattens gradient copies "
                "while reducing. LoRA's frozen base is fp32 (4 B/param; the rule's 2n assumes 16-bit), so its floor "
                "is ~4n/16n = 0.25x; those weights stay views on the mmapped checkpoint "
                f"({lo['checkpoint_mapped_after_updates_mb']:.0f} MB mapped after the updates), hence its low RSS "
                "after "
                f"build: they page in on the first forward. QLoRA stores its base in {ql['param_bytes'] / MB:.0f} MB; "
                "what it adds to that is fp32 dequantized copies of the layers computing "
                f"(anonymous memory in the updates: {ql['peak_update_anon_mb']:.0f} MB against LoRA's "
                f"{lo['peak_update_anon_mb']:.0f} MB, whose base is file-backed). ")
        mapped = ql["checkpoint_mapped_after_updates_mb"]
        if mapped > 50:
            txt += (f"It also keeps {mapped:.0f} MB of the fp32 checkpoint it quantized from resident: tensors left "
                    "unquantized are views on the safetensors mmap (rlengine.lora.own_storage copies them). ")
        else:
            txt += ("The fp32 checkpoint it quantized from is unmapped after the load (rlengine.lora.own_storage "
                    "copies the tensors left unquantized, which were views on it and kept every page resident: "
                    "1627 MB at 500m before that change). ")
        txt += (f"The load is not the peak: {ql['peak_through_build_mb']:.0f} MB through the build vs "
                f"{ql['peak_update_mb']:.0f} MB during updates. ")
    rows = list(by.values())
    loads = [x for r in rows for x in (r["loadavg_before"][0], r["loadavg_after"][0])] or [0.0]
    wide = max(rows, key=lambda r: max(r["update_s"]) / min(r["update_s"]), default=None)
    txt += ("Update time: LoRA still runs the whole forward and the input-gradient half of the backward through every "
            "frozen layer, skipping only weight gradients (~1/3 of the FLOPs) and the full AdamW step; QLoRA also "
            "dequantizes every 4-bit weight in the forward and again in the backward (CPU, no fused kernel). "
            f"The 1-minute load average during this run was {min(loads):.1f}-{max(loads):.1f}")
    if max(loads) > 2.5 and wide:
        txt += (f", on cores shared with other jobs: one cell's identical updates took "
                f"{', '.join(f'{x:.1f}' for x in wide['update_s'])} s ({wide['size']} {wide['mode']}), so with 2 "
                "threads the time ratios measure the load more than the modes; a --threads 1 run (a supplement, "
                "where present) gives CPU seconds that are the work itself")
    else:
        txt += " (2 cores, nothing else running)"
    return txt + "."


def time_row(r: dict, f: dict | None) -> str:
    """One row of the time/sync table: medians (minima) and their ratios to full."""
    both = lambda k: f"{r[k + '_median']:.2f} ({min(r[k]):.2f})"  # noqa: E731
    ratio = lambda k: (f"{fmt_ratio(r[k + '_median'] / f[k + '_median'])} "  # noqa: E731
                       f"({fmt_ratio(min(r[k]) / min(f[k]))})") if f else "–"
    return "| " + " | ".join([
        r["mode"], both("update_s"), ratio("update_s"), both("update_cpu_s"), ratio("update_cpu_s"),
        f"{r['loadavg_before'][0]:.1f}–{r['loadavg_after'][0]:.1f}, {r['matmul_gflops_before']:.0f}",
        f"{r['sync_bytes'] / MB:.2f}", f"{100 * r['sync_bytes'] / f['sync_bytes']:.2f}%" if f else "–",
        f"{r['export_s_median']:.3f}"]) + " |"


TIME_HEAD = ["| mode | update s, median (min) | ratio | update CPU s, median (min) | ratio | load avg, GFLOP/s | "
             "sync MB/step | % of full | export s |", "|" + "---|" * 9]


def time_checks(by: dict, threads: int) -> list[str]:
    if ("100m", "lora") not in by or ("100m", "full") not in by:
        return []
    lo, fu, out = by[("100m", "lora")], by[("100m", "full")], []
    for k, what in (("update_s", "update time"), ("update_cpu_s", "update CPU time")):
        x, y = lo[k + "_median"] / fu[k + "_median"], min(lo[k]) / min(fu[k])
        out.append(f"100m lora {what} ({threads} thread{'s' * (threads > 1)}) {x:.2f}x full by medians, {y:.2f}x by "
                   f"minima (target <= 0.75x): {'met' if x <= 0.75 else 'NOT met'} / "
                   f"{'met' if y <= 0.75 else 'NOT met'}")
    return out


def write_md(raw: dict, path: Path) -> None:
    rows = [r for r in raw["rows"] if "error" not in r]
    by = {(r["size"], r["mode"]): r for r in rows}
    a = raw["args"]
    L = [f"# Trainer memory: full fine-tuning vs LoRA vs QLoRA ({raw['date']})", "",
         f"Machine: {raw['machine']['cpu'] or raw['machine']['processor']}, {raw['machine']['cores']} cores, "
         f"{raw['machine']['memory_gib']} GiB; torch {raw['machine']['torch']}. One TrainerWorker per fresh process "
         f"(DeepSpeed ZeRO-{rows[0]['zero_stage'] if rows else '?'} on one rank, fp32, {a['threads']} threads), "
         f"a fixed GRPO batch of {a['seqs']} sequences x ({a['prompt_len']} prompt + {a['resp_len']} response) "
         f"tokens, micro-batch {a['micro_batch']}, 1 warm-up + {a['steps']} timed updates. LoRA: r=16, alpha=32, "
         "all-linear; QLoRA: the same on an nf4 double-quantized base (bitsandbytes, CPU).", "",
         "*peak*: ru_maxrss to the end of the updates (loading included); *upd peak*: RSS sampled every 20 ms in "
         "the timed updates; *ckpt mapped*: resident pages of the safetensors checkpoint still mapped after them "
         "(LoRA: its live frozen weights; QLoRA: the fp32 source of its quantized weights); *state est.*: weights + "
         "grads + AdamW from the cell's parameter counts (16 B per trainable fp32 parameter, frozen weights at their "
         "stored size); *rule*: the seed table's ratio vs 16n (fp32 full AdamW): LoRA 2n/16n = 0.125, QLoRA "
         "0.5n/16n = 0.031 (vs 18n mixed precision: 0.111, 0.028). *sync*: bytes one weight sync sends (full "
         "weights; with LoRA the adapter); *export*: median s of export_weights(['object_store']); *CPU s*: process "
         "CPU seconds (all threads); load avg before–after the updates, GFLOP/s of a 1024² fp32 matmul before.", ""]
    rule = {"full": 1.0, "lora": RULE_GB_PER_B["lora"] / FP32_FULL_GB_PER_B,
            "qlora": RULE_GB_PER_B["qlora"] / FP32_FULL_GB_PER_B}
    for size in a["sizes"]:
        f = by.get((size, "full"))
        if not any((size, m) in by for m in MODES):
            continue
        n = next(by[(size, m)]["params_model"] for m in MODES if (size, m) in by)
        L += [f"## {size} ({n / 1e6:.0f}M parameters)", "",
              "| mode | trainable | after build MB | peak MB | ratio | upd peak MB | ratio | ckpt mapped MB | "
              "upd peak − imports MB | ratio | state est. MB | ratio | rule (vs 16n) |", "|" + "---|" * 13]
        T = ["", *TIME_HEAD]
        for mode in MODES:
            r = by.get((size, mode))
            if r is None:
                err = next((x["error"].strip().splitlines()[-1] for x in raw["rows"]
                            if (x["size"], x["mode"]) == (size, mode) and "error" in x), "not run")
                L.append(f"| {mode} | failed: {err[:150]} |" + " |" * 12)
                continue
            q = lambda k: fmt_ratio(r[k] / f[k] if f else None)  # noqa: E731
            net = lambda x: x["peak_update_mb"] - x["rss_imports_mb"]  # noqa: E731
            L.append("| " + " | ".join([
                mode, f"{r['params_trainable'] / 1e6:.2f}M ({100 * r['params_trainable'] / r['params_model']:.1f}%)",
                f"{r['rss_after_build_mb']:.0f}", f"{r['peak_overall_mb']:.0f}", q("peak_overall_mb"),
                f"{r['peak_update_mb']:.0f}", q("peak_update_mb"), f"{r['checkpoint_mapped_after_updates_mb']:.0f}",
                f"{net(r):.0f}", fmt_ratio(net(r) / net(f) if f else None), f"{state_bytes(r) / MB:.0f}",
                fmt_ratio(state_bytes(r) / state_bytes(f) if f else None), f"{rule[mode]:.3f}x"]) + " |")
            T.append(time_row(r, f))
        L += T + [""]
    big = next((s for s in reversed(a["sizes"]) if all((s, m) in by for m in MODES)), None)
    checks = []
    if big:
        f = by[(big, "full")]
        for mode, lim in (("qlora", 0.35), ("lora", 0.5)):
            for key, what in (("peak_overall_mb", "peak"), ("peak_update_mb", "peak during updates")):
                x = by[(big, mode)][key] / f[key]
                verdict = "met" if x <= lim else "NOT met"
                checks.append(f"{big} {mode} {what} {x:.2f}x full (target <= {lim}x): {verdict}")
        r = by[(big, "qlora")]
        dead = r["checkpoint_mapped_after_updates_mb"]
        x = (r["peak_update_mb"] - dead) / f["peak_update_mb"]
        checks.append(f"{big} qlora peak during updates less the {dead:.0f} MB of fp32 checkpoint pages it keeps "
                      "mapped "
                      f"(dead after quantization, reclaimable, but in RSS): {x:.2f}x full (target <= 0.35x): "
                      f"{'met' if x <= 0.35 else 'NOT met'}")
    checks += time_checks(by, a["threads"])
    for sup in raw.get("supplements", []):
        cells = {(r["size"], r["mode"]): r for r in sup["rows"] if "error" not in r}
        checks += time_checks(cells, sup["args"]["threads"])
    if ("100m", "lora") in by and ("100m", "full") in by:
        x = by[("100m", "lora")]["sync_bytes"] / by[("100m", "full")]["sync_bytes"]
        checks.append(f"100m adapter sync {100 * x:.2f}% of full (target <= 5%): {'met' if x <= 0.05 else 'NOT met'}")
    L += ["## Targets", ""] + ([f"- {c}" for c in checks] or ["- (needs the full, lora and qlora cells of a size)"])
    for sup in raw.get("supplements", []):  # other runs' update times (e.g. --threads 1: CPU seconds = the work)
        sa = sup["args"]
        L += ["", f"## Update time, {' '.join(sa['sizes'])} with --threads {sa['threads']} ({sup['date']})", "",
              f"A separate run (`--sizes {' '.join(sa['sizes'])} --threads {sa['threads']}`): with one thread no "
              "OpenMP thread waits on a descheduled partner, so CPU seconds stay the work itself on shared cores.", ""]
        sby = {(r["size"], r["mode"]): r for r in sup["rows"] if "error" not in r}
        for size in sa["sizes"]:
            L += [f"{size}:", "", *TIME_HEAD] + [time_row(sby[(size, m)], sby.get((size, "full")))
                                                 for m in MODES if (size, m) in sby] + [""]
    imports = statistics.median(r["rss_imports_mb"] for r in rows) if rows else 0
    L += ["", "## Why measured ratios differ from the rule of thumb", "", explain(by, big, imports), ""]
    path.write_text("\n".join(L))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["30m", "100m", "500m"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "MODE"), help="run one cell here, print its JSON row")
    for k, d in zip(CELL_ARGS, (3, 3, 16, 8, 16, 32, 8, 2)):  # --steps: timed updates after one warm-up update
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=d)
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--md-only", action="store_true", help="rewrite lora_memory.md from --results' lora_memory.json")
    ap.add_argument("--supplement", nargs="*", default=[], metavar="JSON",
                    help="with --md-only: add these runs' update-time tables (e.g. a --threads 1 run)")
    a = ap.parse_args()
    results = Path(a.results)
    if a.md_only:
        raw = json.loads((results / "lora_memory.json").read_text())
        if a.supplement:
            raw["supplements"] = [json.loads(Path(p).read_text()) for p in a.supplement]
            (results / "lora_memory.json").write_text(json.dumps(raw, indent=1))
        return write_md(raw, results / "lora_memory.md") or 0
    if a.one:
        return print(json.dumps(run_one(a.one[0], a.one[1], a)), flush=True) or 0
    from bench.models import build

    results.mkdir(parents=True, exist_ok=True)
    raw = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "args": {k: v for k, v in vars(a).items() if k != "one"}, "rows": []}
    for size in a.sizes:
        t0 = time.perf_counter()
        build(size)  # once, cached: the children only load it
        print(f"{size}: model ready ({time.perf_counter() - t0:.0f}s)", flush=True)
        for mode in a.modes:
            r = run_child(size, mode, a)
            raw["rows"].append(r)
            if "error" in r:
                print(f"{size} {mode}: FAILED {r['error'][-800:]}", flush=True)
            else:
                print(f"{size} {mode}: peak {r['peak_overall_mb']:.0f} MB, update peak {r['peak_update_mb']:.0f} MB, "
                      f"after build {r['rss_after_build_mb']:.0f} MB, {r['update_s_median']:.2f} s/update, "
                      f"sync {r['sync_bytes'] / MB:.2f} MB in {r['export_s_median']:.3f}s ({r['wall_s']:.0f}s wall)",
                      flush=True)
            (results / "lora_memory.json").write_text(json.dumps(raw, indent=1))  # partial results survive
    write_md(raw, results / "lora_memory.md")
    print(f"wrote {results / 'lora_memory.json'}, {results / 'lora_memory.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
