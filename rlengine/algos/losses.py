"""Losses for RL, SFT and critic training: pure tensor functions.

Pairwise preference losses (reward model, DPO family) live in ``preference.py``.

Conventions
-----------
* Shapes are in names: ``_BT`` is [batch, tokens] (response positions), ``_BTV``
  adds the vocabulary, ``_B`` is one value per sequence.
* ``mask_BT`` is 1 on tokens that count (response tokens) and 0 elsewhere.
* Every per-token loss is reduced by ``agg_loss``; nothing else averages.
* Metrics are returned as *detached 0-dim tensors* (not python floats) so a
  training loop over micro-batches does not force a device sync per step; call
  ``.item()`` once when logging. Token-level metrics (clip fractions, approx KL)
  are means over the valid tokens of the tensors passed in (the micro-batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Normaliser = float | int | Tensor | None

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over mask's nonzero entries (0 for an empty mask)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def agg_loss(loss_BT: Tensor, mask_BT: Tensor, mode: str, normaliser: Normaliser = None) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar. The one aggregation function.

    Modes (m = mask, L = loss, D = ``normaliser``):
      "token-mean"              sum_{b,t} L*m / D,   D defaults to sum(m) (valid tokens)
      "seq-mean-token-sum"      sum_b (sum_t L*m) / D,   D defaults to #sequences
      "seq-mean-token-mean"     sum_b (sum_t L*m / sum_t m) / D,   D defaults to #sequences
      "seq-mean-token-sum-norm" sum_{b,t} L*m / D,   D defaults to #sequences * T
                                (Dr. GRPO, Liu et al. 2025: a *constant* per-sequence
                                length, not the actual one, so long answers are not
                                down-weighted)
    "#sequences" counts rows with at least one valid token, so all-padding rows
    (e.g. a fully truncated SFT row) do not dilute the mean.

    The normaliser is a count over the GLOBAL batch. The defaults use the local
    tensors, which is right only when this call sees the whole batch. When a
    batch is split into micro-batches and/or data-parallel ranks, pass the count
    over the whole (global) mini-batch: every term is then a plain sum divided
    by one shared constant, so the micro-batch losses (and gradients) add up
    exactly to the full-batch loss and no rescaling by micro-batch count is
    needed. (With the defaults, "token-mean" over micro-batches of unequal token
    counts would weight tokens unequally.) For "seq-mean-token-sum-norm" pass
    #global_sequences * max_response_length so the constant does not move with
    each micro-batch's padded width.
    """
    if loss_BT.shape != mask_BT.shape:
        raise ValueError(f"loss shape {tuple(loss_BT.shape)} != mask shape {tuple(mask_BT.shape)}")
    m = mask_BT.to(loss_BT.dtype)
    # where() rather than a product so inf/nan at masked positions cannot leak.
    masked = torch.where(mask_BT.bool(), loss_BT, torch.zeros_like(loss_BT))
    if mode == "token-mean":
        total = masked.sum()
        default = m.sum()
    elif mode == "seq-mean-token-sum":
        total = masked.sum(-1).sum()
        default = (m.sum(-1) > 0).sum()
    elif mode == "seq-mean-token-mean":
        total = (masked.sum(-1) / m.sum(-1).clamp(min=1)).sum()
        default = (m.sum(-1) > 0).sum()
    elif mode == "seq-mean-token-sum-norm":
        total = masked.sum()
        default = (m.sum(-1) > 0).sum() * loss_BT.shape[-1]
    else:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; known: {list(AGG_MODES)}")
    if normaliser is None:
        # An all-masked micro-batch yields 0 loss, not nan.
        return total / torch.as_tensor(default, dtype=total.dtype, device=total.device).clamp(min=1)
    return total / normaliser


PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]

POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: add a policy loss to ``POLICY_LOSSES`` under ``name``; a taken name is an error.

    Registered losses share ``policy_loss_clip``'s signature::

        fn(logp_BT, old_logp_BT, adv_BT, mask_BT, *, clip_low, clip_high, dual_clip_c,
           agg_mode, normaliser) -> (loss, {"clip_frac": ..., "approx_kl": ..., ...})
    """

    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return deco


def get_policy_loss(name: str) -> PolicyLossFn:
    """Look up a policy loss by name; the ValueError lists the known names."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; known: {sorted(POLICY_LOSSES)}") from None


@register_policy_loss("clip")
def policy_loss_clip(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    mask_BT: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip_c: float | None = None,
    agg_mode: str = "token-mean",
    normaliser: Normaliser = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017) with clip-higher and dual-clip.

    ratio = exp(logp - old_logp)
    L     = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))
    Clip-higher (DAPO, Yu et al. 2025): clip_high > clip_low lets low-probability
    tokens grow more before clipping, against entropy collapse.
    Dual-clip (Ye et al. 2020), for A < 0 only: L = min(L, -A * c), c > 1, which
    bounds the loss when the ratio explodes on a negative-advantage token.
    The loss is then reduced with ``agg_loss(L, mask, agg_mode, normaliser)``.

    Metrics (detached 0-dim tensors, means over valid tokens of this call):
      clip_frac       fraction of tokens where the clipped term was the max
      dual_clip_frac  fraction of tokens where the dual-clip bound was taken
      approx_kl       mean(old_logp - logp), k1 estimate of KL(old || new)
    """
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip_c is not None and dual_clip_c <= 1:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    log_ratio = logp_BT - old_logp_BT
    # Clamp before exp: a stale/garbage old_logp must not turn into inf * 0 = nan.
    ratio = torch.exp(log_ratio.clamp(-20.0, 20.0))
    loss_unclipped = -adv_BT * ratio
    loss_clipped = -adv_BT * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    dual_taken = torch.zeros_like(mask_BT, dtype=torch.bool)
    if dual_clip_c is not None:
        bound = -adv_BT * dual_clip_c
        dual_taken = (adv_BT < 0) & (loss > bound)
        loss = torch.where(adv_BT < 0, torch.minimum(loss, bound), loss)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((loss_clipped > loss_unclipped).float(), mask_BT),
            "dual_clip_frac": masked_mean(dual_taken.float(), mask_BT),
            "approx_kl": masked_mean(-log_ratio.float(), mask_BT),
        }
    return agg_loss(loss, mask_BT, agg_mode, normaliser), metrics


@register_policy_loss("gspo")
def policy_loss_gspo(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    mask_BT: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip_c: float | None = None,
    agg_mode: str = "token-mean",
    normaliser: Normaliser = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"), GSPO-token form.

    s_b  = exp( sum_t m * (logp - old_logp) / sum_t m )     sequence ratio (pi/pi_old)^(1/|y|)
    s_bt = sg[s_b] * exp(logp_bt - sg[logp_bt])             value s_b, gradient s_b * grad logp_bt
    L_bt = max(-A_bt * s_bt, -A_bt * clip(s_bt, 1 - clip_low, 1 + clip_high))
    then ``agg_loss(L, mask, agg_mode, normaliser)``. sg = stop-gradient.
    Clipping is decided per sequence: every token of a sequence shares s_b, so
    the whole sequence is clipped or none of it. With a per-sequence advantage
    and "seq-mean-token-mean" (the paper's 1/G sum_i 1/|y_i| sum_t; verl forces
    it for GSPO) this is exactly the paper's sequence-level GSPO objective and
    gradient; other modes reweight sequences. The paper's clip ranges are tiny
    (3e-4 / 4e-4) because s_b is a per-token geometric mean.
    ``dual_clip_c`` is not part of GSPO and must be None.

    Metrics (detached 0-dim tensors, means over valid tokens of this call):
      clip_frac   fraction of tokens where the clipped term was the max
      approx_kl   mean(old_logp - logp), the token-level k1 estimate, as for "clip"
    """
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip_c is not None:
        raise ValueError(f"gspo has no dual clip; dual_clip_c must be None, got {dual_clip_c}")
    valid = mask_BT.bool()
    log_ratio = logp_BT - old_logp_BT
    # where() so garbage log-probs at padded positions cannot enter the sequence mean.
    seq_log_ratio_B = torch.where(valid, log_ratio, torch.zeros_like(log_ratio)).sum(-1) / valid.sum(-1).clamp(min=1)
    # Clamp the value before exp, as for "clip": a stale old_logp must not turn into inf.
    log_s_BT = logp_BT - logp_BT.detach() + seq_log_ratio_B.detach().clamp(-20.0, 20.0).unsqueeze(-1)
    s_BT = torch.exp(log_s_BT)
    loss_unclipped = -adv_BT * s_BT
    loss_clipped = -adv_BT * s_BT.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((loss_clipped > loss_unclipped).float(), mask_BT),
            "approx_kl": masked_mean(-log_ratio.float(), mask_BT),
        }
    return agg_loss(loss, mask_BT, agg_mode, normaliser), metrics


_KL_ALIASES = {
    "k1": "k1", "kl": "k1",
    "abs": "abs",
    "k2": "k2", "mse": "k2",
    "k3": "k3", "low_var_kl": "k3",
}


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token log-probs; shape preserved.

    With d = logp - ref_logp (samples drawn from pi), after Schulman's
    "Approximating KL divergence" note:
      "k1" / "kl"          d                        unbiased, high variance, can be < 0
      "abs"                |d|
      "k2" / "mse"         0.5 * d^2                biased, low variance
      "k3" / "low_var_kl"  exp(-d) + d - 1          unbiased, >= 0; as in verl, -d is
                           clamped to [-20, 20] before exp and the result to [-10, 10]
    """
    try:
        k = _KL_ALIASES[kind]
    except KeyError:
        raise ValueError(f"unknown KL estimator {kind!r}; known: {sorted(_KL_ALIASES)}") from None
    d = logp - ref_logp
    if k == "k1":
        return d
    if k == "abs":
        return d.abs()
    if k == "k2":
        return 0.5 * d.square()
    neg_d = (-d).clamp(-20.0, 20.0)
    return (torch.exp(neg_d) - neg_d - 1).clamp(-10.0, 10.0)


def entropy_from_logits(logits_BTV: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: H = logsumexp(z) - sum_v p_v z_v. [B,T,V] -> [B,T].

    The logsumexp form never takes log of a tiny probability, so it is stable
    for very peaked distributions.
    """
    z = logits_BTV.float() if logits_BTV.dtype in (torch.float16, torch.bfloat16) else logits_BTV
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


def logprobs_from_logits(logits_BTV: Tensor, labels_BT: Tensor) -> Tensor:
    """log softmax(logits)[label] per position: z_label - logsumexp(z). [B,T,V], [B,T] -> [B,T].

    Gathers the label logit and subtracts logsumexp instead of materialising the
    full log_softmax, and upcasts half precision to float32 (bf16 log-probs are
    too coarse for importance ratios). Labels are expected already shifted.
    """
    z = logits_BTV.float() if logits_BTV.dtype in (torch.float16, torch.bfloat16) else logits_BTV
    picked = torch.gather(z, -1, labels_BT.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def _logsumexp_(z_nV: Tensor) -> Tensor:
    """logsumexp over the last dim as torch.logsumexp computes it (max, shifted exp, sum, log,
    max back; an infinite max shifts by 0), overwriting z_nV instead of allocating a copy."""
    m_n1 = z_nV.amax(dim=-1, keepdim=True)
    m_n1.masked_fill_(m_n1.abs() == math.inf, 0)
    return z_nV.sub_(m_n1).exp_().sum(-1).log_().add_(m_n1.squeeze(-1))


def chunked_logprobs(
    rows_N: Tensor,
    labels_N: Tensor,
    project: Callable[[Tensor], Tensor],
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 512,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    n_chunks: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of labels (and entropies) from logits made ``chunk_tokens`` rows at a time.

    With z_n = project(rows_N[n]).float() / temperature  ([V], fp32 whatever project's dtype):
      logp_n = z_n[label_n] - logsumexp(z_n)
      H_n    = logsumexp(z_n) - sum_v softmax(z_n)_v * z_n,v
    the same formulas as ``logprobs_from_logits`` / ``entropy_from_logits``, so the values match the
    full-logits computation. ``rows_N`` is anything with N leading rows that ``project`` turns into
    logits: hidden states [N, H] with project = the output head (logits [n, V]), or row indices.

    Memory: the logits exist one chunk [chunk_tokens, V] (fp32) at a time. Without gradients
    project's output is overwritten in place (it must be a new tensor, as a Linear's output is):
    log-probs alone need that one tensor, the entropy one more. With gradients each chunk runs under
    a non-reentrant checkpoint, so the graph keeps its inputs, not its logits, and backward
    recomputes them (as Liger-Kernel's fused linear cross-entropy does), a few [chunk_tokens, V]
    tensors at a time. ``entropy_grad=False`` computes H under no_grad (a metric only, none of its
    softmax kept for backward), detached.

    ``project`` is called exactly ``n_chunks`` times (default and minimum: ceil(N / chunk_tokens),
    at least 1; chunks past the rows are empty): a caller whose head gathers sharded weights at
    each call (ZeRO-3) passes the same count on every rank. The empty chunk of N = 0 still links
    the outputs to project's parameters, so a loss over them can always be backpropagated.

    Shapes: rows [N, ...], labels [N] -> logp [N] fp32, entropy [N] fp32 (None without entropy).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    N = labels_N.shape[0]
    n_chunks = max(n_chunks or 0, 1, -(-N // chunk_tokens))
    labels_N = labels_N.long()

    def one(rows_n: Tensor, labels_n: Tensor) -> tuple[Tensor, ...]:
        z_nV = project(rows_n).float()
        if temperature != 1.0:
            z_nV = z_nV / temperature
        picked_n = torch.gather(z_nV, -1, labels_n.unsqueeze(-1)).squeeze(-1)
        if not torch.is_grad_enabled():
            # No graph: z is this call's own tensor and may be overwritten, so logp alone needs no
            # second [n, V] tensor (the entropy's softmax is one, before z is).
            pz_n = torch.softmax(z_nV, dim=-1).mul_(z_nV).sum(-1) if with_entropy else None
            lse_n = _logsumexp_(z_nV)
            return (picked_n - lse_n,) if pz_n is None else (picked_n - lse_n, lse_n - pz_n)
        lse_n = torch.logsumexp(z_nV, dim=-1)
        logp_n = picked_n - lse_n
        if not with_entropy:
            return (logp_n,)
        if entropy_grad:
            return logp_n, lse_n - (torch.softmax(z_nV, dim=-1) * z_nV).sum(-1)
        with torch.no_grad():
            return logp_n, lse_n - torch.softmax(z_nV, dim=-1).mul_(z_nV).sum(-1)

    checkpointed = torch.is_grad_enabled()
    outs = []
    for i in range(n_chunks):
        args = (rows_N[i * chunk_tokens:(i + 1) * chunk_tokens], labels_N[i * chunk_tokens:(i + 1) * chunk_tokens])
        outs.append(checkpoint(one, *args, use_reentrant=False) if checkpointed else one(*args))
    logp_N = torch.cat([o[0] for o in outs])
    return logp_N, torch.cat([o[1] for o in outs]) if with_entropy else None


def sft_loss(
    logp_BT: Tensor, mask_BT: Tensor, agg_mode: str = "token-mean", normaliser: Normaliser = None
) -> Tensor:
    """Negative log-likelihood: agg_loss(-logp, mask, agg_mode, normaliser)."""
    return agg_loss(-logp_BT, mask_BT, agg_mode, normaliser)


def value_loss_clipped(
    values_BT: Tensor,
    old_values_BT: Tensor,
    returns_BT: Tensor,
    mask_BT: Tensor,
    clip_range: float | None = 0.2,
    agg_mode: str = "token-mean",
    normaliser: Normaliser = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped value loss: 0.5 * agg(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)).

    ``clip_range=None`` gives the plain 0.5 * (V - R)^2. Metric ``vf_clip_frac``:
    fraction of valid tokens where the clipped term was the larger one.
    """
    err_unclipped = (values_BT - returns_BT).square()
    if clip_range is None:
        loss = err_unclipped
        clip_frac = torch.zeros((), device=values_BT.device)
    else:
        v_clipped = old_values_BT + (values_BT - old_values_BT).clamp(-clip_range, clip_range)
        err_clipped = (v_clipped - returns_BT).square()
        loss = torch.maximum(err_unclipped, err_clipped)
        with torch.no_grad():
            clip_frac = masked_mean((err_clipped > err_unclipped).float(), mask_BT)
    return 0.5 * agg_loss(loss, mask_BT, agg_mode, normaliser), {"vf_clip_frac": clip_frac.detach()}


class FixedKLController:
    """Constant KL coefficient. ``update`` is a no-op so callers need not branch."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences").

    e = clip(current_kl / target - 1, -0.2, 0.2);  value *= 1 + e * n_steps / horizon
    n_steps is the number of samples (or steps) since the last update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))

