"""Every weight-sync transport side by side, on the real roles: one ZeRO trainer rank and one vLLM
engine as Ray actors, the full push the controller makes after each step (gather, send, receive,
checksum, vLLM's reload, engine check), timed per transport in one run.

    .venv/bin/python bench/sync_transports.py [--sizes 30m,100m] [--repeats 5] [--results bench/results]

Reports, per size and transport: seconds per sync (the sync's share of a step), the model's bytes
per second, and both against an in-process copy of the same bytes and the repack ceiling of vLLM's
CPU build (bench/sync_bound.py: the oneDNN repack every new linear weight needs, in the engine's
own process; no sync that hands vLLM new weights can beat it).  Writes sync_transports.json and
sync_transports.md in --results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import models  # noqa: E402
from bench.compare_trl import RESULTS, memcpy_gbps  # noqa: E402

METHODS = ("shm", "object_store", "broadcast")


def measure(size: str, repeats: int) -> dict:
    import ray

    from rlengine.job import build_roles, start_ray
    from rlengine.main import load_config
    from rlengine.placement import release
    from rlengine.weight_sync import WeightSync

    path = str(models.build(size))
    cfg, plan = load_config("grpo_tiny", [f"model.path={path}", "algorithm.kl_coef=0", "rollout.max_model_len=256",
                                          "tracking.progress_bar=false"])
    start_ray(cfg)
    roles, pgs = build_roles(cfg, plan, {"model": path, "tokenizer": path})
    out = {"size": size, "params": models.n_params(Path(path)), "methods": {}}
    try:
        for method in METHODS:
            sync = WeightSync(roles.trainer, roles.rollout, method)
            sync.push(0)  # first push: shared-memory file, process group and vLLM's first reload
            times, metrics = [], {}
            for _ in range(repeats):
                t0 = time.perf_counter()
                metrics = sync.push(0)
                times.append(time.perf_counter() - t0)
            out["bytes"] = metrics["sync/bytes"]
            out["methods"][method] = {"s": statistics.median(times), "min_s": min(times),
                                      "load_s": metrics["sync/load_s"],
                                      "verified": metrics["sync/engine_tensors_verified"]}
            print(json.dumps({size: {method: out["methods"][method]}}), flush=True)
    finally:
        for g in roles.all():
            g.kill()
        release(pgs)
        ray.shutdown()
    out["memcpy_gbps"] = memcpy_gbps(int(out["bytes"]))
    return out


def table(results: dict, bound: dict) -> str:
    rows = ["| model | transport | s / sync | GB/s | vs in-process copy | vs repack ceiling | engine: receive + reload |",
            "|---|---|---|---|---|---|---|"]
    for size, r in results.items():
        ceiling = bound.get(size, {}).get("onednn", {}).get("repack_bound_vs_memcpy")
        for method, m in r["methods"].items():
            gbps = r["bytes"] / m["s"] / 1e9
            vs_copy = gbps / r["memcpy_gbps"]
            rows.append(f"| {r['params'] / 1e6:.1f}M | {method} | {m['s']:.3f} | {gbps:.2f} | {vs_copy:.3f}x | "
                        + (f"{vs_copy / ceiling:.2f}x of {ceiling:.3f}x" if ceiling else "n/a")
                        + f" | {m['load_s']:.3f} s |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="30m,100m")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", default=str(RESULTS))
    a = ap.parse_args()
    results = {size: measure(size, a.repeats) for size in a.sizes.split(",")}
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    bound_file = out / "sync_bound.json"
    bound = json.loads(bound_file.read_text())["sizes"] if bound_file.exists() else {}
    (out / "sync_transports.json").write_text(json.dumps(results, indent=1))
    md = table(results, bound)
    (out / "sync_transports.md").write_text(
        "# Weight-sync transports (one trainer rank, one vLLM engine, same host, fp32)\n\n"
        "Median of the full push per transport; the copy is an in-process memcpy of the same bytes; the\n"
        "ceiling is vLLM-CPU's oneDNN repack alone (sync_bound.json), as a fraction of that copy.\n\n" + md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
