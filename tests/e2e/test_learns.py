"""The acceptance run: the embedded default learns, and its numbers hold up to a separate evaluation."""
import pytest

from rlengine.evaluate import greedy_accuracy
from tests.conftest import read_summary, run_main

pytestmark = pytest.mark.e2e


def _run_recipe_and_check_gain(recipe: str, run_dir) -> dict:
    """Run a recipe as a user would; held-out greedy accuracy must rise by >= 15 points."""
    proc = run_main([f"recipe={recipe}", f"run_dir={run_dir}", "tracking.progress_bar=false"], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    s = read_summary(run_dir)
    gain = s["eval/accuracy_after"] - s["eval/accuracy_before"]
    assert gain >= 0.15, f"held-out accuracy {s['eval/accuracy_before']:.3f} -> {s['eval/accuracy_after']:.3f}"
    return s


def test_grpo_tiny_default_learns(tmp_path):
    s = _run_recipe_and_check_gain("grpo_tiny", tmp_path / "run")
    # The printed numbers agree with plain transformers greedy decoding of the exported checkpoint.
    sep = greedy_accuracy(s["hf_checkpoint"], "tiny:test", 8, "reward_fns/math.py:compute_score")
    assert sep["accuracy"] == pytest.approx(s["eval/accuracy_after"], abs=0.01)


@pytest.mark.acceptance
def test_rm_tiny_reaches_90_percent_pairwise():
    """The tiny reward model (built once, cached as tiny:rm) ranks held-out pairs >= 90% right."""
    import json

    from rlengine import tiny

    run_dir = tiny.cache_root() / "rm_run"
    if not tiny.is_built("rm"):
        proc = run_main(["recipe=rm_tiny", f"run_dir={run_dir}", f"checkpoint.export_hf_to={tiny.trained_dir('rm')}",
                         "tracking.progress_bar=false"], timeout=1200)
        assert proc.returncode == 0, proc.stderr[-6000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["eval/pairwise_accuracy_after"] >= 0.9, s["eval/pairwise_accuracy_after"]
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(str(tiny.trained_dir("rm"))).config.num_labels == 1


@pytest.mark.acceptance
def test_ppo_tiny_learns_and_value_loss_falls(tmp_path):
    from tests.conftest import read_metrics

    run_dir = tmp_path / "run"
    s = _run_recipe_and_check_gain("ppo_tiny", run_dir)
    assert s["wall_time_s"] <= 600, s["wall_time_s"]  # the acceptance: within 10 minutes
    vf = [m["critic/value_loss"] for m in read_metrics(run_dir) if "critic/value_loss" in m]
    assert sum(vf[-10:]) / 10 < sum(vf[:10]) / 10, "the critic's value loss did not fall"


@pytest.mark.acceptance
def test_grpo_tiny_lora_learns_within_ten_minutes(tmp_path):
    """LoRA GRPO from grpo_tiny's warm start: +15 points, adapter-only sync every step, fp32 drift."""
    from tests.conftest import read_metrics

    run_dir = tmp_path / "run"
    s = _run_recipe_and_check_gain("grpo_tiny_lora", run_dir)
    assert s["wall_time_s"] <= 600, s["wall_time_s"]
    steps = [m for m in read_metrics(run_dir) if "sync/logprob_drift" in m]
    assert all(m["sync/adapter_only"] == 1.0 for m in steps)
    assert max(m["sync/logprob_drift"] for m in steps) < 1e-5
    sep = greedy_accuracy(s["hf_checkpoint"], "tiny:test", 8, "reward_fns/math.py:compute_score")
    assert sep["accuracy"] == pytest.approx(s["eval/accuracy_after"], abs=0.01)  # the merged export


@pytest.mark.acceptance
def test_sft_tiny_qlora_learns(tmp_path):
    """QLoRA SFT (4-bit NF4 base on CPU): held-out accuracy rises >= 10 points over its steps."""
    run_dir = tmp_path / "run"
    proc = run_main(["recipe=sft_tiny_qlora", f"run_dir={run_dir}", "tracking.progress_bar=false"], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    s = read_summary(run_dir)
    assert s["eval/accuracy_after"] - s["eval/accuracy_before"] >= 0.10, s
