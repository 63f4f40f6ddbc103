"""The acceptance run: the embedded default learns, and its numbers hold up to a separate evaluation."""
import pytest

from rlengine.evaluate import greedy_accuracy
from tests.conftest import read_summary, run_main

pytestmark = pytest.mark.e2e


def test_grpo_tiny_default_learns(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main(["recipe=grpo_tiny", f"run_dir={run_dir}", "tracking.progress_bar=false"], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    s = read_summary(run_dir)
    gain = s["eval/accuracy_after"] - s["eval/accuracy_before"]
    assert gain >= 0.15, f"held-out accuracy {s['eval/accuracy_before']:.3f} -> {s['eval/accuracy_after']:.3f}"
    # The printed numbers agree with plain transformers greedy decoding of the exported checkpoint.
    sep = greedy_accuracy(s["hf_checkpoint"], "tiny:test", 8, "reward_fns/math.py:compute_score")
    assert sep["accuracy"] == pytest.approx(s["eval/accuracy_after"], abs=0.01)
