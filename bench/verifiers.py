"""Verifier throughput: math answers/s and code test runs/s through the reward manager's process
pool, at 1 and 2 workers, on a fixed set.

    .venv/bin/python bench/verifiers.py [--math 2000] [--code 40] [--baseline DIR]

Writes bench/results/verifiers.json and prints a markdown table (copied into the README). With
`--baseline DIR` (a checkout of the commit to compare with: `git worktree add DIR REF`), that
checkout's own bench runs first, in the same invocation on the same machine, and the table gets
the ratio of this tree's throughput to the baseline's; `--repeat K` alternates the two K times
and reports medians (a shared 2-core machine varies by tens of percent between runs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlengine.config import RewardConfig, RewardFnConfig  # noqa: E402
from rlengine.rewards import RewardManager  # noqa: E402


def math_set(n: int, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    forms = [
        lambda a, r: f"We add them. The answer is {r}.",
        lambda a, r: f"Step by step... so the result is \\boxed{{{r}}}",
        lambda a, r: f"Computing gives {r}.\n#### {r}",
        lambda a, r: f"<think>{a} then more</think> \\boxed{{\\frac{{{2 * r}}}{{2}}}}",
        lambda a, r: f"It is {r + rng.choice([0, 1])}",
        lambda a, r: f"The answer is $\\boxed{{{r}.0}}$ dollars",
    ]
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        rows.append((f"What is {a}+{b}?", forms[i % len(forms)](a, a + b), str(a + b), {}))
    return rows


def code_set(n: int) -> list[tuple]:
    rows = []
    for i in range(n):
        body = f"def f(x):\n    return x * {i % 7} + 1\n"
        tests = [f"assert f({k}) == {k * (i % 7) + 1}" for k in range(3)]
        rows.append(("write f", f"```python\n{body}```", {"tests": tests}, {}))
    return rows


def measure(fn: str, rows: list[tuple], workers: int, per_row_runs: int = 1) -> dict:
    mgr = RewardManager(RewardConfig(fns=[RewardFnConfig(fn=fn)], num_workers=workers, timeout_s=30))
    cols = [list(c) for c in zip(*rows)]
    mgr.score(*[c[:4] for c in cols])  # warm-up: pool start and imports are not part of the figure
    t0 = time.perf_counter()
    res = mgr.score(*cols)
    dt = time.perf_counter() - t0
    mgr.close()
    return {"items": len(rows), "seconds": dt, "per_s": len(rows) * per_row_runs / dt,
            "mean_score": float(res.scores_N.mean()), "errors": res.errors, "timeouts": res.timeouts}


def baseline_run(checkout: Path, n_math: int, n_code: int) -> dict:
    import subprocess

    script = checkout / "bench" / "verifiers.py"
    subprocess.run([sys.executable, str(script), "--math", str(n_math), "--code", str(n_code)], cwd=checkout,
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads((checkout / "bench" / "results" / "verifiers.json").read_text())


def measure_all(n_math: int, n_code: int) -> dict:
    out = {"math": {}, "code": {}}
    for w in (1, 2):
        out["math"][w] = measure("reward_fns/math.py:compute_score", math_set(n_math), w)
        out["code"][w] = measure("reward_fns/code.py:compute_score", code_set(n_code), w, per_row_runs=3)
    return out


def _median_run(runs: list[dict]) -> dict:
    """Per (verifier, workers): the run with the median throughput."""
    out = {}
    for kind in ("math", "code"):
        out[kind] = {}
        for w in runs[0][kind]:
            cells = sorted((r[kind][w] for r in runs), key=lambda c: c["per_s"])
            out[kind][str(w)] = {**cells[len(cells) // 2], "per_s_all": [c["per_s"] for c in cells]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--math", type=int, default=2000)
    ap.add_argument("--code", type=int, default=40)
    ap.add_argument("--baseline", type=Path, default=None, help="checkout of the commit to compare with")
    ap.add_argument("--repeat", type=int, default=1, help="alternate baseline and this tree this many times; "
                                                          "medians are reported")
    args = ap.parse_args()
    base_runs, runs = [], []
    for _ in range(max(1, args.repeat)):  # alternated, so that a slow spell of a shared machine hits both
        if args.baseline:
            base_runs.append(baseline_run(args.baseline.resolve(), args.math, args.code))
        runs.append(measure_all(args.math, args.code))
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "repeat": len(runs), **_median_run(runs)}
    base = _median_run(base_runs) if base_runs else None
    if base is not None:
        out["baseline"] = {"checkout": str(args.baseline), **base}
    Path(__file__).resolve().parent.joinpath("results", "verifiers.json").write_text(json.dumps(out, indent=2))
    ratio_col = " | vs baseline" if base else ""
    print(f"| verifier | workers | throughput | mean score{ratio_col} |\n|---|---|---|---|{'---|' if base else ''}")
    for kind, unit in (("math", "answers/s"), ("code", "test runs/s")):
        for w in ("1", "2"):
            r = out[kind][w]
            ratio = f" | {r['per_s'] / base[kind][w]['per_s']:.2f}x" if base else ""
            print(f"| {kind} | {w} | {r['per_s']:.0f} {unit} | {r['mean_score']:.2f}{ratio} |")


if __name__ == "__main__":
    main()
