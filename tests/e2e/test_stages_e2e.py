"""The chat SFT and DPO stages through the real topology on the embedded chat model, a few steps
each: metrics by their usual names, the reference cached per row, HF exports that load."""
import json

import pytest

from tests.conftest import read_metrics, read_summary, run_main

pytestmark = pytest.mark.e2e


def _check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _loads(hf: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(hf), AutoTokenizer.from_pretrained(hf)
    ids = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.isfinite(model(ids).logits).all()


def test_chat_sft_packed_three_steps(tmp_path):
    run_dir = tmp_path / "run"
    _check(run_main(["recipe=sft_tiny_chat", "trainer.total_steps=3", "sft.packing=true", "data.max_test_rows=16",
                     "eval.sets=[]", "tracking.progress_bar=false", f"run_dir={run_dir}"]))
    s = read_summary(run_dir)
    assert s["steps"] == 3 and s["evaluation"]["test"]["fn"] == "reward_fns/instruct.py:exact"
    steps = [m for m in read_metrics(run_dir) if "sft/loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for m in steps:
        assert m["sft/rows"] == 64 and m["sft/sequences"] < 64 and 0 <= m["sft/truncated_frac"] <= 1
        assert m["sft/tokens"] > 0 and m["sft/loss"] > 0
    _loads(s["hf_checkpoint"])


def test_dpo_caches_reference_logprobs_and_reports_trl_metrics(tmp_path):
    rows = [json.loads(line) for line in open(__import__("rlengine.tiny", fromlist=["x"]).resolve_path(
        "tiny:identity_pref_train"))][:16]
    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    _check(run_main(["recipe=dpo_tiny_identity", "model.path=tiny:chat_base", f"data.train_path={train}",
                     "data.prompts_per_step=8", "trainer.micro_batch_size=8", "trainer.total_steps=3",
                     "data.max_test_rows=8", "eval.sets=[{name: identity, path: tiny:identity_test, "
                     "fn: reward_fns/instruct.py:states_name}]", "tracking.progress_bar=false", f"run_dir={run_dir}"]))
    s = read_summary(run_dir)
    steps = [m for m in read_metrics(run_dir) if "dpo/loss" in m]
    # 16 rows, 8 per step: the second epoch (step 3) reuses every cached reference log-prob.
    assert [m["dpo/reference_rows"] for m in steps] == [8, 8, 0]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "dpo/nll_loss", "actor/grad_norm"):
        assert key in steps[0], key
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at step 1
    assert "eval/rewards/accuracies_after" in s and "eval/identity/accuracy_before" in s
    _loads(s["hf_checkpoint"])
