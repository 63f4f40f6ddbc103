"""trainer.max_tokens_per_micro_batch regroups every forward, never the result: old and reference
log-probs, and a GRPO update's loss, gradient norm and weights, equal fixed micro-batches' (fp32)."""
import pytest
import torch

from rlengine import tiny
from rlengine.layout import pack_sequences
from rlengine.main import load_config
from rlengine.protocol import Batch
from rlengine.workers.group import free_port
from rlengine.workers.trainer import TrainerWorker

N, MICRO, BUDGET = 16, 4, 96  # fixed: 4 rows a micro-batch; budget: ~2-6 rows of these widths


def _batch(seed: int = 0) -> Batch:
    """Prompts of 2..11 and responses of 1..40 tokens: widths from 3 to ~50."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 200, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
               for _ in range(N)]
    responses = [torch.randint(3, 200, (int(torch.randint(1, 41, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(N)]
    t = pack_sequences(prompts, responses, None, pad_id=0)
    t["advantages"] = torch.randn(N, generator=g)[:, None] * t["response_mask"]
    return Batch(tensors=t)


def _worker(budget: int | None) -> TrainerWorker:
    path = tiny.resolve_path("tiny:base")
    over = [f"model.path={path}", "algorithm.group_size=4", f"data.prompts_per_step={N // 4}",
            f"trainer.micro_batch_size={MICRO}", "algorithm.minibatches=2", "algorithm.kl_coef=0.1",
            "reference.placement=trainer", "trainer.lr=1e-3", "rollout.temperature=0.7"]
    if budget is not None:
        over.append(f"trainer.max_tokens_per_micro_batch={budget}")
    cfg, plan = load_config("grpo_tiny", over)
    assert plan.micro_batches_per_minibatch == 2 and plan.reference_in_trainer
    return TrainerWorker(cfg, plan, path, 0, 1, "127.0.0.1", free_port())


def _close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask).max())


@pytest.fixture(scope="module")
def workers():
    return _worker(None), _worker(BUDGET)


def test_old_and_reference_log_probs_equal_fixed_micro_batches(workers):
    fixed, budget = workers
    batch = _batch()
    mask = batch["response_mask"]
    counts = len(fixed.micro_batches(batch)), len(budget.micro_batches(batch))
    assert counts[0] == N // MICRO and counts[1] != counts[0], counts  # a different grouping
    for method, key in (("log_probs", "old_logp"), ("ref_log_probs", "ref_logp")):
        want, got = getattr(fixed, method)(batch)[key], getattr(budget, method)(batch)[key]
        assert got.shape == want.shape == mask.shape
        assert _close(got, want, mask) < 1e-6, method
        assert (got * (1 - mask)).abs().max() < 10  # finite beyond the responses (callers mask them)
    # and both equal one forward over the whole padded batch
    from rlengine.modeling import response_logprobs

    fixed.engine.eval()
    with torch.no_grad():
        full = response_logprobs(fixed.engine, batch, 0.7)
    assert _close(budget.log_probs(batch)["old_logp"], full, mask) < 1e-5


def test_grpo_update_equals_fixed_micro_batches(workers):
    """Two minibatches (two optimizer steps), old and reference log-probs in the batch: the same
    loss, KL loss and gradient norm per update, the same weights after, one step per minibatch."""
    fixed, budget = workers
    batch = _batch(1)
    batch = batch.union(fixed.log_probs(batch)).union(fixed.ref_log_probs(batch))
    steps = fixed.engine.global_steps, budget.engine.global_steps
    before = [p.detach().clone() for p in fixed.module.parameters()]
    calls = []
    backward = budget.backward
    budget.backward = lambda loss, last=None: (calls.append(1), backward(loss, last))
    out = [w.update(batch) for w in (fixed, budget)]
    del budget.backward
    assert len(calls) != 2 * fixed.plan.micro_batches_per_minibatch, calls  # not DeepSpeed's own boundary
    for k in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm"):
        assert out[1][k] == pytest.approx(out[0][k], rel=1e-6, abs=1e-6), (k, out)
    assert out[0]["actor/grad_norm"] > 0
    assert fixed.engine.global_steps - steps[0] == budget.engine.global_steps - steps[1] == 2
    assert fixed.scheduler.last_epoch == budget.scheduler.last_epoch
    # Adam divides by sqrt(v): entries with ~0 gradient turn float noise into steps of ~lr, so the
    # weights agree to a small fraction of the update rather than to 1e-6.
    with torch.no_grad():
        moved = max(float((p - b).abs().max()) for p, b in zip(fixed.module.parameters(), before))
        diff = max(float((a - b).abs().max()) for a, b in zip(fixed.module.parameters(), budget.module.parameters()))
    assert moved > 1e-4 and diff < 0.02 * moved, (diff, moved)


def test_more_micro_batches_than_rows_pad_with_empty_weight_rows():
    """Another rank needing more micro-batches than this one has rows (ZeRO-3: as many forwards on
    every rank): this rank's are split to single rows, then padded with zero-weight copies; the
    update is the same, and the optimizer still steps once per minibatch."""
    fixed, budget = _worker(None), _worker(BUDGET)
    budget.global_max = lambda n: max(n, N // 2 + 3)  # 8 rows per minibatch: 8 singles + 3 padding
    batch = _batch(2)
    mbs = budget.micro_batches(batch.index(slice(0, N // 2)))
    assert len(mbs) == N // 2 + 3 and sum(bool(m.info.get("padding")) for m in mbs) == 3
    batch = batch.union(fixed.log_probs(batch)).union(fixed.ref_log_probs(batch))
    assert _close(budget.log_probs(batch)["old_logp"], batch["old_logp"], batch["response_mask"]) < 1e-6
    out = [w.update(batch) for w in (fixed, budget)]
    for k in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm"):
        assert out[1][k] == pytest.approx(out[0][k], rel=1e-6, abs=1e-6), (k, out)
    assert fixed.engine.global_steps == budget.engine.global_steps == 2


def _dpo_worker(budget: int | None) -> TrainerWorker:
    path = tiny.resolve_path("tiny:base")
    over = [f"model.path={path}", f"data.prompts_per_step={N // 2}", f"trainer.micro_batch_size={MICRO}",
            "trainer.warmup_steps=0", "eval.sets=[]"]
    if budget is not None:
        over.append(f"trainer.max_tokens_per_micro_batch={budget}")
    cfg, plan = load_config("dpo_tiny_identity", over)
    return TrainerWorker(cfg, plan, path, 0, 1, "127.0.0.1", free_port())


def test_dpo_pairs_update_equals_fixed_micro_batches():
    """Preference pairs (rows 2i, 2i+1) packed as units: the DPO + RPO loss and gradient norm of
    fixed micro-batches, on pairs of mixed lengths."""
    fixed, budget = _dpo_worker(None), _dpo_worker(BUDGET)
    batch = _batch(3)
    batch = batch.update(ref_logps=torch.randn(N, generator=torch.Generator().manual_seed(3)) - 20)
    mbs = budget.micro_batches(batch, pairs=True)
    assert len(mbs) != N // MICRO and all(r[0::2] == [i - 1 for i in r[1::2]] and r[0] % 2 == 0 for r in mbs.rows)
    out = [w.update(batch) for w in (fixed, budget)]
    for k in ("dpo/loss", "dpo/nll_loss", "actor/grad_norm"):
        assert out[1][k] == pytest.approx(out[0][k], rel=1e-6, abs=1e-6), (k, out)
    assert fixed.engine.global_steps == budget.engine.global_steps == 1


def test_reward_model_scores_by_its_own_token_lengths(tmp_path):
    """reward_model.max_tokens_per_micro_batch budgets the reward model's encoded texts; every
    score equals the text scored alone."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from rlengine.workers.reward_model import RewardModelWorker

    tok = tiny.build_tokenizer()
    tok.save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id)).save_pretrained(str(tmp_path))
    cfg, _ = load_config("ppo_tiny", ["model.path=tiny:base", f"reward_model.path={tmp_path}",
                                      "reward_model.max_tokens_per_micro_batch=40"])
    worker = RewardModelWorker(cfg, str(tmp_path), str(tmp_path), micro_batch_size=64)
    prompts = [f"Q: {a}+{a * 7}=? A:" for a in range(9)]
    responses = [" " + " ".join(["12"] * k) for k in (1, 9, 3, 0, 6, 2, 12, 4, 1)]
    batch = Batch(tensors={"x": torch.zeros(9)}, meta={"prompt": prompts, "response": responses})
    got = worker.score(batch)["rm_score"]
    with torch.no_grad():
        want = [float(worker.model(**tok(p + r, return_tensors="pt", add_special_tokens=False)).logits[0, 0])
                for p, r in zip(prompts, responses)]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
