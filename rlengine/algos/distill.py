"""Knowledge-distillation losses: pure tensor functions over per-token distributions.

Notation: p is the teacher's distribution, q the student's, both at temperature T (softmax of
logits / T), over the *support* S of one token position:

* full vocabulary (teacher.top_k = 0): S = V, exact.
* top-k: S = the teacher's k most likely ids plus one tail bucket holding the rest of each
  distribution's mass (p_tail = 1 - sum_k p_k, q_tail = 1 - sum_k q_k, q_k the student's
  full-vocabulary probabilities at the teacher's ids).  A divergence on this coarsened
  distribution is a lower bound of the full one (data processing) and equals it when the tail
  holds no mass; the student's gradient still pushes its mass out of the tail.  The mass the
  teacher puts on its top k is reported as distill/topk_mass: near 1, the bound is tight.

Divergences (registered by name; `distill.divergence` picks one), per token, summed over S:

* forward_kl:  KL(p || q) = sum p (log p - log q)          (Hinton et al. 2015; mass-covering)
* reverse_kl:  KL(q || p) = sum q (log q - log p)          (MiniLLM, on-policy distillation;
  mode-seeking)
* jsd:  generalised Jensen-Shannon of GKD (Agarwal et al. 2024) as TRL writes it, with
  M = beta * p + (1 - beta) * q:  beta * KL(p || M) + (1 - beta) * KL(q || M), beta in (0, 1);
  beta = 0.5 is the symmetric JSD, bounded by log 2.

Offline distillation (Hinton): L = alpha * CE(y, q_1) + (1 - alpha) * T^2 * D(p_T, q_T); the T^2
keeps the soft term's gradient scale independent of T.

Shapes: ``_N`` one value per response token, ``_NS`` a token's support, ``_NV`` its vocabulary,
``_NK`` the teacher's top k.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Divergence = Callable[..., Tensor]
DIVERGENCES: dict[str, Divergence] = {}

# Log-mass below which a tail bucket counts as empty: keeps log(0) out of the sums (exp(-46) ~ 1e-20).
TAIL_LOG_FLOOR = -46.0


def register_divergence(name: str) -> Callable[[Divergence], Divergence]:
    """Register fn(logp_NS, logq_NS, **kw) -> div_N under `name` (distill.divergence)."""

    def deco(fn: Divergence) -> Divergence:
        if name in DIVERGENCES and DIVERGENCES[name] is not fn:
            raise ValueError(f"divergence {name!r} is already registered")
        DIVERGENCES[name] = fn
        return fn

    return deco


def get_divergence(name: str) -> Divergence:
    if name not in DIVERGENCES:
        raise KeyError(f"unknown divergence {name!r}; registered: {sorted(DIVERGENCES)}")
    return DIVERGENCES[name]


def _plogp_diff(logp_NS: Tensor, loga_NS: Tensor, logb_NS: Tensor) -> Tensor:
    """sum_S exp(logp) * (loga - logb), with 0 * anything = 0 where logp is -inf."""
    p_NS = logp_NS.exp()
    return torch.where(p_NS > 0, p_NS * (loga_NS - logb_NS), torch.zeros_like(p_NS)).sum(-1)


@register_divergence("forward_kl")
def forward_kl(logp_NS: Tensor, logq_NS: Tensor, **_) -> Tensor:
    """KL(p || q) = sum_S p (log p - log q).  [N, S] x [N, S] -> [N]."""
    return _plogp_diff(logp_NS, logp_NS, logq_NS)


@register_divergence("reverse_kl")
def reverse_kl(logp_NS: Tensor, logq_NS: Tensor, **_) -> Tensor:
    """KL(q || p) = sum_S q (log q - log p).  [N, S] x [N, S] -> [N]."""
    return _plogp_diff(logq_NS, logq_NS, logp_NS)


@register_divergence("jsd")
def jsd(logp_NS: Tensor, logq_NS: Tensor, beta: float = 0.5, **_) -> Tensor:
    """beta * KL(p || M) + (1 - beta) * KL(q || M), M = beta * p + (1 - beta) * q (TRL GKD's
    generalized_jsd_loss); beta in (0, 1).  [N, S] x [N, S] -> [N]."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs beta in (0, 1) (0 and 1 are forward_kl and reverse_kl), got {beta}")
    logm_NS = torch.logsumexp(torch.stack([logp_NS + math.log(beta), logq_NS + math.log(1.0 - beta)]), dim=0)
    return beta * _plogp_diff(logp_NS, logp_NS, logm_NS) + (1.0 - beta) * _plogp_diff(logq_NS, logq_NS, logm_NS)


def _fp32(x: Tensor) -> Tensor:
    """At least fp32 (bf16 logits are upcast; fp64 stays fp64)."""
    return x if x.dtype == torch.float64 else x.float()


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def with_tail(logp_NK: Tensor) -> Tensor:
    """[N, K] log-probs of K ids of a distribution -> [N, K+1] with the rest's log-mass last."""
    tail_N = log1mexp(torch.logsumexp(logp_NK, dim=-1)).clamp(min=TAIL_LOG_FLOOR)
    return torch.cat([logp_NK, tail_N.unsqueeze(-1)], dim=-1)


def support_logprobs(student_logits_NV: Tensor, teacher_logp_NK: Tensor, teacher_ids_NK: Tensor | None,
                     temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(logp_NS, logq_NS): teacher and student log-probs on the support S (module docstring).

    student_logits_NV: raw logits [N, V]; teacher_logp_NK: the teacher's log-softmax(logits / T),
    [N, V] with teacher_ids_NK None (full vocabulary) or its top k [N, K] at teacher_ids_NK.
    """
    if teacher_ids_NK is None:
        # A student head padded past the teacher's (Qwen2.5: 152,064 vs 151,936 rows) is compared
        # on the shared ids: the padding rows are no tokenizer's tokens.
        z_NV = _fp32(student_logits_NV)[..., :teacher_logp_NK.shape[-1]]
        return _fp32(teacher_logp_NK), torch.log_softmax(z_NV / temperature, dim=-1)
    logq_NV = torch.log_softmax(_fp32(student_logits_NV) / temperature, dim=-1)
    logq_NK = torch.gather(logq_NV, -1, teacher_ids_NK.long())
    return with_tail(_fp32(teacher_logp_NK)), with_tail(logq_NK)


def distill_token_loss(student_logits_NV: Tensor, labels_N: Tensor, teacher_logp_NK: Tensor,
                       teacher_ids_NK: Tensor | None, *, divergence: str = "forward_kl", alpha: float = 0.0,
                       temperature: float = 1.0, beta: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token (loss_N, div_N, nll_N) of alpha * CE(y, q_1) + (1 - alpha) * T^2 * D(p_T, q_T).

    div_N is D at temperature T without the T^2 factor; nll_N = -log q_1(y), at temperature 1
    (the hard labels' cross-entropy, also what held-out perplexity measures).
    """
    logp_NS, logq_NS = support_logprobs(student_logits_NV, teacher_logp_NK, teacher_ids_NK, temperature)
    div_N = get_divergence(divergence)(logp_NS, logq_NS, beta=beta)
    z_NV = _fp32(student_logits_NV)
    nll_N = torch.logsumexp(z_NV, dim=-1) - torch.gather(z_NV, -1, labels_N.long().unsqueeze(-1)).squeeze(-1)
    loss_N = (1.0 - alpha) * temperature ** 2 * div_N
    if alpha:
        loss_N = loss_N + alpha * nll_N
    return loss_N, div_N, nll_N


def teacher_topk(teacher_logits_NV: Tensor, k: int, temperature: float = 1.0) -> tuple[Tensor, Tensor | None, Tensor]:
    """What the teacher ships per token: (logp_NK, ids_NK, entropy_N) of log-softmax(logits / T);
    k = 0: the full vocabulary (logp_NV, None, entropy_N)."""
    logp_NV = torch.log_softmax(_fp32(teacher_logits_NV) / temperature, dim=-1)
    entropy_N = -(logp_NV.exp() * logp_NV).sum(-1)
    if not k or k >= logp_NV.shape[-1]:
        return logp_NV, None, entropy_N
    logp_NK, ids_NK = torch.topk(logp_NV, k, dim=-1)
    return logp_NK, ids_NK, entropy_N


def chunked_map(rows_N: Tensor, per_row: tuple[Tensor, ...], project: Callable[[Tensor], Tensor],
                fn: Callable[..., tuple[Tensor, ...]], chunk_tokens: int = 512,
                n_chunks: int | None = None) -> tuple[Tensor, ...]:
    """fn(project(rows_n) in fp32 or wider, *per_row_n) chunk by chunk, outputs concatenated over N.

    The generalisation of losses.chunked_logprobs to any per-token function of the logits (a
    distillation divergence, the teacher's top k): at most one chunk's [chunk_tokens, V] logits
    exist at a time; with gradients each chunk runs under a non-reentrant checkpoint, so backward
    recomputes its logits instead of keeping them.  ``project`` is called exactly ``n_chunks``
    times (at least ceil(N / chunk_tokens), at least 1; chunks past the rows are empty), for heads
    whose every call is collective (ZeRO-3).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    N = rows_N.shape[0]
    n_chunks = max(n_chunks or 0, 1, -(-N // chunk_tokens))

    def one(rows_n: Tensor, *args_n: Tensor) -> tuple[Tensor, ...]:
        return tuple(fn(_fp32(project(rows_n)), *args_n))

    outs = []
    for i in range(n_chunks):
        sl = slice(i * chunk_tokens, (i + 1) * chunk_tokens)
        args = (rows_N[sl], *(x[sl] for x in per_row))
        outs.append(checkpoint(one, *args, use_reentrant=False) if torch.is_grad_enabled() else one(*args))
    return tuple(torch.cat([o[j] for o in outs]) for j in range(len(outs[0])))
