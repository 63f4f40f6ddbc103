"""best_of_n through the real stack (Ray, vLLM on CPU, the reward pool) on tiny:sft: the files, the
per-prompt statistics and the summary; a driver killed between a step's append and its checkpoint
resumes with no prompt lost or written twice; a threshold that keeps nothing fails the job."""
import json
import signal
from pathlib import Path

import pytest

from tests.conftest import read_metrics, read_summary, run_main

pytestmark = pytest.mark.e2e

# 24 prompts, 8 a step: 3 steps of 8 x 4 samples.
ARGS = ["recipe=best_of_n_tiny", "sample.k=4", "data.prompts_per_step=8", "sample.max_prompts=24",
        "tracking.progress_bar=false", "checkpoint.every_steps=1"]
FILES = ("sft", "pairs", "stats")


def _ok(proc):
    out = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, out


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("best_of_n") / "run"
    _ok(run_main([*ARGS, f"run_dir={run_dir}"]))
    return run_dir


def test_files_stats_and_summary(uninterrupted):
    s = read_summary(uninterrupted)
    assert s["steps"] == 3 and s["algorithm"] == "best_of_n"
    assert "trainer" not in s["placement"] and "hf_checkpoint" not in s
    assert s["outputs"] == {n: str(uninterrupted / "data" / f"{n}.jsonl") for n in FILES}
    stats = _rows(s["outputs"]["stats"])
    assert [r["index"] for r in stats] == list(range(24)) and all(r["n"] == 4 for r in stats)
    sft = _rows(s["outputs"]["sft"])
    assert s["sample/prompts"] == 24 and s["sample/samples"] == 96 and s["sample/rows"] == len(sft) > 0
    assert len(sft) == sum(r["kept"] for r in stats) and len({r["index"] for r in sft}) == len(sft)  # top_n 1
    for r in sft:  # min_score 1.0: the verifier's correct answers only
        assert r["score"] == 1.0 and r["correct"]
        assert r["messages"] == [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["completion"]}]
        assert r["completion"].strip() == r["answer"]
    assert s["sample/kept_accuracy"] == 1.0
    assert s["sample/single_accuracy"] == pytest.approx(sum(r["correct"] for r in stats) / 96)
    assert s["sample/pass_at_k"] == pytest.approx(sum(r["pass_at_k"] for r in stats) / 24)
    assert s["sample/pass_at_k"] >= s["sample/single_accuracy"] and not s["sample/empty"]
    pairs = _rows(s["outputs"]["pairs"])
    assert len(pairs) == s["sample/pairs"]
    assert all(p["chosen_score"] - p["rejected_score"] >= 0.5 and p["chosen"] != p["rejected"] for p in pairs)
    steps = [m for m in read_metrics(uninterrupted) if "sample/single_accuracy" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    # No trainer: a checkpoint is the driver state (prompts written per file) alone.
    ckpt = Path(s["checkpoint"])
    assert not (ckpt / "trainer").exists()
    state = json.loads((ckpt / "driver_state.json").read_text())["controller"]["best_of_n"]
    assert state["lines"] == {"sft": len(sft), "pairs": len(pairs), "stats": 24}


def test_killed_between_append_and_checkpoint_resumes_without_loss_or_duplicates(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    # The driver dies while writing checkpoint 2: step 2's rows are in the files, the newest
    # complete checkpoint is step 1's.
    killed = run_main([*ARGS, f"run_dir={run_dir}"], env={"RLENGINE_FAULT": "checkpoint_write:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(_rows(run_dir / "data" / "stats.jsonl")) == 16
    _ok(run_main([*ARGS, f"run_dir={run_dir}"]))
    s = read_summary(run_dir)
    assert s["resumed_from_step"] == 1 and s["sample/prompts"] == 24
    assert [r["index"] for r in _rows(run_dir / "data" / "stats.jsonl")] == list(range(24))
    # Same seeds per (step, prompt): the resumed files are the uninterrupted run's, byte for byte.
    for name in FILES:
        want = (uninterrupted / "data" / f"{name}.jsonl").read_text()
        assert (run_dir / "data" / f"{name}.jsonl").read_text() == want, name
    for key in ("sample/rows", "sample/single_accuracy", "sample/pass_at_k", "sample/pairs"):
        assert s[key] == read_summary(uninterrupted)[key]


def test_a_threshold_that_keeps_nothing_fails_with_the_summary_saying_so(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main(["recipe=best_of_n_tiny", "sample.k=2", "data.prompts_per_step=8", "sample.max_prompts=8",
                     "sample.min_score=2.0", "tracking.progress_bar=false", f"run_dir={run_dir}"])
    assert proc.returncode == 2 and "best_of_n kept no sample of 16" in proc.stderr, proc.stderr[-3000:]
    s = read_summary(run_dir)
    assert s["sample/empty"] and s["sample/rows"] == 0
    assert (run_dir / "data" / "sft.jsonl").read_text() == ""
