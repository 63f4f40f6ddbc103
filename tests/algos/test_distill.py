"""Distillation losses against hand-computed values (algos/distill.py)."""
import math

import pytest
import torch

from rlengine.algos.distill import (
    DIVERGENCES,
    chunked_map,
    distill_token_loss,
    forward_kl,
    get_divergence,
    jsd,
    log1mexp,
    register_divergence,
    reverse_kl,
    support_logprobs,
    teacher_topk,
    with_tail,
)

LN = math.log


def _log(*ps):
    return torch.tensor([[LN(p) for p in ps]], dtype=torch.float64)


# p = teacher [0.5, 0.5], q = student [0.25, 0.75]
P, Q = _log(0.5, 0.5), _log(0.25, 0.75)


def test_forward_kl_by_hand():
    want = 0.5 * LN(0.5 / 0.25) + 0.5 * LN(0.5 / 0.75)  # 0.143841
    assert float(forward_kl(P, Q)) == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(0.143841, abs=1e-6)


def test_reverse_kl_by_hand():
    want = 0.25 * LN(0.25 / 0.5) + 0.75 * LN(0.75 / 0.5)  # 0.130812
    assert float(reverse_kl(P, Q)) == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(0.130812, abs=1e-6)


def test_jsd_by_hand_and_its_limits():
    # M = 0.5 p + 0.5 q = [0.375, 0.625]
    kl_pm = 0.5 * LN(0.5 / 0.375) + 0.5 * LN(0.5 / 0.625)
    kl_qm = 0.25 * LN(0.25 / 0.375) + 0.75 * LN(0.75 / 0.625)
    assert float(jsd(P, Q, beta=0.5)) == pytest.approx(0.5 * kl_pm + 0.5 * kl_qm, abs=1e-12)
    assert 0.5 * kl_pm + 0.5 * kl_qm == pytest.approx(0.033822, abs=1e-6)
    # beta = 0.2: M = 0.2 p + 0.8 q = [0.3, 0.7]
    m = (0.3, 0.7)
    want = 0.2 * (0.5 * LN(0.5 / m[0]) + 0.5 * LN(0.5 / m[1])) + 0.8 * (0.25 * LN(0.25 / m[0]) + 0.75 * LN(0.75 / m[1]))
    assert float(jsd(P, Q, beta=0.2)) == pytest.approx(want, abs=1e-12)
    assert float(jsd(P, P, beta=0.3)) == pytest.approx(0.0, abs=1e-12)
    disjoint = jsd(_log(1.0, 1e-300), _log(1e-300, 1.0), beta=0.5)
    assert float(disjoint) == pytest.approx(LN(2), abs=1e-9)  # the symmetric JSD's bound
    with pytest.raises(ValueError, match="beta in"):
        jsd(P, Q, beta=1.0)


def test_zero_probabilities_contribute_nothing():
    p = torch.tensor([[0.0, float("-inf")]], dtype=torch.float64)  # [1, 0]
    q = _log(0.5, 0.5)
    assert float(forward_kl(p, q)) == pytest.approx(LN(2), abs=1e-12)
    assert math.isinf(float(reverse_kl(p, q)))  # q puts mass where p has none: reverse KL is infinite


def test_temperature_and_the_t_squared_factor():
    z = torch.tensor([[0.0, LN(3)]], dtype=torch.float64)  # q_1 = [0.25, 0.75]
    t = 2.0
    q_t = (1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3)))  # softmax(z / 2)
    kl_t = 0.5 * LN(0.5 / q_t[0]) + 0.5 * LN(0.5 / q_t[1])
    assert kl_t == pytest.approx(0.037252, abs=1e-6)
    labels = torch.tensor([1])
    loss, div, nll = distill_token_loss(z, labels, P, None, divergence="forward_kl", alpha=0.0, temperature=t)
    assert float(div) == pytest.approx(kl_t, abs=1e-7)
    assert float(loss) == pytest.approx(t * t * kl_t, abs=1e-7)
    assert float(nll) == pytest.approx(-LN(0.75), abs=1e-7)  # the hard label at temperature 1
    loss, _, _ = distill_token_loss(z, labels, P, None, divergence="forward_kl", alpha=0.5, temperature=t)
    assert float(loss) == pytest.approx(0.5 * -LN(0.75) + 0.5 * 4 * kl_t, abs=1e-7)  # 0.218346
    assert float(loss) == pytest.approx(0.218346, abs=1e-6)
    loss, _, _ = distill_token_loss(z, labels, P, None, divergence="forward_kl", alpha=1.0, temperature=t)
    assert float(loss) == pytest.approx(-LN(0.75), abs=1e-7)


def test_top_k_with_a_tail_bucket_is_a_lower_bound_exact_when_the_tail_is_the_rest():
    q = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    p = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    z = q.log()
    full = 0.6 * LN(0.6 / 0.5) + 0.3 * LN(1.0) + 0.1 * LN(0.1 / 0.2)  # 0.040078
    logp_k, ids_k, _ = teacher_topk(p.log(), 1)
    assert ids_k.tolist() == [[0]]
    lp, lq = support_logprobs(z, logp_k, ids_k)
    assert lp.exp().tolist()[0] == pytest.approx([0.6, 0.4]) and lq.exp().tolist()[0] == pytest.approx([0.5, 0.5])
    bound = 0.6 * LN(0.6 / 0.5) + 0.4 * LN(0.4 / 0.5)  # 0.020136
    assert float(forward_kl(lp, lq)) == pytest.approx(bound, abs=1e-12)
    assert bound < full
    logp_k, ids_k, _ = teacher_topk(p.log(), 2)  # the tail is exactly the one id left out
    assert float(forward_kl(*support_logprobs(z, logp_k, ids_k))) == pytest.approx(full, abs=1e-12)
    logp_v, none, _ = teacher_topk(p.log(), 0)  # full vocabulary
    assert none is None and float(forward_kl(*support_logprobs(z, logp_v, None))) == pytest.approx(full, abs=1e-12)


def test_teacher_topk_entropy_and_temperature():
    z = torch.tensor([[LN(0.6), LN(0.3), LN(0.1)]], dtype=torch.float64)
    logp, ids, ent = teacher_topk(z, 2)
    assert ids.tolist() == [[0, 1]] and logp.exp().tolist()[0] == pytest.approx([0.6, 0.3])
    assert float(ent) == pytest.approx(-(0.6 * LN(0.6) + 0.3 * LN(0.3) + 0.1 * LN(0.1)), abs=1e-9)
    logp_t, _, _ = teacher_topk(z, 0, temperature=2.0)  # softmax(log p / 2) = sqrt(p) / sum sqrt(p)
    s = sum(math.sqrt(x) for x in (0.6, 0.3, 0.1))
    assert logp_t.exp().tolist()[0] == pytest.approx([math.sqrt(x) / s for x in (0.6, 0.3, 0.1)])


def test_tail_and_log1mexp_are_stable():
    assert float(log1mexp(torch.tensor(-1e-10, dtype=torch.float64))) == pytest.approx(LN(1e-10), rel=1e-6)
    assert float(log1mexp(torch.tensor(-50.0, dtype=torch.float64))) == pytest.approx(-math.exp(-50), abs=1e-30)
    full_mass = with_tail(torch.tensor([[LN(0.5), LN(0.5)]]))
    assert torch.isfinite(full_mass).all()  # an empty tail is floored, not -inf


def test_gradient_pushes_student_toward_teacher():
    z = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64).log()
    for name in ("forward_kl", "reverse_kl", "jsd"):
        z.grad = None
        loss, _, _ = distill_token_loss(z, torch.tensor([0]), p, None, divergence=name, beta=0.5)
        loss.sum().backward()
        assert z.grad[0, 0] < 0 < z.grad[0, 2], name  # raise the teacher's favourite, lower its least liked


def test_chunked_map_equals_one_pass_values_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, dtype=torch.float64)
    rows = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (13,))
    t_logp, t_ids, _ = teacher_topk(torch.randn(13, 11, dtype=torch.float64), 4)

    def fn(z, y, lp, ids):
        return distill_token_loss(z, y, lp, ids, divergence="jsd", alpha=0.3, temperature=1.5)

    whole = fn(head(rows), labels, t_logp, t_ids)
    parts = chunked_map(rows, (labels, t_logp, t_ids), head, fn, chunk_tokens=5)
    for a, b in zip(whole, parts):
        assert torch.allclose(a, b, atol=1e-6)
    g_whole = torch.autograd.grad(whole[0].sum(), (rows, head.weight))
    g_parts = torch.autograd.grad(parts[0].sum(), (rows, head.weight))
    for a, b in zip(g_whole, g_parts):
        assert torch.allclose(a, b, atol=1e-6)
    calls = []
    chunked_map(rows[:0], (labels[:0], t_logp[:0], t_ids[:0]), lambda r: calls.append(1) or head(r), fn,
                chunk_tokens=5, n_chunks=3)
    assert len(calls) == 3  # the agreed count, even with no rows


def test_registry():
    assert {"forward_kl", "reverse_kl", "jsd"} <= set(DIVERGENCES)

    @register_divergence("test_tv")
    def tv(logp, logq, **_):
        return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)

    try:
        assert float(get_divergence("test_tv")(P, Q)) == pytest.approx(0.25)
        with pytest.raises(ValueError, match="already registered"):
            register_divergence("test_tv")(lambda *a, **k: None)
    finally:
        DIVERGENCES.pop("test_tv")
    with pytest.raises(KeyError, match="registered"):
        get_divergence("nope")
