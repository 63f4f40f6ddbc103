import math

import pytest
import torch

from rlengine.algos.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    AdaptiveKLController,
    FixedKLController,
    agg_loss,
    entropy_from_logits,
    get_policy_loss,
    kl_penalty,
    logprobs_from_logits,
    policy_loss_clip,
    policy_loss_gspo,
    register_policy_loss,
    sft_loss,
    value_loss_clipped,
)

T = torch.tensor


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


# ---- agg_loss -------------------------------------------------------------------

LOSS = T([[1.0, 2.0, float("inf")], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = T([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # row 2 is all padding


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 7 / 3),  # (1+2+4) / 3 tokens
        ("seq-mean-token-sum", 3.5),  # (3 + 4) / 2 non-empty rows
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2
        ("seq-mean-token-sum-norm", 7 / 6),  # 7 / (2 rows * T=3)
    ],
)
def test_agg_loss_modes(mode, expected):
    close(agg_loss(LOSS, MASK, mode), expected)


def test_agg_loss_explicit_normaliser():
    close(agg_loss(LOSS, MASK, "token-mean", normaliser=10), 0.7)
    close(agg_loss(LOSS, MASK, "seq-mean-token-mean", normaliser=T(5.0)), 1.1)


def test_agg_loss_all_masked_is_zero_not_nan():
    assert agg_loss(LOSS, torch.zeros_like(MASK), "token-mean").item() == 0.0


def test_agg_loss_unknown_mode():
    with pytest.raises(ValueError, match="seq-mean-foo"):
        agg_loss(LOSS, MASK, "seq-mean-foo")


def _global_normaliser(mode, mask):
    n_seq = int((mask.sum(-1) > 0).sum())
    return {
        "token-mean": mask.sum(),
        "seq-mean-token-sum": n_seq,
        "seq-mean-token-mean": n_seq,
        "seq-mean-token-sum-norm": n_seq * mask.shape[-1],
    }[mode]


@pytest.mark.parametrize("mode", AGG_MODES)
def test_agg_loss_micro_batches_add_up_with_global_normaliser(mode):
    g = torch.Generator().manual_seed(0)
    param = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = T([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    full = agg_loss(param.square(), mask, mode)
    (grad_full,) = torch.autograd.grad(full, param)
    norm = _global_normaliser(mode, mask)
    micro = sum(agg_loss(param[s].square(), mask[s], mode, norm) for s in (slice(0, 1), slice(1, 3), slice(3, 6)))
    (grad_micro,) = torch.autograd.grad(micro, param)
    close(micro, full.item(), atol=1e-12)
    close(grad_micro, grad_full, atol=1e-12)


def test_agg_loss_local_defaults_do_not_add_up():
    # Why the normaliser exists: averaging per-micro-batch token-means weights tokens unequally.
    loss, mask = T([[1.0, 1.0], [3.0, 0.0]]), T([[1, 1], [1, 0]])
    full = agg_loss(loss, mask, "token-mean")  # 5/3
    micro_mean = (agg_loss(loss[:1], mask[:1], "token-mean") + agg_loss(loss[1:], mask[1:], "token-mean")) / 2
    close(full, 5 / 3)
    close(micro_mean, 2.0)


# ---- policy loss ----------------------------------------------------------------


def _logp(ratios):
    return torch.log(T(ratios, dtype=torch.float64)).unsqueeze(0).requires_grad_(True)


def test_policy_loss_clip_hand_computed():
    # ratio 1.5 A=+1 -> max(-1.5, -1.2) = -1.2 (clipped); ratio 0.5 A=+1 -> -0.5;
    # ratio 0.5 A=-1 -> max(0.5, 0.8) = 0.8 (clipped); ratio 1.1 A=-2 -> 2.2 (inside);
    # last token is masked with an absurd ratio and must not count.
    logp = _logp([1.5, 0.5, 0.5, 1.1, 1e6])
    old = torch.zeros_like(logp)
    adv = T([[1.0, 1.0, -1.0, -2.0, 5.0]], dtype=torch.float64)
    mask = T([[1, 1, 1, 1, 0]])
    loss, m = policy_loss_clip(logp, old, adv, mask)
    close(loss, (-1.2 - 0.5 + 0.8 + 2.2) / 4)
    close(m["clip_frac"], 0.5)
    close(m["approx_kl"], 0.2213798)  # mean(-log ratio) over the 4 valid tokens
    close(m["dual_clip_frac"], 0.0)
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp of -A*ratio is -A*ratio / 4 where unclipped, 0 where clipped or masked
    close(grad, [[0.0, -0.125, 0.0, 0.55, 0.0]])


def test_clip_higher_is_asymmetric():
    adv = T([[1.0, -1.0]], dtype=torch.float64)
    mask = T([[1, 1]])
    sym_logp, hi_logp = _logp([1.25, 0.75]), _logp([1.25, 0.75])
    old = torch.zeros(1, 2, dtype=torch.float64)
    sym, m_sym = policy_loss_clip(sym_logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    hi, m_hi = policy_loss_clip(hi_logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # upward clip at 1.2 vs 1.28: positive-advantage token clipped only in the symmetric case;
    # the downward side (0.75 < 0.8) is clipped in both.
    close(sym, (-1.2 + 0.8) / 2)
    close(hi, (-1.25 + 0.8) / 2)
    close(m_sym["clip_frac"], 1.0)
    close(m_hi["clip_frac"], 0.5)
    close(torch.autograd.grad(sym, sym_logp)[0], [[0.0, 0.0]])
    close(torch.autograd.grad(hi, hi_logp)[0], [[-0.625, 0.0]])


def test_dual_clip_bounds_negative_advantage_only():
    # ratio 5 A=-1: max(5, 1.2)=5 -> bounded to c=3; ratio 5 A=+1: -1.2 (no dual clip);
    # ratio 2 A=-1: 2 < 3 untouched.
    logp = _logp([5.0, 5.0, 2.0])
    old = torch.zeros_like(logp)
    adv = T([[-1.0, 1.0, -1.0]], dtype=torch.float64)
    mask = T([[1, 1, 1]])
    loss, m = policy_loss_clip(logp, old, adv, mask, dual_clip_c=3.0)
    close(loss, (3.0 - 1.2 + 2.0) / 3)
    close(m["dual_clip_frac"], 1 / 3)
    close(torch.autograd.grad(loss, logp)[0], [[0.0, 0.0, 2 / 3]])
    plain, _ = policy_loss_clip(logp, old, adv, mask)
    close(plain, (5.0 - 1.2 + 2.0) / 3)


def test_policy_loss_validates():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="dual_clip_c"):
        policy_loss_clip(x, x, x, x, dual_clip_c=1.0)
    with pytest.raises(ValueError, match="gspo has no dual clip"):
        policy_loss_gspo(x, x, x, x, dual_clip_c=3.0)


def test_policy_loss_registry(monkeypatch):
    assert set(POLICY_LOSSES) == {"clip", "gspo"}
    assert get_policy_loss("clip") is policy_loss_clip
    assert get_policy_loss("gspo") is policy_loss_gspo
    with pytest.raises(ValueError, match=r"unknown policy loss 'ppo'.*\['clip', 'gspo'\]"):
        get_policy_loss("ppo")
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("clip")(policy_loss_gspo)
    assert POLICY_LOSSES["clip"] is policy_loss_clip


@pytest.mark.parametrize("name", ["clip", "gspo"])
def test_policy_loss_micro_batches_add_up(name):
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.3
    old, adv = torch.zeros_like(logp), torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=g) > 0.4).long()
    fn = get_policy_loss(name)
    full, _ = fn(logp, old, adv, mask)
    parts = [fn(logp[s], old[s], adv[s], mask[s], normaliser=mask.sum())[0] for s in (slice(0, 1), slice(1, 4))]
    close(sum(parts), full.item(), atol=1e-12)


# ---- GSPO ---------------------------------------------------------------------------

GSPO_MASK = T([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]])


def test_gspo_ratio_one_is_minus_mean_advantage():
    logp = (torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 2).requires_grad_(True)
    adv = T([[1.0, 1.0, 1.0, 9.0], [-2.0, -2.0, 9.0, 9.0], [0.5, 0.5, 9.0, 9.0]], dtype=torch.float64)
    loss, m = policy_loss_gspo(logp, logp.detach().clone(), adv, GSPO_MASK)
    close(loss, -(3 * 1.0 + 2 * -2.0 + 2 * 0.5) / 7)
    close(m["clip_frac"], 0.0)
    close(m["approx_kl"], 0.0)
    (grad,) = torch.autograd.grad(loss, logp)
    # s = 1, so d/dlogp_t of -A * s is -A / 7 on valid tokens
    close(grad, -adv * GSPO_MASK / 7, atol=1e-12)
    seq, _ = policy_loss_gspo(logp, logp.detach().clone(), adv, GSPO_MASK, agg_mode="seq-mean-token-mean")
    close(seq, -(1.0 - 2.0 + 0.5) / 3)


def _gspo_clipped_case(agg_mode):
    # Per-token log ratios (old = 0); position [0, 3] is padding with an absurd value.
    #   seq 0: mean(0.3, 0.1, -0.1) = 0.1   -> s = e^0.1 = 1.105 inside [0.8, 1.2], A = +1
    #          (PPO-clip would clip its first token: e^0.3 = 1.35 > 1.2; GSPO does not)
    #   seq 1: mean(0.5, 0.3)       = 0.4   -> s = e^0.4 = 1.492 > 1.2, A = +2: -2 * 1.2, no gradient
    #   seq 2: mean(-0.4, -0.6)     = -0.5  -> s = e^-0.5 = 0.607 < 0.8, A = -1: +1 * 0.8, no gradient
    logp = T([[0.3, 0.1, -0.1, 50.0], [0.5, 0.3, 0.0, 0.0], [-0.4, -0.6, 0.0, 0.0]], dtype=torch.float64)
    logp.requires_grad_(True)
    adv = T([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [-1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    loss, m = policy_loss_gspo(logp, torch.zeros_like(logp), adv, GSPO_MASK, agg_mode=agg_mode)
    return logp, loss, m


def test_gspo_sequence_level_clipping_token_mean():
    logp, loss, m = _gspo_clipped_case("token-mean")
    s0 = math.exp(0.1)
    close(loss, (3 * -s0 + 2 * -2.4 + 2 * 0.8) / 7)
    close(m["clip_frac"], 4 / 7)
    close(m["approx_kl"], -(0.3 + 0.1 - 0.1 + 0.5 + 0.3 - 0.4 - 0.6) / 7)
    (grad,) = torch.autograd.grad(loss, logp)
    # GSPO-token: each token of seq 0 gets -A * s0 / 7; clipped sequences and padding get 0
    close(grad, [[-s0 / 7] * 3 + [0.0], [0.0] * 4, [0.0] * 4], atol=1e-12)


def test_gspo_seq_mean_token_mean_is_the_paper_objective():
    logp, loss, _ = _gspo_clipped_case("seq-mean-token-mean")
    s0 = math.exp(0.1)
    close(loss, (-s0 - 2.4 + 0.8) / 3)
    (grad,) = torch.autograd.grad(loss, logp)
    # sequence-level GSPO: d/dlogp_t of -(1/3) * A * s0 = -(1/3) * s0 * (1/|y_0|), |y_0| = 3
    close(grad, [[-s0 / 9] * 3 + [0.0], [0.0] * 4, [0.0] * 4], atol=1e-12)


# ---- KL estimators ------------------------------------------------------------

LOGP, REF = T([0.0, -1.0, -2.0]), T([-1.0, -1.0, 0.0])  # d = logp - ref = [1, 0, -2]


@pytest.mark.parametrize(
    "kinds, expected",
    [
        (("k1", "kl"), [1.0, 0.0, -2.0]),
        (("abs",), [1.0, 0.0, 2.0]),
        (("k2", "mse"), [0.5, 0.0, 2.0]),
        (("k3", "low_var_kl"), [0.3678794, 0.0, 4.3890561]),  # exp(-d) + d - 1
    ],
)
def test_kl_estimators(kinds, expected):
    for kind in kinds:
        close(kl_penalty(LOGP, REF, kind), expected)


def test_k3_clamped_and_shape_preserved():
    out = kl_penalty(T([[-20.0, 30.0]]), T([[0.0, 0.0]]), "k3")
    assert out.shape == (1, 2)
    close(out, [[10.0, 10.0]])


def test_kl_unknown():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(LOGP, REF, "k4")


# ---- entropy / log-probs / sft ------------------------------------------------


def test_entropy_known_values():
    logits = T([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]]])
    close(entropy_from_logits(logits), [[1.3862944, 0.5623351]])


def test_entropy_peaked_is_finite_and_matches_naive():
    assert entropy_from_logits(T([[[1000.0, 0.0, 0.0]]])).item() == pytest.approx(0.0, abs=1e-6)
    z = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.softmax(z, -1)
    close(entropy_from_logits(z), -(p * p.log()).sum(-1), atol=1e-12)


def test_logprobs_from_logits():
    logits = T([[[0.0, math.log(3.0)], [0.0, math.log(3.0)], [1000.0, 0.0]]])
    out = logprobs_from_logits(logits, T([[1, 0, 1]]))
    assert out.shape == (1, 3)
    close(out, [[-0.2876821, -1.3862944, -1000.0]])


def test_logprobs_upcasts_bf16():
    out = logprobs_from_logits(torch.zeros(1, 1, 4, dtype=torch.bfloat16), T([[2]]))
    assert out.dtype == torch.float32
    close(out, [[-1.3862944]])


def test_sft_loss():
    close(sft_loss(T([[-1.0, -2.0], [-3.0, 0.0]]), T([[1, 1], [1, 0]])), 2.0)
    close(sft_loss(T([[-1.0, -2.0], [-3.0, 0.0]]), T([[1, 1], [1, 0]]), "seq-mean-token-sum"), 3.0)


# ---- value loss ------------------------------------------------------------------


def test_value_loss_clipped():
    # tok0: (1.5-2)^2=0.25 vs clipped V=1.2: 0.64 -> 0.64 (clipped)
    # tok1: 0.25 vs (1.2-1)^2=0.04 -> 0.25; tok2: inside range -> 0.81
    v, old = T([[1.5, 1.5, 0.9]]), T([[1.0, 1.0, 1.0]])
    ret, mask = T([[2.0, 1.0, 0.0]]), T([[1, 1, 1]])
    loss, m = value_loss_clipped(v, old, ret, mask, clip_range=0.2)
    close(loss, 0.5 * (0.64 + 0.25 + 0.81) / 3)
    close(m["vf_clip_frac"], 1 / 3)
    loss_nc, m_nc = value_loss_clipped(v, old, ret, mask, clip_range=None)
    close(loss_nc, 0.5 * (0.25 + 0.25 + 0.81) / 3)
    close(m_nc["vf_clip_frac"], 0.0)


# ---- KL controllers ---------------------------------------------------------------


def test_adaptive_kl_controller():
    c = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    c.update(current_kl=9.0, n_steps=256)  # error clipped to +0.2 -> x(1 + 0.2*256/1e4)
    assert c.value == pytest.approx(0.100512, abs=1e-12)
    c.update(current_kl=5.4, n_steps=256)  # error -0.1 -> x(1 - 0.1*256/1e4)
    assert c.value == pytest.approx(0.10025468928, abs=1e-12)
    restored = AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=1)
    restored.load_state_dict(c.state_dict())
    assert (restored.value, restored.target, restored.horizon) == (c.value, 6.0, 10000.0)


def test_fixed_kl_controller():
    c = FixedKLController(0.05)
    c.update(100.0, 1000)
    assert c.value == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.05
