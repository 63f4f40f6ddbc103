"""Model-side helpers shared by the trainer and the reference roles (no Ray, no vLLM)."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import torch

from rlengine.algos.losses import chunked_logprobs
from rlengine.lora import inner_model

log = logging.getLogger("rlengine")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def set_threads(n: int) -> None:
    """Pin intra-op threads; Ray actors otherwise inherit OMP_NUM_THREADS=1."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


@contextmanager
def intra_op_threads(n: int | None):
    """torch's intra-op threads set to `n` for the block (None: unchanged)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _attn_impl(model) -> str:
    return getattr(getattr(getattr(model, "module", model), "config", None), "_attn_implementation", "") or ""


def _layout_forward(call, impl: str, batch, field: str, logits_to_keep: int | None = None) -> torch.Tensor:
    """`field` ([B, L or logits_to_keep, ...]) of `call` (a causal LM or its backbone) on the
    layout's input_ids; for a packed batch (`segment_ids`) no row attends to another in its pack.

    transformers builds the block-diagonal causal mask from position_ids that restart per row
    (masking_utils.find_packed_sequence_indices, sdpa and eager) only when no 2D mask is given, so
    the 2D mask is dropped: a pack has no left padding (its prompt is one token) and right padding
    follows every real token, which causal attention never looks at.  Flash attention reads packed
    position_ids only at batch size 1 (modeling_flash_attention_utils._is_packed_sequence), so there
    the rows are laid end to end in one (and logits_to_keep becomes each row's last columns).
    """
    ids_BL, pos_BL = batch["input_ids"], batch["position_ids"]
    keep = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
    if "segment_ids" not in batch:
        return getattr(call(input_ids=ids_BL, attention_mask=batch["attention_mask"], position_ids=pos_BL,
                            use_cache=False, **keep), field)
    if impl.startswith("flash"):
        B, L = ids_BL.shape
        if logits_to_keep is not None:
            cols = torch.arange(L - logits_to_keep, L, device=ids_BL.device)
            keep = {"logits_to_keep": (torch.arange(B, device=ids_BL.device)[:, None] * L + cols).flatten()}
        out = call(input_ids=ids_BL.reshape(1, B * L), position_ids=pos_BL.reshape(1, B * L), use_cache=False,
                   **keep)
        return getattr(out, field).view(B, L if logits_to_keep is None else logits_to_keep, -1)
    return getattr(call(input_ids=ids_BL, attention_mask=None, position_ids=pos_BL, use_cache=False, **keep), field)


def forward_logits(model, batch) -> torch.Tensor:
    """logits_BLV of the layout's input_ids (packed batches as in `_layout_forward`)."""
    return _layout_forward(model, _attn_impl(model), batch, "logits")


# Config fields of causal LMs whose forward transforms the head's output (Gemma-2 soft-capping,
# Cohere's scale, Granite's divisor): the head alone would not give their logits.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _split_model(model):
    """(root, inner, backbone, head) of `model` for the chunked path, or None where its logits are
    not head(backbone(...)) or calling those submodules would bypass something: a compiled engine
    or module, a prompt-learning PEFT model (PeftModel.forward prepends the virtual tokens), a
    causal LM that transforms its head's output, one without base_model_prefix.

    root is the module inside a DeepSpeed engine / DDP (`.module`); inner the HF model inside a
    PeftModel, whose submodules hold the injected LoRA layers, so calling them applies the adapter
    and `disable_adapter()` still turns it off.
    """
    if getattr(model, "is_compiled", False) or hasattr(model, "_orig_mod"):
        return None
    root = model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model
    if getattr(getattr(root, "active_peft_config", None), "is_prompt_learning", False):
        return None
    inner = inner_model(root)
    prefix = getattr(inner, "base_model_prefix", "") or ""
    backbone = getattr(inner, prefix, None) if prefix else None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(backbone, torch.nn.Module) or backbone is inner or not isinstance(head, torch.nn.Module):
        return None
    cfg = getattr(inner, "config", None)
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        return None
    return root, inner, backbone, head


def _as_root_forward(model, root, fn):
    """fn() run as `root`'s forward through the wrapper `model` (a DeepSpeed engine, DDP), or fn().

    DeepSpeed's engine.forward attaches ZeRO's backward prologue (accumulation boundary, gradient
    reduction callbacks) to the outputs and the root module's hook resets the ZeRO-3 prefetch
    trace; calling the backbone and head directly would skip both.  So for this one call the root
    module's forward is fn (its own instance attribute, if any, is put back after).
    """
    if model is root:
        return fn()
    own = root.__dict__.get("forward")
    root.forward = fn
    try:
        return model()
    finally:
        if own is None:
            del root.forward
        else:
            root.forward = own


def _same_on_every_rank(n: int, head, device) -> int:
    """n, or the largest n of any rank when the head's weights are ZeRO-3 partitioned: each head
    call gathers them (a collective), so every rank must call it the same number of times."""
    p = next(head.parameters(), None)
    if p is None or not hasattr(p, "ds_id"):
        return n
    import torch.distributed as dist

    group = getattr(p, "ds_process_group", None)
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return n
    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


def response_logprobs(model, batch, temperature: float = 1.0, with_entropy: bool = False,
                      entropy_grad: bool = True, chunk_tokens: int = 512):
    """Log-probs of the response tokens under `model`, without logits over the whole batch.

    Layout (from the rollout role): input_ids_BL = [left-padded prompt (P) | right-padded response (R)],
    so the hidden states at columns P-1 .. P+R-2 predict the response tokens at P .. P+R-1.
    Only those positions that hold a real response token (attention_mask 1) go through the output
    head, `chunk_tokens` at a time, in fp32 and divided by the sampling temperature, so these match
    vLLM's processed log-probs (algos.losses.chunked_logprobs: at most one chunk's logits at a time,
    recomputed in backward).  Padding positions are 0.
    `model`: a causal LM, a PeftModel, or a DeepSpeed engine around either; where its forward
    cannot be split into backbone and head (`_split_model`) the full forward runs, keeping the
    logits of the last R + 1 columns only (logits_to_keep) when it accepts that.
    Returns logp_BR, or (logp_BR, entropy_BR) with_entropy; entropy_grad=False computes the entropy
    without gradient (a metric: entropy_coef 0), detached.
    """
    R = batch["responses"].shape[1]
    P = batch["input_ids"].shape[1] - R
    valid_BR = batch["attention_mask"][:, P:].bool()
    labels_N = batch["responses"][valid_BR]
    kw = dict(temperature=temperature, chunk_tokens=chunk_tokens, with_entropy=with_entropy,
              entropy_grad=entropy_grad)
    parts = _split_model(model)
    if parts is not None:
        root, inner, backbone, head = parts
        n_chunks = _same_on_every_rank(max(1, -(-labels_N.shape[0] // chunk_tokens)), head, valid_BR.device)

        def split_forward():
            hidden_BLH = _layout_forward(backbone, _attn_impl(inner), batch, "last_hidden_state")
            return chunked_logprobs(hidden_BLH[:, P - 1:-1][valid_BR], labels_N, head, n_chunks=n_chunks, **kw)

        logp_N, ent_N = _as_root_forward(model, root, split_forward)
    else:
        logits_BRV = _full_logits(model, batch, R)
        rows_N = valid_BR.flatten().nonzero().squeeze(-1)  # row b*R + r of logits_BRV

        def pick(rows_n):
            return logits_BRV[rows_n // R, rows_n % R]

        logp_N, ent_N = chunked_logprobs(rows_N, labels_N, pick, **kw)
    logp_BR = torch.zeros(valid_BR.shape, dtype=logp_N.dtype, device=logp_N.device).masked_scatter(valid_BR, logp_N)
    if not with_entropy:
        return logp_BR
    return logp_BR, torch.zeros_like(logp_BR).masked_scatter(valid_BR, ent_N)


def response_token_map(model, batch, fn, per_token_BR: tuple = (), chunk_tokens: int = 512) -> tuple:
    """fn(logits_nV fp32, labels_n, *per_token_n) -> tuple of [n, ...] tensors on the response
    tokens of `batch` (the layout of `response_logprobs`, same split of backbone and head), made
    `chunk_tokens` positions at a time (algos.distill.chunked_map: checkpointed with gradients).

    per_token_BR: tensors [B, R, ...] aligned with the responses (a teacher's top-k log-probs);
    each output comes back as [B, R, ...], zero at padding positions.  Raw logits: fn applies
    any temperature itself.
    """
    from rlengine.algos.distill import chunked_map

    R = batch["responses"].shape[1]
    P = batch["input_ids"].shape[1] - R
    valid_BR = batch["attention_mask"][:, P:].bool()
    inputs_N = (batch["responses"][valid_BR], *(x.to(valid_BR.device)[valid_BR] for x in per_token_BR))
    parts = _split_model(model)
    if parts is not None:
        root, inner, backbone, head = parts
        n_chunks = _same_on_every_rank(max(1, -(-inputs_N[0].shape[0] // chunk_tokens)), head, valid_BR.device)

        def split_forward():
            hidden_BLH = _layout_forward(backbone, _attn_impl(inner), batch, "last_hidden_state")
            return chunked_map(hidden_BLH[:, P - 1:-1][valid_BR], inputs_N, head, fn, chunk_tokens, n_chunks)

        outs_N = _as_root_forward(model, root, split_forward)
    else:
        logits_BRV = _full_logits(model, batch, R)
        rows_N = valid_BR.flatten().nonzero().squeeze(-1)
        outs_N = chunked_map(rows_N, inputs_N, lambda rows_n: logits_BRV[rows_n // R, rows_n % R], fn, chunk_tokens)
    outs = []
    for o_N in outs_N:
        o_BR = o_N.new_zeros((*valid_BR.shape, *o_N.shape[1:]))
        o_BR[valid_BR] = o_N
        outs.append(o_BR)
    return tuple(outs)


def _full_logits(model, batch, R: int) -> torch.Tensor:
    """logits_BRV at columns P-1 .. P+R-2 from the model's own forward: with logits_to_keep=R+1
    where the causal LM accepts it (no logits over the prompt), else all L columns sliced."""
    import inspect

    root = model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model
    forward = getattr(inner_model(getattr(root, "_orig_mod", root)), "forward", None)
    try:
        keeps = "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        keeps = False
    if keeps:
        return _layout_forward(model, _attn_impl(model), batch, "logits", logits_to_keep=R + 1)[:, :-1]
    return forward_logits(model, batch)[:, -R - 1:-1]


_warned_attn: set = set()


def attn_implementation(requested: str) -> str:
    """`requested`, or sdpa when it names a flash-attention kernel that is not installed (flash-attn
    needs CUDA and builds from source): warned once per process, not an error, so a GPU recipe's
    setting still runs where the package is missing."""
    if not requested.startswith("flash_attention"):
        return requested
    import importlib.util

    module = "flash_attn_interface" if requested == "flash_attention_3" else "flash_attn"
    if importlib.util.find_spec(module) is not None and torch.cuda.is_available():
        return requested
    if requested not in _warned_attn:
        _warned_attn.add(requested)
        why = "no CUDA device" if importlib.util.find_spec(module) is not None else f"{module} is not installed"
        log.warning("model.attn_implementation=%s: %s; using sdpa", requested, why)
    return "sdpa"


def load_causal_lm(path: str, dtype: str, attn_impl: str, trust_remote_code: bool = False, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=DTYPES[dtype], attn_implementation=attn_implementation(attn_impl),
        trust_remote_code=trust_remote_code, **kw)
