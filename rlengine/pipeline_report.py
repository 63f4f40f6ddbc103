"""What a pipeline reports (rlengine/pipeline.py): the held-out check run on the policy after each
stage, pipeline_summary.json, and the plot of held-out accuracy over stages and rounds."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from rlengine import tiny

if TYPE_CHECKING:
    from rlengine.pipeline_spec import PipelineSpec

log = logging.getLogger("rlengine.pipeline")
REPO = Path(__file__).resolve().parent.parent
SUMMARY = "pipeline_summary.json"


class EvaluationError(RuntimeError):
    """The pipeline's held-out check could not score a model (exit code 1)."""


def evaluate_model(model: str, spec: "PipelineSpec", out: Path) -> dict:
    """Held-out greedy accuracy of a causal LM by the pipeline's check, in a process of its own
    (the driver keeps no model and no CUDA context); cached in `out` for reruns."""
    ev = spec.eval
    want = {"model": model, "eval": dataclasses.asdict(ev)}
    if out.exists():
        try:
            cached = json.loads(out.read_text())
            if {k: cached.get(k) for k in want} == want:
                return cached
        except ValueError:
            pass
    path = tiny.resolve_path(model) if tiny.is_tiny(model) else model
    cmd = [sys.executable, "-m", "rlengine.evaluate", "--model", path, "--data", ev.data, "--split", ev.split,
           "--max-new-tokens", str(ev.max_new_tokens), "--reward", ev.fn, "--prompt-key", ev.prompt_key,
           "--answer-key", ev.answer_key, "--max-prompt-tokens", str(ev.max_prompt_tokens),
           "--threshold", str(ev.threshold), "--batch-size", str(ev.batch_size), "--device", ev.device,
           "--dtype", ev.dtype]
    cmd += ["--chat-template"] if ev.chat_template else []
    cmd += ["--system-prompt", ev.system_prompt] if ev.system_prompt else []
    cmd += ["--limit", str(ev.limit)] if ev.limit else []
    cmd += ["--config-name", ev.config_name] if ev.config_name else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise EvaluationError(f"held-out evaluation of {model} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    result = {**want, "accuracy": res["accuracy"], "n": res["n"], "eval_s": time.time() - t0}
    out.write_text(json.dumps(result, indent=2))
    log.info("held-out accuracy of %s: %.3f (n=%d, greedy)", model, res["accuracy"], res["n"])
    return result


def write_summary(spec: "PipelineSpec", root: Path, start_eval: Optional[dict], rows: list[dict], started: float,
                  finished: bool) -> dict:
    """<run_dir>/pipeline_summary.json (rewritten after every stage) and the plot."""
    by_round: dict[int, float] = {}
    for row in rows:
        if row["heldout_accuracy"] is not None:
            by_round[row["round"]] = row["heldout_accuracy"]  # the round's last policy
    out = {"pipeline": spec.name, "recipe_file": str(spec.file), "run_dir": str(root), "rounds": spec.rounds,
           "finished": finished, "eval": dataclasses.asdict(spec.eval),
           "start": {"model": spec.start_model, "heldout_accuracy": start_eval["accuracy"] if start_eval else None},
           "stages": rows, "heldout_accuracy_by_round": {str(r): a for r, a in sorted(by_round.items())},
           "wall_time_s": time.time() - started}
    tmp = root / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, root / SUMMARY)
    out["plot"] = plot(out, root / spec.plot)
    return out


def format_table(summary: dict) -> str:
    lines = [f"held-out accuracy ({summary['eval']['data']}, {summary['eval']['fn']}, greedy):",
             f"  start        {summary['start']['heldout_accuracy']:.3f}  {summary['start']['model']}"]
    for row in summary["stages"]:
        acc = "  -  " if row["heldout_accuracy"] is None else f"{row['heldout_accuracy']:.3f}"
        lines.append(f"  round {row['round']} {row['stage']:<10} {acc}  ({row['status']})")
    return "\n".join(lines)


def points(summary: dict) -> list[tuple[str, int, float]]:
    """(label, round, accuracy): the start model (round 0), then each evaluated stage."""
    out = []
    if summary["start"]["heldout_accuracy"] is not None:
        out.append(("start", 0, summary["start"]["heldout_accuracy"]))
    for row in summary["stages"]:
        if row["heldout_accuracy"] is not None:
            out.append((f"r{row['round']} {row['stage']}", row["round"], row["heldout_accuracy"]))
    return out


def plot(summary: dict, path: Path) -> Optional[str]:
    """Write the plot; returns its path (None when there is nothing to plot yet)."""
    pts = points(summary)
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: the driver may run on a cluster node
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(pts) + 2), 3.6))
    xs = list(range(len(pts)))
    ax.plot(xs, [p[2] for p in pts], marker="o", color="tab:blue")
    for x, (_, _, acc) in zip(xs, pts):
        ax.annotate(f"{acc:.3f}", (x, acc), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    for r in sorted({p[1] for p in pts if p[1] > 0}):
        idx = [x for x, p in zip(xs, pts) if p[1] == r]
        if r % 2:
            ax.axvspan(min(idx) - 0.5, max(idx) + 0.5, color="0.93", zorder=0)
        ax.text((min(idx) + max(idx)) / 2, 0.02, f"round {r}", ha="center", transform=ax.get_xaxis_transform(),
                fontsize=8, color="0.4")
    ax.set_xticks(xs, [p[0] for p in pts], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out accuracy")
    ev = summary["eval"]
    ax.set_title(f"{summary['pipeline']}: {ev['data']} (greedy, {Path(ev['fn'].split(':')[0]).stem})", fontsize=9)
    ax.set_ylim(0, max(1e-3, max(p[2] for p in pts)) * 1.2)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return str(path)
