"""Pairwise preference losses (reward model, DPO family): pure tensor functions.

Offline preference losses share one signature and are looked up by name in
``PREFERENCE_LOSSES`` (``get_preference_loss(cfg_name)``)::

    fn(policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B, *,
       beta, label_smoothing=0.0, gamma=0.0, chosen_lengths_B=None, rejected_lengths_B=None,
       normaliser=None) -> (loss, metrics)

* ``*_logps_B`` are SUMMED response log-probs, one per sequence [B]; row b of
  the chosen tensors pairs with row b of the rejected ones.
* Reference log-probs are detached inside, so only the policy gets gradients;
  losses that need them raise if they are None.
* ``normaliser``: the loss is sum_b loss_b / normaliser (default B). Pass the
  global number of pairs when a batch is split over micro-batches and ranks,
  so the pieces add up to the full-batch loss (as ``agg_loss`` does for tokens).
* Options a loss does not use must be left at their defaults: a nonzero
  ``gamma`` for DPO or ``label_smoothing`` for IPO is a config mistake, not a no-op.
* Metrics are python floats, means over this call's B (not normalised), read
  back with a single device sync:
    rewards/chosen, rewards/rejected   implicit rewards, mean
    rewards/margins                    mean(chosen - rejected reward)
    rewards/accuracies                 mean(chosen reward > rejected reward)
    logps/chosen, logps/rejected       mean policy log-probs as passed in
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rlengine.algos.losses import Normaliser

PreferenceLossFn = Callable[..., tuple[Tensor, dict[str, float]]]

PREFERENCE_LOSSES: dict[str, PreferenceLossFn] = {}


def register_preference_loss(name: str) -> Callable[[PreferenceLossFn], PreferenceLossFn]:
    """Decorator: add a loss to ``PREFERENCE_LOSSES`` under ``name``; a taken name is an error."""

    def deco(fn: PreferenceLossFn) -> PreferenceLossFn:
        if name in PREFERENCE_LOSSES:
            raise ValueError(f"preference loss {name!r} is already registered")
        PREFERENCE_LOSSES[name] = fn
        return fn

    return deco


def get_preference_loss(name: str) -> PreferenceLossFn:
    """Look up a preference loss by name; the ValueError lists the known names."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown preference loss {name!r}; known: {sorted(PREFERENCE_LOSSES)}") from None


def _mean_over(x_B: Tensor, normaliser: Normaliser) -> Tensor:
    return x_B.sum() / (x_B.shape[0] if normaliser is None else normaliser)


def bradley_terry_loss(
    r_chosen_B: Tensor, r_rejected_B: Tensor, normaliser: Normaliser = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Reward-model pairwise loss (Bradley-Terry; Ouyang et al. 2022): -log sigmoid(r_c - r_r), mean.

    ``normaliser`` (default B) is the global number of pairs when the batch is
    split into micro-batches. Metrics (detached 0-dim tensors): ``accuracy``
    (r_c > r_r), ``margin`` (mean r_c - r_r).
    """
    margin_B = r_chosen_B - r_rejected_B
    loss = _mean_over(-F.logsigmoid(margin_B), normaliser)
    with torch.no_grad():
        metrics = {"accuracy": (margin_B > 0).float().mean(), "margin": margin_B.float().mean()}
    return loss, metrics


def _check(beta: float, label_smoothing: float, gamma: float, *, smoothing_ok: bool, gamma_ok: bool, name: str) -> None:
    if beta <= 0:
        raise ValueError(f"{name}: beta must be > 0, got {beta}")
    if not smoothing_ok and label_smoothing != 0:
        raise ValueError(f"{name}: label_smoothing is not defined for this loss, got {label_smoothing}")
    # eps >= 0.5 makes the loss symmetric or inverted in h, i.e. it stops preferring the chosen answer.
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"{name}: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if not gamma_ok and gamma != 0:
        raise ValueError(f"{name}: gamma (target reward margin) is only used by 'simpo', got {gamma}")


def _ref_logratios(
    name: str, pc_B: Tensor, pr_B: Tensor, rc_B: Tensor | None, rr_B: Tensor | None
) -> tuple[Tensor, Tensor]:
    if rc_B is None or rr_B is None:
        raise ValueError(f"{name} needs reference log-probs (pass zeros for a reference-free variant)")
    return pc_B - rc_B.detach(), pr_B - rr_B.detach()


def _smoothed_logsigmoid_loss(z_B: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(z_B) - eps * F.logsigmoid(-z_B)


def _metrics(chosen_reward_B: Tensor, rejected_reward_B: Tensor, pc_B: Tensor, pr_B: Tensor) -> dict[str, float]:
    with torch.no_grad():
        c, r = chosen_reward_B.detach().float(), rejected_reward_B.detach().float()
        vals = torch.stack([
            c.mean(), r.mean(), (c - r).mean(), (c > r).float().mean(),
            pc_B.detach().float().mean(), pr_B.detach().float().mean(),
        ]).tolist()
    keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen", "logps/rejected")
    return dict(zip(keys, vals, strict=True))


@register_preference_loss("sigmoid")
def dpo_loss(
    policy_chosen_logps_B: Tensor,
    policy_rejected_logps_B: Tensor,
    ref_chosen_logps_B: Tensor | None,
    ref_rejected_logps_B: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths_B: Tensor | None = None,
    rejected_lengths_B: Tensor | None = None,
    normaliser: Normaliser = None,
) -> tuple[Tensor, dict[str, float]]:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7), with cDPO smoothing.

    h      = (pi_c - ref_c) - (pi_r - ref_r)                       [B]
    loss_b = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    eps = ``label_smoothing`` is the conservative/robust DPO of Mitchell (2023,
    "A note on DPO with noisy preferences"): the label is flipped with
    probability eps. eps = 0 is exactly the paper's -log sigmoid(beta * h).
    Lengths are ignored. Implicit rewards: beta * (pi - ref).
    """
    _check(beta, label_smoothing, gamma, smoothing_ok=True, gamma_ok=False, name="sigmoid")
    c_B, r_B = _ref_logratios("sigmoid", policy_chosen_logps_B, policy_rejected_logps_B,
                              ref_chosen_logps_B, ref_rejected_logps_B)
    loss_B = _smoothed_logsigmoid_loss(beta * (c_B - r_B), label_smoothing)
    return _mean_over(loss_B, normaliser), _metrics(beta * c_B, beta * r_B, policy_chosen_logps_B,
                                                     policy_rejected_logps_B)


@register_preference_loss("ipo")
def ipo_loss(
    policy_chosen_logps_B: Tensor,
    policy_rejected_logps_B: Tensor,
    ref_chosen_logps_B: Tensor | None,
    ref_rejected_logps_B: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths_B: Tensor | None = None,
    rejected_lengths_B: Tensor | None = None,
    normaliser: Normaliser = None,
) -> tuple[Tensor, dict[str, float]]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
    Human Preferences", eq. 17, beta = the paper's tau).

    h      = (pi_c - ref_c) - (pi_r - ref_r)                       [B]
    loss_b = (h - 1 / (2 * beta))^2
    The log-probs are used as passed in and lengths are ignored, as in TRL's
    ``dpo_loss``. Note TRL's DPOTrainer feeds IPO per-token MEAN log-probs
    (summed / token count); to reproduce TRL, pass those. With summed
    log-probs the target margin 1/(2 beta) applies to whole sequences, as in the
    paper. Implicit rewards: beta * (pi - ref).
    """
    _check(beta, label_smoothing, gamma, smoothing_ok=False, gamma_ok=False, name="ipo")
    c_B, r_B = _ref_logratios("ipo", policy_chosen_logps_B, policy_rejected_logps_B,
                              ref_chosen_logps_B, ref_rejected_logps_B)
    loss_B = (c_B - r_B - 1 / (2 * beta)).square()
    return _mean_over(loss_B, normaliser), _metrics(beta * c_B, beta * r_B, policy_chosen_logps_B,
                                                     policy_rejected_logps_B)


@register_preference_loss("hinge")
def hinge_loss(
    policy_chosen_logps_B: Tensor,
    policy_rejected_logps_B: Tensor,
    ref_chosen_logps_B: Tensor | None,
    ref_rejected_logps_B: Tensor | None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths_B: Tensor | None = None,
    rejected_lengths_B: Tensor | None = None,
    normaliser: Normaliser = None,
) -> tuple[Tensor, dict[str, float]]:
    """SLiC hinge loss (Zhao et al. 2023, "SLiC-HF"), with the reference log-ratio as in TRL / Liu et al. 2023 (RSO).

    h      = (pi_c - ref_c) - (pi_r - ref_r)                       [B]
    loss_b = relu(1 - beta * h)
    Zero (and zero gradient) once beta * h >= 1, i.e. h >= 1/beta. Lengths are
    ignored. Implicit rewards: beta * (pi - ref).
    """
    _check(beta, label_smoothing, gamma, smoothing_ok=False, gamma_ok=False, name="hinge")
    c_B, r_B = _ref_logratios("hinge", policy_chosen_logps_B, policy_rejected_logps_B,
                              ref_chosen_logps_B, ref_rejected_logps_B)
    loss_B = torch.relu(1 - beta * (c_B - r_B))
    return _mean_over(loss_B, normaliser), _metrics(beta * c_B, beta * r_B, policy_chosen_logps_B,
                                                     policy_rejected_logps_B)


@register_preference_loss("simpo")
def simpo_loss(
    policy_chosen_logps_B: Tensor,
    policy_rejected_logps_B: Tensor,
    ref_chosen_logps_B: Tensor | None = None,
    ref_rejected_logps_B: Tensor | None = None,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
    chosen_lengths_B: Tensor | None = None,
    rejected_lengths_B: Tensor | None = None,
    normaliser: Normaliser = None,
) -> tuple[Tensor, dict[str, float]]:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", eq. 6).

    u_c = beta * pi_c / |y_c|,  u_r = beta * pi_r / |y_r|            [B]
    z   = u_c - u_r - gamma
    loss_b = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)
    |y| = ``chosen_lengths_B`` / ``rejected_lengths_B``, response token counts
    (required). gamma is the paper's target reward margin (TRL's ``simpo_gamma``);
    eps = ``label_smoothing`` as in TRL's CPOTrainer (0 in the paper). Reference
    log-probs are ignored. Implicit rewards: u_c, u_r.
    """
    _check(beta, label_smoothing, gamma, smoothing_ok=True, gamma_ok=True, name="simpo")
    if chosen_lengths_B is None or rejected_lengths_B is None:
        raise ValueError("simpo needs chosen_lengths_B and rejected_lengths_B (response token counts per sequence)")
    dtype = policy_chosen_logps_B.dtype
    # clamp: an empty response (sum 0) gets reward 0 instead of 0/0 = nan.
    u_c = beta * policy_chosen_logps_B / chosen_lengths_B.to(dtype).clamp(min=1)
    u_r = beta * policy_rejected_logps_B / rejected_lengths_B.to(dtype).clamp(min=1)
    loss_B = _smoothed_logsigmoid_loss(u_c - u_r - gamma, label_smoothing)
    return _mean_over(loss_B, normaliser), _metrics(u_c, u_r, policy_chosen_logps_B, policy_rejected_logps_B)
