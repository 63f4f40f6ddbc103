"""A bf16 trainer accumulates its gradients in fp32 (trainer.grad_accum_dtype), and updates."""
import torch

from rlengine import tiny
from rlengine.layout import pack_sequences
from rlengine.main import load_config
from rlengine.protocol import Batch
from rlengine.workers.group import free_port
from rlengine.workers.trainer import TrainerWorker


def _worker(*overrides):
    path = tiny.resolve_path("tiny:base")
    cfg, plan = load_config("grpo_tiny", [f"model.path={path}", "model.dtype=bfloat16", "algorithm.group_size=4",
                                          "data.prompts_per_step=2", "trainer.micro_batch_size=4", *overrides])
    return TrainerWorker(cfg, plan, path, 0, 1, "127.0.0.1", free_port())


def test_bf16_weights_fp32_gradient_accumulation_update():
    w = _worker()
    assert next(w.module.parameters()).dtype == torch.bfloat16
    assert w.engine.optimizer.gradient_accumulation_dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(3, 50, (n,), generator=g).tolist() for n in (3, 5, 7, 9, 2, 4, 6, 8)]
    t = pack_sequences([[5, 6, 7]] * 8, responses, None, pad_id=0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5] * 2)[:, None] * t["response_mask"]
    batch = Batch(tensors={**t, "advantages": adv})
    before = [p.detach().clone() for p in w.module.parameters()]
    m = w.update(batch.update(rollout_logp=w.log_probs(batch)["old_logp"]))
    assert m["actor/grad_norm"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, w.module.parameters()))
