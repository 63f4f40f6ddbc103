import math

import pytest
import torch

import rlengine.algos.preference as P
from rlengine.algos.preference import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    dpo_loss,
    get_preference_loss,
    hinge_loss,
    ipo_loss,
    register_preference_loss,
    simpo_loss,
)

T = torch.tensor


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


def softplus(x):
    return math.log1p(math.exp(x))  # = -log sigmoid(-x)


# Two pairs, beta = 0.1:
#   pair 0: pi_c=-10, pi_r=-12, ref_c=ref_r=-11 -> h = (1) - (-1) = 2,  beta*h = 0.2
#   pair 1: pi_c=-5,  pi_r=-4,  ref_c=ref_r=-5  -> h = (0) - (1)  = -1, beta*h = -0.1
PC, PR, RC, RR = [-10.0, -5.0], [-12.0, -4.0], [-11.0, -5.0], [-11.0, -5.0]
BETA = 0.1


def pair_args(requires_grad=False):
    pc = T(PC, dtype=torch.float64, requires_grad=requires_grad)
    pr = T(PR, dtype=torch.float64, requires_grad=requires_grad)
    return pc, pr, T(RC, dtype=torch.float64), T(RR, dtype=torch.float64)


def test_sigmoid_is_the_dpo_paper_formula():
    loss, _ = dpo_loss(*pair_args(), beta=BETA)
    # -log sigmoid(z) = log(1 + e^-z)
    per_pair = [-math.log(1 / (1 + math.exp(-0.2))), -math.log(1 / (1 + math.exp(0.1)))]
    close(loss, sum(per_pair) / 2)
    close(loss, (0.5981389 + 0.7443967) / 2)


def test_cdpo_label_smoothing():
    loss, _ = dpo_loss(*pair_args(), beta=BETA, label_smoothing=0.1)
    # -(1-eps) log sigmoid(z) - eps log sigmoid(-z) = (1-eps) softplus(-z) + eps softplus(z)
    per_pair = [0.9 * softplus(-0.2) + 0.1 * softplus(0.2), 0.9 * softplus(0.1) + 0.1 * softplus(-0.1)]
    close(loss, sum(per_pair) / 2)
    close(per_pair[0], 0.6181389)


def test_dpo_metrics_are_floats_over_this_batch():
    _, m = dpo_loss(*pair_args(), beta=BETA, normaliser=100)
    assert all(type(v) is float for v in m.values())
    expected = {
        "rewards/chosen": (0.1 * 1 + 0.1 * 0) / 2,
        "rewards/rejected": (0.1 * -1 + 0.1 * 1) / 2,
        "rewards/margins": (0.2 + -0.1) / 2,
        "rewards/accuracies": 0.5,
        "logps/chosen": -7.5,
        "logps/rejected": -8.0,
    }
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k


def test_ipo():
    loss, m = ipo_loss(*pair_args(), beta=BETA)
    # (h - 1/(2 beta))^2 with 1/(2*0.1) = 5: (2-5)^2 = 9, (-1-5)^2 = 36
    close(loss, (9 + 36) / 2)
    assert m["rewards/margins"] == pytest.approx(0.05)


def test_hinge_and_its_zero_region():
    loss, _ = hinge_loss(*pair_args(), beta=BETA)
    close(loss, ((1 - 0.2) + (1 + 0.1)) / 2)
    # beta = 1: pair 0 has beta*h = 2 >= 1 -> relu(-1) = 0 and no gradient; pair 1: relu(1 + 1) = 2
    pc, pr, rc, rr = pair_args(requires_grad=True)
    loss, _ = hinge_loss(pc, pr, rc, rr, beta=1.0)
    close(loss, (0 + 2) / 2)
    g_pc, g_pr = torch.autograd.grad(loss, (pc, pr))
    close(g_pc, [0.0, -0.5])
    close(g_pr, [0.0, 0.5])


def test_simpo_length_normalised_with_margin():
    # beta=2, gamma=0.5: u_c = 2 * -6/3 = -4, u_r = 2 * -12/4 = -6, z = -4 + 6 - 0.5 = 1.5
    pc, pr = T([-6.0], dtype=torch.float64), T([-12.0], dtype=torch.float64)
    kw = {"beta": 2.0, "gamma": 0.5, "chosen_lengths_B": T([3]), "rejected_lengths_B": T([4])}
    loss, m = simpo_loss(pc, pr, None, None, **kw)
    close(loss, -math.log(1 / (1 + math.exp(-1.5))))
    assert m == pytest.approx({"rewards/chosen": -4.0, "rewards/rejected": -6.0, "rewards/margins": 2.0,
                               "rewards/accuracies": 1.0, "logps/chosen": -6.0, "logps/rejected": -12.0})
    with_ref, _ = simpo_loss(pc, pr, T([-1.0]), T([-100.0]), **kw)
    close(with_ref, loss.item(), atol=0)
    smoothed, _ = simpo_loss(pc, pr, None, None, label_smoothing=0.1, **kw)
    close(smoothed, 0.9 * softplus(-1.5) + 0.1 * softplus(1.5))


def test_simpo_needs_lengths():
    with pytest.raises(ValueError, match="simpo needs chosen_lengths_B and rejected_lengths_B"):
        simpo_loss(T([-1.0]), T([-2.0]), None, None, beta=2.0, chosen_lengths_B=T([3]))


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "hinge", "simpo"])
def test_normaliser_divides_the_sum_and_micro_batches_add_up(name):
    fn = get_preference_loss(name)
    lengths = {"chosen_lengths_B": T([3, 5]), "rejected_lengths_B": T([4, 2])}
    pc, pr, rc, rr = pair_args(requires_grad=True)
    full, m_full = fn(pc, pr, rc, rr, beta=BETA, **lengths)
    (g_full,) = torch.autograd.grad(full, pc)
    summed, m_sum = fn(pc, pr, rc, rr, beta=BETA, normaliser=8.0, **lengths)
    close(summed, full.item() * 2 / 8, atol=1e-12)
    assert m_sum == m_full  # metrics are means over the call, never normalised
    parts = [fn(pc[s], pr[s], rc[s], rr[s], beta=BETA, normaliser=T(2.0),
                chosen_lengths_B=lengths["chosen_lengths_B"][s], rejected_lengths_B=lengths["rejected_lengths_B"][s])[0]
             for s in (slice(0, 1), slice(1, 2))]
    (g_parts,) = torch.autograd.grad(sum(parts), pc)
    close(sum(parts), full.item(), atol=1e-12)
    close(g_parts, g_full, atol=1e-12)


def test_gradient_reaches_policy_only():
    pc, pr = T(PC, dtype=torch.float64, requires_grad=True), T(PR, dtype=torch.float64, requires_grad=True)
    rc, rr = T(RC, dtype=torch.float64, requires_grad=True), T(RR, dtype=torch.float64, requires_grad=True)
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=BETA)
    loss.backward()
    assert rc.grad is None and rr.grad is None
    # d/dpi_c of -log sigmoid(beta h) = -beta (1 - sigmoid(beta h)); / B = 2 for the mean
    sig = [1 / (1 + math.exp(-0.2)), 1 / (1 + math.exp(0.1))]
    close(pc.grad, [-0.1 * (1 - s) / 2 for s in sig])
    close(pr.grad, [0.1 * (1 - s) / 2 for s in sig])


def test_registry():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "ipo", "hinge", "simpo"}
    assert get_preference_loss("sigmoid") is dpo_loss
    assert get_preference_loss("simpo") is simpo_loss
    with pytest.raises(ValueError, match=r"unknown preference loss 'orpo'.*\['hinge', 'ipo', 'sigmoid', 'simpo'\]"):
        get_preference_loss("orpo")
    with pytest.raises(ValueError, match="'sigmoid' is already registered"):
        register_preference_loss("sigmoid")(ipo_loss)
    assert PREFERENCE_LOSSES["sigmoid"] is dpo_loss


def test_register_new_loss(monkeypatch):
    monkeypatch.setattr(P, "PREFERENCE_LOSSES", {})

    @register_preference_loss("mine")
    def mine(*args, **kwargs):
        return None

    assert P.get_preference_loss("mine") is mine
    with pytest.raises(ValueError, match="already registered"):
        register_preference_loss("mine")(mine)


@pytest.mark.parametrize(
    "fn, kw, match",
    [
        (dpo_loss, {"beta": 0.0}, "beta must be > 0"),
        (dpo_loss, {"beta": 0.1, "gamma": 1.0}, "gamma"),
        (dpo_loss, {"beta": 0.1, "label_smoothing": 0.5}, r"\[0, 0.5\)"),
        (ipo_loss, {"beta": 0.1, "label_smoothing": 0.1}, "label_smoothing is not defined"),
        (hinge_loss, {"beta": 0.1, "label_smoothing": 0.1}, "label_smoothing is not defined"),
    ],
)
def test_options_a_loss_does_not_use_are_errors(fn, kw, match):
    with pytest.raises(ValueError, match=match):
        fn(*pair_args(), **kw)


@pytest.mark.parametrize("fn", [dpo_loss, ipo_loss, hinge_loss])
def test_reference_losses_need_reference(fn):
    pc, pr, rc, _ = pair_args()
    with pytest.raises(ValueError, match="needs reference log-probs"):
        fn(pc, pr, rc, None, beta=BETA)


def test_bradley_terry():
    loss, m = bradley_terry_loss(T([2.0, 0.0]), T([0.0, 0.0]))
    close(loss, (math.log(1 + math.exp(-2)) + math.log(2)) / 2)
    close(m["accuracy"], 0.5)
    close(m["margin"], 1.0)
    half, _ = bradley_terry_loss(T([2.0]), T([0.0]), normaliser=2)
    close(half, math.log(1 + math.exp(-2)) / 2)
