"""PPO with all four model roles (policy, critic, reference, reward model) and reward-model training,
through real Ray + vLLM (CPU build) + DeepSpeed on the tiny model."""
import json
import math

import pytest
import torch

from tests.conftest import read_metrics, read_summary, run_main

pytestmark = pytest.mark.e2e


def _check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


PPO_SMALL = ["recipe=ppo_tiny", "model.path=tiny:base", "reward_model.path=tiny:base",
             "data.prompts_per_step=8", "algorithm.group_size=2", "data.max_test_rows=16",
             "trainer.total_steps=2", "checkpoint.every_steps=1", "tracking.progress_bar=false",
             "reward.fns=[{fn:'examples/custom_reward.py:concise_number',weight:1.0}]"]
VOLATILE = ("timing_s/", "perf/", "sync/gbps", "sync/load_s", "time", "faults/")


def test_two_ppo_steps_four_roles(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main([*PPO_SMALL, f"run_dir={run_dir}"])
    _check(proc)
    log = (run_dir / "run.log").read_text()
    for role in ("'trainer'", "'critic'", "'reference'", "'reward_model'", "'rollout'"):
        assert role in log, f"no {role} actor in the placement record"
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        for key in ("critic/value_loss", "critic/vf_explained_var", "critic/vf_clip_frac", "actor/kl",
                    "actor/ref_kl", "actor/clip_frac", "actor/pg_loss", "actor/kl_coef", "reward/rm_mean",
                    "reward/fn_mean", "timing_s/values", "timing_s/ref", "sync/logprob_drift"):
            assert key in m and math.isfinite(m[key]), key
        assert m["sync/checksum_ok"] == 1.0 and m["sync/logprob_drift"] < 1e-4
        # Reward = rule fn + 0.5 x reward model, exactly.
        assert m["reward/mean"] == pytest.approx(m["reward/fn_mean"] + 0.5 * m["reward/rm_mean"], rel=1e-5, abs=1e-6)
    s = read_summary(run_dir)
    assert s["steps"] == 2 and "eval/accuracy_before" in s and "eval/accuracy_after" in s
    state = json.loads((run_dir / "checkpoints" / "step_000002" / "driver_state.json").read_text())
    assert "kl_ctl" in state["controller"] and state["shape"]["critic"] is True
    assert (run_dir / "checkpoints" / "step_000002" / "critic" / "latest").exists()

    # The same run, but the reward-model actor is SIGKILLed in step 1 (Ray restarts it; the step's
    # scores are redone) and the driver is SIGKILLed right after step 1's checkpoint. Rerun: it
    # resumes policy, critic, adaptive KL state and data position, and step 2 matches exactly.
    run2 = tmp_path / "run2"
    killed = run_main([*PPO_SMALL, f"run_dir={run2}"], env={"RLENGINE_FAULT": "reward_model:1,after_checkpoint:1"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_main([*PPO_SMALL, f"run_dir={run2}"])
    _check(resumed)
    s2 = read_summary(run2)
    assert s2["resumed_from_step"] == 1 and s2["steps"] == 2
    assert s2["faults"]["faults/reward_model_restarts"] == 1  # counted before the kill, kept by the checkpoint
    want = next(m for m in steps if m["step"] == 2)
    got = next(m for m in read_metrics(run2) if m["step"] == 2 and "reward/mean" in m)
    keys = [k for k in want if not k.startswith(VOLATILE)]
    assert "critic/value_loss" in keys and "actor/kl_coef" in keys
    for k in keys:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


def _easy_preferences(path, n):
    """A preference a few steps can learn: a bare number beats the same number with junk after it."""
    rows = [{"prompt": f"Q: {i}+1=? A:", "chosen": f" {i + 1}", "rejected": f" {i + 1} you are the answer is"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_reward_model_training_checkpoint_scores_chosen_above_rejected(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train = tmp_path / "pref.jsonl"
    rows = _easy_preferences(train, 64)
    run_dir = tmp_path / "run"
    _check(run_main(["recipe=rm_tiny", "model.path=tiny:base", f"data.train_path={train}",
                     f"data.test_path={train}", "data.prompts_per_step=16", "trainer.total_steps=30",
                     "trainer.lr=2e-3", "sft.eval_every_steps=0", "tracking.progress_bar=false",
                     f"run_dir={run_dir}"]))
    s = read_summary(run_dir)
    assert s["eval/pairwise_accuracy_after"] >= 0.9, s
    model = AutoModelForSequenceClassification.from_pretrained(s["hf_checkpoint"]).eval()
    tok = AutoTokenizer.from_pretrained(s["hf_checkpoint"])
    with torch.no_grad():
        def score(text):
            return float(model(**tok(text, return_tensors="pt")).logits[0, 0])
        wins = [score(r["prompt"] + r["chosen"]) > score(r["prompt"] + r["rejected"]) for r in rows]
    assert sum(wins) / len(wins) >= 0.9


@pytest.mark.parametrize("line, problem", [
    ('{"prompt": "Q", "chosen": " 1"}', "missing or non-text field 'rejected'"),
    ('{"prompt": "Q", "chosen": " 1", "rejected": " 1"}', "chosen == rejected"),
])
def test_bad_preference_rows_fail_before_any_actor(tmp_path, line, problem):
    good = '{"prompt": "Q", "chosen": " 1", "rejected": " 2"}'
    path = tmp_path / "pref.jsonl"
    path.write_text("\n".join([good, good, line, good]) + "\n")
    proc = run_main(["recipe=rm_tiny", "model.path=tiny:base", f"data.train_path={path}",
                     f"data.test_path={path}", "data.prompts_per_step=2", f"run_dir={tmp_path / 'run'}"], timeout=120)
    assert proc.returncode == 2
    assert f"{path}:3" in proc.stderr and problem in proc.stderr and "roles up" not in proc.stderr
