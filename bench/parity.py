"""Loss and gradient-norm parity, rlengine vs TRL, on one frozen batch (before any timing).

rlengine side: the real TrainerWorker (DeepSpeed ZeRO-3, one rank, no Ray) running update
with the old log-probs taken from the update's forward pass (what a single-update GRPO step does).
TRL side: GRPOTrainer.compute_loss on the same rows, then the gradient norm of the same weights.
Both: token-mean (TRL loss_type="dapo"), beta 0, one iteration, clip 0.2, temperature 1.

    PYTHONPATH=bench/.trl python bench/parity.py --model DIR --out parity.json [--mixed-lengths]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def grad_norm(model) -> float:
    """The global gradient norm as DeepSpeed computes it: per-tensor norms in float64.  A float32
    norm of the flattened gradients loses precision on CPU as the vector grows (measured: 6.7e-5
    relative at 0.9M parameters, 6.2e-3 at 31.8M, 1.8e-2 at 99.6M too low), which was the whole
    of the earlier "DeepSpeed vs autograd" gap."""
    norms = [p.grad.detach().double().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm())


def frozen_batch(tok, prompts: list[str], G: int, T: int, seed: int = 0):
    """Prompt x G rows with random response tokens (no EOS) of uneven lengths in [T/2, T], and
    fixed group-normalised advantages."""
    from rlengine.algos.advantages import get_advantage
    from rlengine.layout import pack_sequences

    g = torch.Generator().manual_seed(seed)
    specials = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in specials]
    p_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    prompts_rows, responses = [], []
    for p in p_ids:
        for _ in range(G):
            n = int(torch.randint(T // 2, T + 1, (1,), generator=g))
            responses.append([vocab[int(i)] for i in torch.randint(len(vocab), (n,), generator=g)])
            prompts_rows.append(p)
    t = pack_sequences(prompts_rows, responses, None, tok.pad_token_id)
    rewards = torch.randint(0, 2, (len(responses),), generator=g).float()
    group = torch.arange(len(prompts)).repeat_interleave(G)
    adv_N = get_advantage("grpo")(rewards, group)
    return t, adv_N


def rlengine_side(model_dir: str, t: dict, adv_N, micro: int, zero_stage: int = 3) -> tuple[dict, int]:
    from rlengine.main import load_config
    from rlengine.protocol import Batch
    from rlengine.workers.group import free_port
    from rlengine.workers.trainer import TrainerWorker

    n = len(adv_N)
    cfg, plan = load_config("grpo_tiny", [f"model.path={model_dir}", "algorithm.kl_coef=0", "algorithm.group_size=8",
                                          f"data.prompts_per_step={n // 8}", f"trainer.micro_batch_size={micro}",
                                          "algorithm.loss_agg=token-mean", "algorithm.clip_low=0.2",
                                          "algorithm.clip_high=0.2", "trainer.max_grad_norm=1.0",
                                          f"trainer.zero_stage={zero_stage}"])
    assert plan.old_logp_in_update
    w = TrainerWorker(cfg, plan, model_dir, 0, 1, "127.0.0.1", free_port())
    batch = Batch(tensors={**t, "advantages": adv_N[:, None] * t["response_mask"]})
    logp = w.log_probs(batch)["old_logp"]
    m = w.update(batch.update(rollout_logp=logp))
    return {"loss": m["actor/pg_loss"], "grad_norm": m["actor/grad_norm"]}, plan.zero_stage


def rlengine_algos_plain(model_dir: str, t: dict, adv_N) -> dict:
    """rlengine's loss functions (rlengine.algos) with plain PyTorch autograd, no DeepSpeed: separates
    the algorithm from the engine's gradient path."""
    from rlengine.algos import losses as L
    from rlengine.modeling import load_causal_lm, response_logprobs
    from rlengine.protocol import Batch

    model = load_causal_lm(model_dir, "float32", "sdpa", False)
    model.train()
    b = Batch(tensors={**t, "advantages": adv_N[:, None] * t["response_mask"]})
    logp_BR = response_logprobs(model, b, 1.0)
    loss, _ = L.policy_loss_clip(logp_BR, logp_BR.detach(), b["advantages"], b["response_mask"], clip_low=0.2,
                                 clip_high=0.2, dual_clip_c=None, agg_mode="token-mean",
                                 normaliser=float(t["response_mask"].sum()))
    loss.backward()
    return {"loss": float(loss), "grad_norm": grad_norm(model)}


def trl_side(model_dir: str, t: dict, adv_N) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    P = t["input_ids"].shape[1] - t["response_mask"].shape[1]
    args = GRPOConfig(output_dir="/tmp/rlengine-parity-trl", use_cpu=True, bf16=False, per_device_train_batch_size=8,
                      num_generations=8, beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo",
                      max_completion_length=t["response_mask"].shape[1], report_to="none", save_strategy="no")
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **k: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "x"}] * 8), processing_class=tok)
    mask = t["response_mask"].long()
    inputs = {"prompt_ids": t["input_ids"][:, :P], "prompt_mask": t["attention_mask"][:, :P],
              "completion_ids": t["input_ids"][:, P:], "completion_mask": mask, "advantages": adv_N,
              "num_items_in_batch": mask.sum()}
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one window holds the whole batch
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return {"loss": float(loss), "grad_norm": grad_norm(trainer.model)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--zero-stage", type=int, default=3, help="trainer.zero_stage (one rank runs 3 as 2)")
    ap.add_argument("--mixed-lengths", action="store_true", help="prompts of different lengths (left padding)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from transformers import AutoTokenizer

    from rlengine.data import load_rows

    tok = AutoTokenizer.from_pretrained(args.model)
    rows = load_rows("tiny:train", None)
    if args.mixed_lengths:
        prompts = [r["prompt"] for r in rows[:16]]
    else:
        want = len(tok(rows[0]["prompt"], add_special_tokens=False).input_ids)
        prompts = [r["prompt"] for r in rows if len(tok(r["prompt"], add_special_tokens=False).input_ids) == want][:16]
    t, adv_N = frozen_batch(tok, prompts, 8, args.tokens)
    ours, stage = rlengine_side(args.model, t, adv_N, args.micro_batch, args.zero_stage)
    theirs = trl_side(args.model, t, adv_N)
    plain = rlengine_algos_plain(args.model, t, adv_N)
    rel = {k: abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in ours}
    out = {"rlengine": ours, "trl": theirs, "abs_diff": {k: abs(ours[k] - theirs[k]) for k in ours},
           "rel_diff": rel, "rlengine_algos_plain_torch": plain,
           "rel_diff_algos_plain_vs_trl": {k: abs(plain[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in plain}, "rows": len(adv_N), "prompt_lengths": sorted({len(tok(p).input_ids) for p in prompts}),
           "mixed_lengths": args.mixed_lengths, "zero_stage": stage}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
