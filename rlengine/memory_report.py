"""The memory planner's report: the --json document and the text `python -m rlengine.plan` prints
(rlengine/memory.py computes it, rlengine/memory_model.py has the formulas)."""
from __future__ import annotations

import dataclasses
import json
import sys

from rlengine import memory_model as mm
from rlengine.memory import (DEFAULT_GPU_GIB, _gib, evaluate, gpu_capacity, host_memory, min_devices,
                             model_config_dir, scenario, shapes_of)
from rlengine.memory_model import GiB


def report(cfg, plan, capacity: int | None = None, precision: str = "auto") -> dict:
    """The whole plan as the --json output: device, per role {bytes, total, devices}, per-device
    peaks, devices needed (as configured) and the minimal hybrid layout with its placement."""
    from rlengine.placement import describe_plan

    gpu = cfg.resources.device == "cuda"
    source = "--gpu-memory-gib" if capacity else None
    if gpu and capacity is None:
        capacity, source = gpu_capacity()
        if capacity is None:
            capacity, source = int(DEFAULT_GPU_GIB * GiB), f"default {DEFAULT_GPU_GIB:g} GiB"
    elif not gpu:
        capacity, source = host_memory(), "MemTotal"
    s, shapes = scenario(cfg, plan, precision), shapes_of(cfg)
    ev = evaluate(s, shapes, capacity)
    policy = shapes["policy"]
    states, _ = mm.trainer_states(policy, dataclasses.replace(s, world_size=1, zero_stage=max(1, s.zero_stage)))
    return {"recipe": cfg.recipe, "device": {"kind": cfg.resources.device, "memory_bytes": capacity, "source": source},
            "model": {"path": cfg.model.path, "config": model_config_dir(cfg.model.path), "params": policy.n_params(),
                      "dtype": cfg.model.dtype,
                      "precision": precision if precision != "auto" else ("fp32" if s.b == 4 else "amp"),
                      "state_bytes_per_param": sum(states.values()) / policy.n_params()},
            "roles": ev["roles"], "per_device": ev["per_device"], "fits": ev["fits"],
            "devices_needed": ev["devices_needed"],
            # The hybrid layout colocates trainer ranks with the engines: none for a stage that does not train.
            "minimal": min_devices(s, shapes, capacity) if gpu and s.use_trainer else None,
            "placement": describe_plan(cfg, plan).splitlines()}


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _text(rep: dict) -> str:
    d, m = rep["device"], rep["model"]
    unit = "per GPU" if d["kind"] == "cuda" else "host memory"
    lines = [f"memory plan: recipe={rep['recipe']}, resources.device={d['kind']}, {_gib(d['memory_bytes'])} {unit} "
             f"({d['source']})",
             f"model {m['path']}: {_count(m['params'])} parameters (config {m['config']}), {m['dtype']}, "
             f"precision {m['precision']}: {m['state_bytes_per_param']:.1f} B/param of model states on one rank"]
    for name, r in rep["roles"].items():
        kinds = "  ".join(f"{k} {v / GiB:.2f}" for k, v in r["bytes"].items() if v)
        host = "  ".join(f"{k} {v / GiB:.2f}" for k, v in r["host_bytes"].items() if v)
        lines.append(f"  {name} ({r['devices']} x {r['per']}): total {_gib(r['total'])}; GiB by kind: {kinds}"
                     + (f"; on host: {host}" if host else ""))
        if "kv_tokens" in r:
            lines.append(f"    KV cache: {r['kv_bytes_per_token'] / 1024:.1f} KiB/token per rank, "
                         f"{r['kv_tokens']:,} tokens fit"
                         + ("" if r["fits_max_model_len"] else " (LESS than one max_model_len sequence)"))
        if "micro_batch" in r:
            mb = r["micro_batch"]
            lines.append(f"    micro-batch {mb['rows']} rows x {mb['width']} tokens ({mb['tokens']} tokens); "
                         f"resident {_gib(r['resident'])}, update working peak {_gib(r['working_peak'])}")
    lines.append("per device (peak vs capacity):")
    for g in rep["per_device"]:
        phases = ", ".join(f"{k} {_gib(v)}" for k, v in {**g["phases"], **g.get("processes", {})}.items())
        verdict = "fits" if g["fits"] else "DOES NOT FIT"
        lines.append(f"  {g['count']} x {g['devices']}: {phases}; peak {_gib(g['peak'])} of {_gib(g['capacity'])}: "
                     f"{verdict} (margin {_gib(g['capacity'] - g['peak'])})")
    if d["kind"] == "cuda":
        lines.append(f"devices needed as configured: {rep['devices_needed']} GPUs")
        mn = rep["minimal"]
        if "trainer" in rep["roles"]:
            lines.append(f"minimal hybrid layout: {mn['devices']} GPUs: {' '.join(mn['overrides'])}" if mn
                         else "minimal hybrid layout: none up to 1024 GPUs of this size")
    lines += ["placement as configured:", *rep["placement"]]
    return "\n".join(lines)


USAGE = """usage: python -m rlengine.plan [recipe=NAME] [key=value ...] [--json] [--gpu-memory-gib G]
                                [--precision auto|pure_bf16]

  Per role and per device: parameters, gradients, optimizer states, activations, logits, ZeRO
  buffers, the vLLM engine and its KV cache; the devices needed and whether each fits.
  --gpu-memory-gib  memory of one GPU (default: torch.cuda's when visible, else 80)
  --precision       pure_bf16: bf16 master weights, gradients and Adam states (not what rlengine runs)
"""


def cli(argv: list[str] | None) -> int:
    """rlengine.memory.main's work: parse, compose, print the plan; returns the exit code."""
    from rlengine.compose import load_config
    from rlengine.errors import ConfigError
    from rlengine.main import parse_argv

    args, opts = list(sys.argv[1:] if argv is None else argv), {}
    for name in ("--gpu-memory-gib", "--precision"):
        for i, a in enumerate(args):
            if a == name and i + 1 < len(args):
                opts[name] = args.pop(i + 1)
                args.pop(i)
                break
            if a.startswith(name + "="):
                opts[name] = args.pop(i).split("=", 1)[1]
                break
    recipe, overrides, flags = parse_argv(args)
    if flags - {"--json", "--help", "-h"} or opts.get("--precision", "auto") not in ("auto", "pure_bf16"):
        print(USAGE, file=sys.stderr)
        return 2
    if flags & {"--help", "-h"}:
        print(USAGE)
        return 0
    try:
        cfg, plan = load_config(recipe, overrides)
        cap = int(float(opts["--gpu-memory-gib"]) * GiB) if "--gpu-memory-gib" in opts else None
        rep = report(cfg, plan, cap, opts.get("--precision", "auto"))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep, indent=1) if "--json" in flags else _text(rep))
    return 0 if rep["fits"] else 1
