"""The teacher role's scores and the student-side map over response tokens, on the tiny model,
against the full-logits computation; the shared-vocabulary check."""
import pytest
import torch

from rlengine import tiny
from rlengine.algos.distill import distill_token_loss, teacher_topk
from rlengine.errors import ConfigError
from rlengine.layout import pack_sequences
from rlengine.modeling import forward_logits, load_causal_lm, response_token_map
from rlengine.protocol import Batch
from rlengine.workers.teacher import check_vocabulary, teacher_scores

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_causal_lm(str(tiny.build_base()), "float32", "sdpa").eval()


def _batch(n: int = 5, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 300, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    responses = [torch.randint(3, 300, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    return Batch(tensors=pack_sequences(prompts, responses, None, pad_id=0))


def _full(model, batch):
    P = batch["input_ids"].shape[1] - batch["responses"].shape[1]
    return forward_logits(model, batch.tensors)[:, P - 1:-1].float()  # [B, R, V]


@pytest.mark.parametrize("k", [0, 8])
def test_teacher_scores_equal_the_full_logits(model, k):
    batch = _batch()
    valid = batch["attention_mask"][:, -batch["responses"].shape[1]:].bool()
    scores = teacher_scores(model, batch, k, 2.0, micro_batch_size=2, device="cpu", chunk_tokens=7)
    with torch.no_grad():
        logp_BRK, ids_BRK, ent_BR = teacher_topk(_full(model, batch), k, 2.0)
    got = scores["teacher_logp"]
    assert got.shape == (*valid.shape, k or model.config.vocab_size)
    assert float((got - logp_BRK)[valid].abs().max()) <= 1e-5
    assert float((scores["teacher_entropy"] - ent_BR)[valid].abs().max()) <= 1e-5
    if k:
        assert torch.equal(scores["teacher_ids"][valid], ids_BRK[valid])
    else:
        assert "teacher_ids" not in scores
    token = torch.log_softmax(_full(model, batch) / 2.0, -1).gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    assert float((scores["teacher_token_logp"] - token)[valid].abs().max()) <= 1e-5
    assert (got[~valid] == 0).all()


def test_student_map_values_and_gradients_equal_the_full_logits(model):
    batch = _batch(seed=1)
    valid = batch["attention_mask"][:, -batch["responses"].shape[1]:].bool()
    teacher = teacher_scores(model, _batch(seed=1), 16, 1.0, micro_batch_size=8, device="cpu")
    # A perturbed student so the divergence is not 0.
    student = load_causal_lm(str(tiny.build_base()), "float32", "sdpa").eval()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))

    def fn(z, y, lp, ids):
        return distill_token_loss(z, y, lp, ids, divergence="forward_kl", alpha=0.25, temperature=1.0)[:2]

    loss_BR, div_BR = response_token_map(student, batch.tensors, fn, (teacher["teacher_logp"], teacher["teacher_ids"]),
                                         chunk_tokens=5)
    full_loss, _, _ = distill_token_loss(_full(student, batch)[valid], batch["responses"][valid],
                                             teacher["teacher_logp"][valid], teacher["teacher_ids"][valid],
                                             alpha=0.25)
    assert float((loss_BR[valid] - full_loss).abs().max()) <= 1e-5 and float(div_BR[valid].min()) >= 0
    assert float(div_BR[valid].mean()) > 1e-4 and (loss_BR[~valid] == 0).all()
    g = torch.autograd.grad(loss_BR[valid].sum(), student.lm_head.weight)[0]
    g_full = torch.autograd.grad(full_loss.sum(), student.lm_head.weight)[0]
    assert float((g - g_full).abs().max()) <= 1e-5
    # The teacher distilling into itself: the divergence is 0.
    _, self_div = response_token_map(model, batch.tensors, fn, (teacher["teacher_logp"], teacher["teacher_ids"]))
    assert float(self_div[valid].abs().max()) <= 1e-5


def test_vocabulary_check():
    base = str(tiny.build_base())
    check_vocabulary((base, base), (base, base))
    from rlengine import tiny_chat

    chat = str(tiny_chat.build_chat_base())
    with pytest.raises(ConfigError, match="teacher.path.*differ"):
        check_vocabulary((base, base), (chat, chat))
