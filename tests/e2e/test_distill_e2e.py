"""Distillation through the real topology on the tiny model, a few steps each: the teacher role
scores tokens, the student trains on the divergence, metrics by their names; bad teachers refused
before Ray starts.  The learning runs are in tests/e2e/test_learns.py (-m acceptance)."""
import re
import time

import pytest

from tests.conftest import read_metrics, read_summary, run_main

pytestmark = pytest.mark.e2e

FAST = ["data.max_test_rows=16", "tracking.progress_bar=false", "eval.before=false"]


def _check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def test_offline_distill_top_k_three_steps(tmp_path):
    run_dir = tmp_path / "run"
    # tiny:sft as the teacher (a trained model CI has anyway); top 8 ids plus the tail bucket.
    _check(run_main(["recipe=distill_tiny", "teacher.path=tiny:sft", "teacher.top_k=8", "trainer.total_steps=3",
                     "data.prompts_per_step=16", "trainer.micro_batch_size=8", "distill.divergence=jsd",
                     *FAST, f"run_dir={run_dir}"]))
    steps = [m for m in read_metrics(run_dir) if "distill/kl" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for m in steps:
        assert 0 < m["distill/kl"] <= 0.7 and m["distill/ce"] > 0 and m["distill/loss"] > 0  # jsd <= log 2
        assert 0 < m["distill/topk_mass"] < 1 and m["distill/teacher_entropy"] > 0
        assert m["timing_s/teacher"] > 0 and m["actor/grad_norm"] > 0
    s = read_summary(run_dir)
    assert "teacher" in s["placement"] and "eval/accuracy_after" in s


def test_on_policy_distill_three_steps_full_vocabulary(tmp_path):
    run_dir = tmp_path / "run"
    _check(run_main(["recipe=opd_tiny", "model.path=tiny:base", "teacher.path=tiny:sft", "teacher.top_k=0",
                     "trainer.total_steps=3", "data.prompts_per_step=8", "eval.every_steps=0", *FAST,
                     f"run_dir={run_dir}"]))
    steps = [m for m in read_metrics(run_dir) if "distill/kl" in m]
    assert len(steps) == 3
    for m in steps:
        assert m["distill/kl"] > 0 and m["distill/topk_mass"] == pytest.approx(1.0)
        assert m["sync/logprob_drift"] < 0.05 and m["sync/checksum_ok"] == 1  # the engines sample the student
        assert "distill/reverse_kl_sampled" in m and "reward/mean" in m and "actor/pg_loss" not in m
    # A random student far from a trained teacher: the reverse KL falls over the first steps.
    assert steps[-1]["distill/kl"] < steps[0]["distill/kl"]


def test_on_policy_distill_with_a_verifier_reward(tmp_path):
    run_dir = tmp_path / "run"
    _check(run_main(["recipe=opd_tiny", "teacher.path=tiny:sft", "teacher.top_k=4", "distill.reward_coef=1.0",
                     "trainer.total_steps=2", "data.prompts_per_step=8", "eval.every_steps=0", "eval.after=false",
                     *FAST, f"run_dir={run_dir}"]))
    steps = [m for m in read_metrics(run_dir) if "distill/kl" in m]
    assert len(steps) == 2 and all("actor/pg_loss" in m for m in steps)


@pytest.mark.parametrize("override,match", [
    ("teacher.path=tiny:chat_base", "teacher.path.*differ"),  # another tokenizer and vocabulary
    ("teacher.path=/nonexistent/teacher", "teacher.path"),
    ("distill.divergence=kl", "distill.divergence"),
])
def test_bad_teacher_is_refused_before_ray(tmp_path, override, match):
    t0 = time.time()
    proc = run_main(["recipe=distill_tiny", override, f"run_dir={tmp_path / 'run'}"], timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(match, proc.stderr), proc.stderr[-3000:]
    assert "roles up" not in proc.stdout + proc.stderr and time.time() - t0 < 120
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
