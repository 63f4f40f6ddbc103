"""GRPO through the real topology: Ray actors, vLLM (CPU build), DeepSpeed ZeRO-3, on the tiny model."""
import math

import pytest
import torch

from tests.conftest import read_metrics, read_summary, run_main

pytestmark = pytest.mark.e2e

SMALL = ["recipe=grpo_tiny", "model.path=tiny:base", "data.prompts_per_step=8", "algorithm.group_size=4",
         "data.max_test_rows=32", "tracking.progress_bar=false",
         # The random model never answers right: a dense reward gives GRPO non-zero advantages.
         "reward.fns=[{fn:'reward_fns/math.py:compute_score',weight:1.0},{fn:'examples/custom_reward.py:concise_number',weight:1.0}]"]
VOLATILE = ("timing_s/", "perf/", "sync/gbps", "sync/load_s")


def _check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


def test_three_grpo_steps_two_zero3_ranks(tmp_path):
    """3 steps with 2 trainer ranks: checksum held, drift small, metrics finite, checkpoints + HF export load."""
    run_dir = tmp_path / "run"
    proc = run_main([*SMALL, "trainer.total_steps=3", "trainer.world_size=2", "checkpoint.every_steps=2",
                     "tracking.wandb=true", f"run_dir={run_dir}"], env={"WANDB_MODE": "offline"})
    _check(proc)
    summary = read_summary(run_dir)
    assert summary["steps"] == 3
    assert 0.0 <= summary["eval/accuracy_before"] <= 1.0 and 0.0 <= summary["eval/accuracy_after"] <= 1.0
    assert summary["wall_time_s"] > 0 and summary["resumed_from_step"] is None
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for m in steps:
        assert m["sync/checksum_ok"] == 1.0 and m["sync/engine_tensors_verified"] > 0
        assert m["sync/shared_memory"] == 1.0  # rank 0 gathers the ZeRO-3 shards into /dev/shm
        assert m["sync/logprob_drift"] < 1e-4, m["sync/logprob_drift"]  # fp32: vLLM and trainer agree
        for key in ("actor/pg_loss", "actor/kl", "actor/entropy", "actor/clip_frac", "actor/grad_norm",
                    "reward/mean", "response_length/mean", "timing_s/rollout", "timing_s/reward", "timing_s/ref",
                    "timing_s/adv", "timing_s/update", "timing_s/sync", "timing_s/step",
                    "perf/throughput_tokens_per_s"):
            assert key in m and math.isfinite(m[key]), key
    assert steps[0]["actor/kl"] == pytest.approx(0.0, abs=1e-5)  # reference == initial policy
    # One update per batch: the old log-probs come from the update's own forward pass.
    assert "timing_s/old_logp" not in steps[0]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert (run_dir / "checkpoints" / "step_000002" / "driver_state.json").exists()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run_dir / "wandb").glob("offline-run-*")), "tracking.wandb=true logs offline without a network"
    assert "held-out accuracy before" in proc.stdout and "held-out accuracy after" in proc.stdout

    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = summary["hf_checkpoint"]
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok("Q: 1+2=? A:", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    base = AutoModelForCausalLM.from_pretrained(str(__import__("rlengine.tiny").tiny.build_base()))
    with torch.no_grad():
        moved = sum(float((a - b).abs().sum()) for a, b in zip(model.parameters(), base.parameters()))
    assert moved > 0, "the exported weights are the initial ones: training did not reach the checkpoint"


@pytest.mark.slow
def test_same_seed_same_steps_whatever_the_transport(tmp_path):
    """Runs with one seed give the same metrics, whichever way the weights reach vLLM: the
    shared-memory file (same host, the default), Ray objects, or the gloo process group (what
    engines on other hosts get).  Step 2 samples from the weights step 1's sync delivered."""
    runs = []
    for method in ("auto", "object_store", "broadcast"):
        run_dir = tmp_path / method
        _check(run_main([*SMALL, "trainer.total_steps=2", "eval.before=false", "eval.after=false",
                         "checkpoint.save_hf=false", f"rollout.sync_method={method}", f"run_dir={run_dir}"]))
        steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
        assert steps[0]["sync/shared_memory"] == (1.0 if method == "auto" else 0.0)
        assert steps[0]["sync/broadcast"] == (1.0 if method == "broadcast" else 0.0)
        assert all(m["sync/engine_tensors_verified"] > 0 and m["sync/ranks_verified"] == 1 for m in steps)
        runs.append([{k: v for k, v in m.items() if not k.startswith(VOLATILE)
                      and k not in ("time", "sync/shared_memory", "sync/broadcast")} for m in steps])
    for other in runs[1:]:
        for mine, theirs in zip(runs[0], other):
            assert mine.keys() == theirs.keys()
            for k in mine:
                assert mine[k] == pytest.approx(theirs[k], rel=1e-6, abs=1e-7), k


def test_bad_reward_function_fails_before_any_actor(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main([*SMALL, "reward.fns=[{fn:'no/such/file.py:score'}]", f"run_dir={run_dir}"], timeout=120)
    assert proc.returncode == 2
    assert "no/such/file.py" in proc.stderr and "reward.fns[0].fn" in proc.stderr
    assert "roles up" not in proc.stderr and not (run_dir / "checkpoints").exists()


def test_reused_rollout_logprobs_skip_the_old_pass_and_adaptive_kl_is_applied(tmp_path):
    """reuse_rollout_logprobs=true: no old-log-prob pass (vLLM's log-probs are the old ones; the
    drift is measured in the update's first forward); an adaptive KL controller with GRPO adapts
    the coefficient the loss uses, and actor/kl_coef reports that one."""
    run_dir = tmp_path / "run"
    _check(run_main([*SMALL, "trainer.total_steps=3", "eval.before=false", "eval.after=false",
                     "checkpoint.save_hf=false", "algorithm.reuse_rollout_logprobs=true", "algorithm.ppo_epochs=2",
                     "algorithm.kl_coef=0.05", "algorithm.kl_ctl=adaptive", "algorithm.kl_target=0.001",
                     "algorithm.kl_horizon=10", f"run_dir={run_dir}"]))
    steps = [m for m in read_metrics(run_dir) if "reward/mean" in m]
    assert all("timing_s/old_logp" not in m for m in steps)
    assert all(0 < m["sync/logprob_drift"] < 1e-4 for m in steps)
    coefs = [m["actor/kl_coef"] for m in steps]
    assert coefs[0] == pytest.approx(0.05) and coefs[1] != coefs[0] and coefs[2] != coefs[1], coefs
