"""A pipeline recipe end to end (real Ray, vLLM CPU, DeepSpeed on the tiny model): two stages chained
by their outputs, a rerun that skips them, and a kill in the middle of the second stage that a rerun
finishes without redoing the first."""
import json
import signal
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, read_summary, run_main

pytestmark = pytest.mark.e2e

# SFT from the untrained tiny model, then GRPO from SFT's export: a few steps each.  Only GRPO
# checkpoints along the way (every 2 steps), so a fault at "after_checkpoint:2" hits GRPO alone.
PIPELINE = """\
pipeline:
  rounds: 1
  start_model: tiny:base
  eval: {limit: 32}
  stages:
    - name: sft
      recipe: sft_tiny
      model: start
      overrides:
        - trainer.total_steps=4
        - sft.stop_at_accuracy=null
        - sft.eval_every_steps=0
        - eval.before=false
        - data.max_test_rows=16
    - name: grpo
      recipe: grpo_tiny
      model: sft
      overrides:
        - trainer.total_steps=4
        - checkpoint.every_steps=2
        - data.prompts_per_step=8
        - algorithm.group_size=4
        - data.max_test_rows=16
"""


@pytest.fixture
def recipes(tmp_path):
    d = tmp_path / "recipes"
    d.mkdir()
    for p in (REPO / "recipes").glob("*.yaml"):
        (d / p.name).symlink_to(p)
    (d / "chain_e2e.yaml").write_text(textwrap.dedent(PIPELINE))
    return {"RLENGINE_RECIPES": str(d)}


def _run(run_dir: Path, env: dict):
    return run_main(["recipe=chain_e2e", f"run_dir={run_dir}", "tracking.progress_bar=false"], env=env)


def _ok(proc):
    assert proc.returncode == 0, \
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


def _pipeline(run_dir: Path) -> dict:
    return json.loads((run_dir / "pipeline_summary.json").read_text())


def test_two_stages_chained_then_a_rerun_skips_them(recipes, tmp_path):
    run_dir = tmp_path / "run"
    _ok(proc := _run(run_dir, recipes))
    s = _pipeline(run_dir)
    assert s["finished"] and [(r["stage"], r["status"]) for r in s["stages"]] == [("sft", "ran"), ("grpo", "ran")]
    sft, grpo = read_summary(run_dir / "round1" / "sft"), read_summary(run_dir / "round1" / "grpo")
    # GRPO trained from SFT's export; the summary lists both models and their held-out accuracy.
    assert json.loads((run_dir / "round1" / "grpo" / "config.json").read_text())["model"]["path"] == \
        sft["hf_checkpoint"]
    assert s["stages"][1]["inputs"] == {"model.path": sft["hf_checkpoint"]}
    assert [r["model"] for r in s["stages"]] == [sft["hf_checkpoint"], grpo["hf_checkpoint"]]
    assert s["start"]["model"] == "tiny:base" and s["start"]["heldout_accuracy"] is not None
    assert all(r["heldout_n"] == 32 and 0 <= r["heldout_accuracy"] <= 1 for r in s["stages"])
    assert (run_dir / "heldout_accuracy.png").stat().st_size > 1000
    assert "held-out accuracy (tiny:test" in proc.stdout

    again = _run(run_dir, recipes)
    _ok(again)
    s2 = _pipeline(run_dir)
    assert [r["status"] for r in s2["stages"]] == ["skipped: finished earlier"] * 2
    assert [r["heldout_accuracy"] for r in s2["stages"]] == [r["heldout_accuracy"] for r in s["stages"]]
    assert "roles up" not in again.stderr  # no stage started Ray
    assert read_summary(run_dir / "round1" / "grpo")["wall_time_s"] == grpo["wall_time_s"]


def test_a_kill_in_the_second_stage_resumes_it_without_redoing_the_first(recipes, tmp_path):
    run_dir = tmp_path / "run"
    killed = _run(run_dir, {**recipes, "RLENGINE_FAULT": "after_checkpoint:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    sft_summary = read_summary(run_dir / "round1" / "sft")
    assert not (run_dir / "round1" / "grpo" / "summary.json").exists()
    assert (run_dir / "round1" / "grpo" / "checkpoints" / "latest").read_text().strip() == "step_000002"

    proc = _run(run_dir, recipes)
    _ok(proc)
    s = _pipeline(run_dir)
    assert [(r["stage"], r["status"]) for r in s["stages"]] == [("sft", "skipped: finished earlier"),
                                                                ("grpo", "ran")]
    assert read_summary(run_dir / "round1" / "sft") == sft_summary  # not redone
    grpo = read_summary(run_dir / "round1" / "grpo")
    assert grpo["resumed_from_step"] == 2 and grpo["steps"] == 4
    assert "round 1 sft: finished earlier" in (run_dir / "pipeline.log").read_text()
