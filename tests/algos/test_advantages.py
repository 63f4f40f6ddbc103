import math
import random
import statistics

import pytest
import torch

from rlengine.algos.advantages import (
    ADVANTAGES,
    broadcast_to_tokens,
    dr_grpo,
    gae,
    get_advantage,
    grpo,
    register_advantage,
    reinforce_pp,
    rloo,
    whiten,
)

T = torch.tensor


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ---- GRPO -------------------------------------------------------------------


def test_grpo_two_groups_of_two_unbiased_std():
    # mean 0.5, unbiased std sqrt(0.5) = 0.70711 -> 0.5 / 0.70711 = 0.70711 (biased std would give 1.0)
    adv = grpo(T([1.0, 0.0, 0.0, 1.0]), 2)
    close(adv, [0.7071058, -0.7071058, -0.7071058, 0.7071058])


def test_grpo_group_of_three():
    # mean 7/3, unbiased var 7/3, std 1.527525
    close(grpo(T([1.0, 2.0, 4.0]), 3), [-0.8728710, -0.2182177, 1.0910887])


def test_grpo_ids_need_not_be_contiguous():
    adv = grpo(T([1.0, 0.0, 0.0, 1.0]), T([7, 3, 7, 3]))
    close(adv, [0.7071058, -0.7071058, -0.7071058, 0.7071058])


def test_grpo_singleton_and_constant_groups_get_zero():
    adv = grpo(T([1.0, 0.0, 5.0, 2.0, 2.0]), T([0, 0, 1, 2, 2]))
    close(adv, [0.7071058, -0.7071058, 0.0, 0.0, 0.0])


def test_grpo_without_std_is_mean_centred():
    close(grpo(T([1.0, 2.0, 4.0]), 3, norm_by_std=False), [-4 / 3, -1 / 3, 5 / 3])


def test_grpo_keeps_dtype_and_casts_int_rewards():
    assert grpo(T([1.0, 0.0], dtype=torch.bfloat16), 2).dtype == torch.bfloat16
    assert grpo(T([1, 0]), 2).dtype == torch.float32


def test_group_size_must_divide_batch():
    with pytest.raises(ValueError, match="does not divide"):
        grpo(T([1.0, 0.0, 1.0]), 2)


# ---- Dr.GRPO, RLOO, REINFORCE++ -----------------------------------------------


def test_dr_grpo():
    close(dr_grpo(T([1.0, 0.0, 0.0, 1.0]), 2), [0.5, -0.5, -0.5, 0.5])
    close(dr_grpo(T([1.0, 2.0, 4.0]), 3), [-4 / 3, -1 / 3, 5 / 3])


def test_rloo_leave_one_out():
    # 1 - mean(2,4) = -2; 2 - mean(1,4) = -0.5; 4 - mean(1,2) = 2.5; lone row -> 0
    close(rloo(T([1.0, 2.0, 4.0, 9.0]), T([0, 0, 0, 1])), [-2.0, -0.5, 2.5, 0.0])


def test_reinforce_pp_whitens_over_rows():
    # group-centred [0.5, -0.5, 0, 0]; batch mean 0, unbiased var 1/6
    close(reinforce_pp(T([1.0, 0.0, 1.0, 1.0]), 2), [1.2247449, -1.2247449, 0.0, 0.0])


def test_reinforce_pp_token_weighted_whitening():
    # centred [0.5,-0.5,0,0] with token counts [1,3,2,2]: mu=-0.125, unbiased var 0.875/7=0.125
    mask = T([[1, 0, 0], [1, 1, 1], [1, 1, 0], [0, 1, 1]])
    adv = reinforce_pp(T([1.0, 0.0, 1.0, 1.0]), 2, mask_NT=mask)
    close(adv, [1.7677670, -1.0606602, 0.3535534, 0.3535534])
    # identical to whitening the broadcast per-token advantages (verl's form)
    token_level = whiten(broadcast_to_tokens(dr_grpo(T([1.0, 0.0, 1.0, 1.0]), 2), mask), mask)
    close(broadcast_to_tokens(adv, mask), token_level)


def _reference_loop(name, rewards, ids):
    """Independent pure-python implementation using statistics (stdev is unbiased)."""
    groups = {}
    for r, g in zip(rewards, ids):
        groups.setdefault(g, []).append(r)
    out = []
    for r, g in zip(rewards, ids):
        rs = groups[g]
        if len(rs) == 1:
            out.append(0.0)
        elif name == "grpo":
            out.append((r - statistics.mean(rs)) / (statistics.stdev(rs) + 1e-6))
        elif name == "dr_grpo":
            out.append(r - statistics.mean(rs))
        elif name == "rloo":
            out.append(r - (sum(rs) - r) / (len(rs) - 1))
    return out


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_estimators_match_python_loop(name):
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 40)
        rewards = [rng.choice([0.0, 1.0, rng.uniform(-3, 3)]) for _ in range(n)]
        ids = [rng.randint(0, 6) * 11 for _ in range(n)]
        got = get_advantage(name)(T(rewards, dtype=torch.float64), T(ids))
        close(got, _reference_loop(name, rewards, ids), atol=1e-9)


# ---- registry, broadcast, whiten ---------------------------------------------


def test_registry():
    assert set(ADVANTAGES) >= {"grpo", "dr_grpo", "rloo", "reinforce_pp"}
    assert get_advantage("rloo") is rloo
    with pytest.raises(KeyError, match="grpo"):
        get_advantage("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(lambda r, i: r)

    @register_advantage("_test_zero")
    def zero(rewards_N, index_N):
        return torch.zeros_like(rewards_N)

    try:
        assert get_advantage("_test_zero") is zero
    finally:
        del ADVANTAGES["_test_zero"]


def test_broadcast_to_tokens():
    out = broadcast_to_tokens(T([2.0, -1.0]), T([[1, 1, 0], [1, 0, 0]]))
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def test_whiten_unmasked():
    close(whiten(T([1.0, 2.0, 3.0, 4.0])), [-1.1618950, -0.3872983, 0.3872983, 1.1618950])


def test_whiten_masked_ignores_and_zeroes_padding():
    x, m = T([1.0, 2.0, 3.0, 100.0]), T([1, 1, 1, 0])
    close(whiten(x, m), [-1.0, 0.0, 1.0, 0.0])  # mean 2, unbiased var 1
    close(whiten(x, m, shift_mean=False), [1.0, 2.0, 3.0, 0.0])


# ---- GAE ----------------------------------------------------------------------

GAMMA, LAM = 0.9, 0.8


def test_gae_hand_computed_with_padding_and_hole():
    # Row 0: right padding. delta_2 = 1 - 0.8 = 0.2; delta_1 = 0.9*0.8 - 0.4 = 0.32;
    #   delta_0 = 0.9*0.4 - 0.5 = -0.14. A_2 = 0.2; A_1 = 0.32 + 0.72*0.2 = 0.464;
    #   A_0 = -0.14 + 0.72*0.464 = 0.19408.
    # Row 1: same valid tokens with a masked observation token at t=1 whose reward (5)
    #   and value (7) must be ignored and bridged with one gamma step.
    rewards = T([[0.0, 0.0, 1.0, 3.0], [0.0, 5.0, 0.0, 1.0]])
    values = T([[0.5, 0.4, 0.8, 9.0], [0.5, 7.0, 0.4, 0.8]])
    mask = T([[1, 1, 1, 0], [1, 0, 1, 1]])
    adv, ret = gae(rewards, values, mask, GAMMA, LAM)
    close(adv, [[0.19408, 0.464, 0.2, 0.0], [0.19408, 0.0, 0.464, 0.2]])
    close(ret, [[0.69408, 0.864, 1.0, 0.0], [0.69408, 0.0, 0.864, 1.0]])


def test_gae_gamma_lam_one_is_reward_to_go_minus_value():
    adv, ret = gae(T([[0.0, 2.0, 1.0]]), T([[0.5, 0.5, 0.5]]), T([[1, 1, 1]]), 1.0, 1.0)
    close(ret, [[3.0, 3.0, 1.0]])
    close(adv, [[2.5, 2.5, 0.5]])


def test_gae_nan_at_masked_positions_does_not_leak():
    adv, ret = gae(T([[1.0, float("nan")]]), T([[0.0, float("inf")]]), T([[1, 0]]), GAMMA, LAM)
    close(adv, [[1.0, 0.0]])
    close(ret, [[1.0, 0.0]])


def _gae_reference(rewards, values, mask, gamma, lam):
    """Scalar loop per row over the valid positions only."""
    adv_out = [[0.0] * len(r) for r in rewards]
    for b in range(len(rewards)):
        pos = [t for t, m in enumerate(mask[b]) if m]
        next_v, last = 0.0, 0.0
        for t in reversed(pos):
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv_out[b][t] = last
            next_v = values[b][t]
    ret_out = [[(a + v) if m else 0.0 for a, v, m in zip(*row)] for row in zip(adv_out, values, mask)]
    return adv_out, ret_out


def test_gae_matches_scalar_loop():
    g = torch.Generator().manual_seed(0)
    B, L = 7, 13
    rewards = torch.randn(B, L, generator=g, dtype=torch.float64)
    values = torch.randn(B, L, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, L, generator=g) > 0.3).long()
    mask[0] = 0  # an all-masked row
    adv, ret = gae(rewards, values, mask, 0.97, 0.9)
    ref_adv, ref_ret = _gae_reference(rewards.tolist(), values.tolist(), mask.tolist(), 0.97, 0.9)
    close(adv, ref_adv, atol=1e-12)
    close(ret, ref_ret, atol=1e-12)


def test_gae_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 1.0, 1.0)


def test_gae_is_not_differentiable_through_values():
    values = torch.zeros(1, 2, requires_grad=True)
    adv, ret = gae(torch.ones(1, 2), values, torch.ones(1, 2), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    assert math.isclose(adv[0, 0].item(), 2.0)
