"""Advantage estimators: pure tensor functions, no infrastructure.

Two kinds live here:

* Outcome (sequence-level) estimators, one scalar reward per response. They
  share the signature the controller dispatches on through ``ADVANTAGES``::

      fn(rewards_N: Tensor[float], index_N: Tensor[long] | int, **kw) -> adv_N

  ``index_N`` holds a group id per row (rows that answer the same prompt share
  an id; ids need not be contiguous or sorted). An ``int`` G instead means
  "contiguous groups of G rows", i.e. ids ``arange(N) // G``.
  Use ``broadcast_to_tokens(adv_N, mask_NT)`` to get per-token advantages.

* ``gae``: token-level, needs a critic; it has its own signature and is not in
  ``ADVANTAGES``.

Group statistics are computed in float64 and cast back to the rewards' dtype,
so results do not depend on the order rows arrive in beyond float64 rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

AdvantageFn = Callable[..., Tensor]

ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: add an outcome estimator to ``ADVANTAGES`` under ``name``."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return deco


def get_advantage(name: str) -> AdvantageFn:
    """Look up an outcome estimator; the KeyError lists the known names."""
    try:
        return ADVANTAGES[name]
    except KeyError:
        hint = " ('gae' is token-level: call algos.advantages.gae directly)" if name == "gae" else ""
        raise KeyError(
            f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGES)}{hint}"
        ) from None


def _group_index(rewards_N: Tensor, index_N: Tensor | int) -> Tensor:
    """Map group ids (any values) or a contiguous group size to ids 0..G-1."""
    n = rewards_N.shape[0]
    if isinstance(index_N, int):
        if index_N < 1 or n % index_N != 0:
            raise ValueError(f"group size {index_N} does not divide the batch size {n}")
        return torch.arange(n, device=rewards_N.device) // index_N
    if index_N.shape != rewards_N.shape:
        raise ValueError(
            f"index_N has shape {tuple(index_N.shape)}, rewards_N has {tuple(rewards_N.shape)}"
        )
    return torch.unique(index_N.to(rewards_N.device), return_inverse=True)[1]


def _group_stats(rewards_N: Tensor, index_N: Tensor | int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row (r, count, mean, sum of squared deviations) of the row's group, float64."""
    if rewards_N.dim() != 1:
        raise ValueError(f"rewards_N must be 1-D [N], got shape {tuple(rewards_N.shape)}")
    r = rewards_N.double()
    gid = _group_index(rewards_N, index_N)
    n_groups = int(gid.max().item()) + 1 if gid.numel() else 0
    count_G = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, gid, torch.ones_like(r))
    sum_G = torch.zeros_like(count_G).index_add_(0, gid, r)
    mean_N = (sum_G / count_G)[gid]
    # Two-pass (deviations from the mean) rather than E[r^2]-E[r]^2: no cancellation.
    ssd_G = torch.zeros_like(count_G).index_add_(0, gid, (r - mean_N) ** 2)
    return r, count_G[gid], mean_N, ssd_G[gid]


def _out_dtype(rewards_N: Tensor) -> torch.dtype:
    return rewards_N.dtype if rewards_N.is_floating_point() else torch.float32


@register_advantage("grpo")
def grpo(
    rewards_N: Tensor, index_N: Tensor | int, *, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """GRPO outcome advantage (Shao et al. 2024, DeepSeekMath, eq. for outcome supervision).

    A_i = (r_i - mean_g) / (std_g + eps)  for row i in group g, shape [N] -> [N].

    std_g is the *unbiased* (Bessel-corrected, n-1) sample std, matching verl's
    ``torch.std``. With ``norm_by_std=False`` this is r_i - mean_g (same as dr_grpo).
    Groups of size 1 get advantage 0: there is no baseline to compare against
    (verl instead returns r_i there, which rewards any lone sample's raw score).
    Groups with identical rewards get 0 (numerator 0, std 0, eps keeps it finite).
    """
    r, count, mean, ssd = _group_stats(rewards_N, index_N)
    adv = r - mean
    if norm_by_std:
        std = torch.sqrt(ssd / (count - 1).clamp(min=1))
        adv = adv / (std + eps)
    # A lone row has r_i == mean_g and std 0, so it gets 0 with no special case.
    return adv.to(_out_dtype(rewards_N))


@register_advantage("dr_grpo")
def dr_grpo(rewards_N: Tensor, index_N: Tensor | int) -> Tensor:
    """Dr. GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training").

    A_i = r_i - mean_g, shape [N] -> [N]. Dropping the std division removes the
    question-difficulty bias; pair it with ``agg_mode="seq-mean-token-sum-norm"``
    to also remove the length bias. Groups of size 1 get 0 naturally.
    """
    r, _, mean, _ = _group_stats(rewards_N, index_N)
    return (r - mean).to(_out_dtype(rewards_N))


@register_advantage("rloo")
def rloo(rewards_N: Tensor, index_N: Tensor | int) -> Tensor:
    """RLOO leave-one-out advantage (Ahmadian et al. 2024, "Back to Basics").

    A_i = r_i - (1 / (n_g - 1)) * sum_{j in g, j != i} r_j  =  n_g / (n_g - 1) * (r_i - mean_g),
    shape [N] -> [N]. Groups of size 1 get 0 (the baseline is undefined).
    """
    r, count, mean, _ = _group_stats(rewards_N, index_N)
    adv = count / (count - 1).clamp(min=1) * (r - mean)  # r - mean is 0 for a lone row
    return adv.to(_out_dtype(rewards_N))


@register_advantage("reinforce_pp")
def reinforce_pp(
    rewards_N: Tensor,
    index_N: Tensor | int,
    *,
    mask_NT: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++ with group-mean baseline (Hu 2025; verl's "reinforce_plus_plus_baseline").

    Variant implemented, shape [N] -> [N]:
        a_i = r_i - mean_g                      (group-mean baseline, as dr_grpo)
        A_i = (a_i - mu) / sqrt(var + eps)      (whitening over the whole batch)
    With ``mask_NT`` [N, T], mu and var are taken over valid *tokens* (each row
    weighted by its response length), exactly what verl gets by whitening the
    broadcast token advantages; without it, over the N rows. var is unbiased.

    The token-level REINFORCE++ form (discounted return of per-token rewards with
    the KL penalty folded in, whitened over tokens) is not implemented here: with
    gamma=1 and no per-token KL it reduces to the above without the baseline.
    """
    a_N = dr_grpo(rewards_N, index_N).double()
    if mask_NT is None:
        return whiten(a_N, None, eps=eps).to(_out_dtype(rewards_N))
    if mask_NT.shape[0] != a_N.shape[0]:
        raise ValueError(f"mask_NT has shape {tuple(mask_NT.shape)}, rewards_N has {tuple(rewards_N.shape)}")
    w_N = mask_NT.to(a_N.device).double().sum(-1)
    out = whiten(a_N, w_N, eps=eps)
    # Rows with no valid token carry no weight; whiten() zeroes them.
    return out.to(_out_dtype(rewards_N))


def broadcast_to_tokens(adv_N: Tensor, mask_NT: Tensor) -> Tensor:
    """[N] -> [N, T]: every valid token of row i gets adv_i; masked tokens get 0."""
    return adv_N.unsqueeze(-1) * mask_NT.to(adv_N.dtype)


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten ``x`` over the valid entries (verl's ``masked_whiten``).

    mu = sum(x*m)/sum(m);  var = sum((x-mu)^2 m)/sum(m) * n/(n-1)  (unbiased, n = sum(m))
    out = (x - mu) / sqrt(var + eps), plus mu again if ``shift_mean=False``.

    ``mask`` has the shape of ``x`` and may hold non-negative weights (used by
    reinforce_pp for per-row token counts); positions with mask 0 come back 0.
    With fewer than 2 valid entries the variance is taken as 0.
    """
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    if m.shape != x.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} != x shape {tuple(x.shape)}")
    n = m.sum()
    mu = (x * m).sum() / n.clamp(min=1e-12)
    var = ((x - mu) ** 2 * m).sum() / (n - 1).clamp(min=1e-12)
    var = torch.where(n > 1, var, torch.zeros_like(var))
    out = (x - mu) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mu
    return out * (m != 0).to(x.dtype)


def gae(
    token_rewards_BT: Tensor,
    values_BT: Tensor,
    mask_BT: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016) -> (advantages_BT, returns_BT).

    Over valid tokens only (mask 1), scanning t = T-1 .. 0:
        delta_t = r_t + gamma * V_next - V_t
        A_t     = delta_t + gamma * lam * A_next
        R_t     = A_t + V_t
    where V_next / A_next are the value / advantage of the next *valid* token
    (0 after the last one). Masked tokens (padding, or tool/observation tokens
    in multi-turn rollouts) are skipped: their reward and value are ignored, the
    recursion bridges over them with a single gamma step, and their advantage
    and return are 0. This is verl's convention (nextvalues/lastgaelam carried
    through masked positions), except that verl leaves the carried value at
    masked positions and whitens inside; here masked outputs are 0 and whitening
    is left to the caller (``whiten(adv_BT, mask_BT)``).

    The loop is over T (python) and vectorised over B. Shapes: all [B, T].
    """
    if not (token_rewards_BT.shape == values_BT.shape == mask_BT.shape):
        raise ValueError(
            f"shape mismatch: rewards {tuple(token_rewards_BT.shape)}, values "
            f"{tuple(values_BT.shape)}, mask {tuple(mask_BT.shape)}"
        )
    rewards = token_rewards_BT.detach()
    values = values_BT.detach()
    valid_BT = mask_BT.bool()
    B, T = values.shape
    next_value_B = values.new_zeros(B)
    last_adv_B = values.new_zeros(B)
    adv_BT = torch.zeros_like(values)
    for t in range(T - 1, -1, -1):
        v_t = valid_BT[:, t]
        delta_B = rewards[:, t] + gamma * next_value_B - values[:, t]
        adv_t_B = delta_B + gamma * lam * last_adv_B
        # On a masked token keep carrying the state of the next valid token. where()
        # rather than a 0/1 product so garbage (inf/nan) at masked positions cannot leak.
        next_value_B = torch.where(v_t, values[:, t], next_value_B)
        last_adv_B = torch.where(v_t, adv_t_B, last_adv_B)
        adv_BT[:, t] = torch.where(v_t, adv_t_B, 0.0)
    returns_BT = torch.where(valid_BT, adv_BT + values, 0.0)
    return adv_BT, returns_BT
