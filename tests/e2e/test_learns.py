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


def _teacher_accuracy() -> float:
    """Held-out greedy accuracy of tiny:teacher (built by recipe=sft_tiny_teacher on first use)."""
    from rlengine import tiny

    if not tiny.is_built("teacher"):
        proc = run_main(["recipe=sft_tiny_teacher", f"run_dir={tiny.cache_root() / 'teacher_run'}",
                         f"checkpoint.export_hf_to={tiny.trained_dir('teacher')}", "tracking.progress_bar=false"],
                        timeout=3600)
        assert proc.returncode == 0, proc.stderr[-6000:]
    return greedy_accuracy(str(tiny.trained_dir("teacher")), "tiny:test", 8,
                           "reward_fns/math.py:compute_score")["accuracy"]


@pytest.mark.acceptance
def test_distill_tiny_reaches_90_percent_of_the_teacher_and_beats_sft(tmp_path):
    """distill_tiny's student (<= 1/4 of the teacher's parameters) reaches >= 90% of the teacher's
    held-out accuracy and beats the same student trained by plain SFT on the same rows and steps."""
    from transformers import AutoModelForCausalLM

    from rlengine import tiny

    teacher = _teacher_accuracy()
    student_n, teacher_n = (AutoModelForCausalLM.from_pretrained(p).num_parameters()
                            for p in (tiny.resolve_path("tiny:base"), str(tiny.trained_dir("teacher"))))
    assert 4 * student_n <= teacher_n, (student_n, teacher_n)
    runs = {}
    for name, extra in (("distill", []), ("sft", ["algorithm.name=sft", "teacher.path=null"])):
        proc = run_main(["recipe=distill_tiny", f"run_dir={tmp_path / name}", "tracking.progress_bar=false", *extra],
                        timeout=2400)
        assert proc.returncode == 0, proc.stderr[-6000:]
        runs[name] = read_summary(tmp_path / name)["eval/accuracy_after"]
    assert runs["distill"] >= 0.9 * teacher, (runs, teacher)
    assert runs["distill"] > runs["sft"], (runs, teacher)


@pytest.mark.acceptance
def test_opd_tiny_learns_and_its_reverse_kl_falls(tmp_path):
    from tests.conftest import read_metrics

    _teacher_accuracy()
    run_dir = tmp_path / "run"
    _run_recipe_and_check_gain("opd_tiny", run_dir)
    kl = [m["distill/kl"] for m in read_metrics(run_dir) if "distill/kl" in m]
    assert sum(kl[-10:]) / 10 < sum(kl[:10]) / 10, "the reverse KL to the teacher did not fall"


@pytest.mark.acceptance
def test_best_of_n_tiny_keeps_3x_the_single_sample_accuracy_and_sft_on_it_learns(tmp_path):
    """K=16 from tiny:sft: the kept rows' accuracy (by the verifier) >= 3x one sample's, and SFT of
    tiny:sft on them raises held-out accuracy."""
    proc = run_main(["recipe=best_of_n_tiny", "sample.k=16", f"run_dir={tmp_path / 'sample'}",
                     "tracking.progress_bar=false"], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    s = read_summary(tmp_path / "sample")
    assert s["sample/rows"] > 0 and s["sample/kept_accuracy"] >= 3 * s["sample/single_accuracy"], s
    proc = run_main(["recipe=sft_tiny", "model.path=tiny:sft", f"data.train_path={s['outputs']['sft']}",
                     "sft.format=completion", "sft.stop_at_accuracy=null", "trainer.total_steps=60", "trainer.lr=5e-4",
                     f"run_dir={tmp_path / 'sft'}", "tracking.progress_bar=false"], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-6000:]
    t = read_summary(tmp_path / "sft")
    assert t["eval/accuracy_after"] > t["eval/accuracy_before"], t


@pytest.mark.acceptance
def test_flywheel_tiny_improves_every_round_within_20_minutes(tmp_path):
    import json

    run_dir = tmp_path / "fw"
    proc = run_main(["recipe=flywheel_tiny", f"run_dir={run_dir}", "tracking.progress_bar=false"], timeout=2400)
    assert proc.returncode == 0, proc.stderr[-6000:]
    s = json.loads((run_dir / "pipeline_summary.json").read_text())
    by_round, start = s["heldout_accuracy_by_round"], s["start"]["heldout_accuracy"]
    assert by_round["2"] > by_round["1"] > start, (start, by_round)
    assert s["wall_time_s"] <= 1200, s["wall_time_s"]
    assert (run_dir / "flywheel.png").stat().st_size > 0
