"""Model-side helpers shared by the trainer and the reference roles (no Ray, no vLLM)."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import torch

from rlengine.algos.losses import entropy_from_logits, logprobs_from_logits

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


def forward_logits(model, batch) -> torch.Tensor:
    """logits_BLV of the layout's input_ids; for a packed batch (`segment_ids`) no row attends to
    another in its pack.

    transformers builds the block-diagonal causal mask from position_ids that restart per row
    (masking_utils.find_packed_sequence_indices, sdpa and eager) only when no 2D mask is given, so
    the 2D mask is dropped: a pack has no left padding (its prompt is one token) and right padding
    follows every real token, which causal attention never looks at.  Flash attention reads packed
    position_ids only at batch size 1 (modeling_flash_attention_utils._is_packed_sequence), so there
    the rows are laid end to end in one.
    """
    ids_BL, pos_BL = batch["input_ids"], batch["position_ids"]
    if "segment_ids" not in batch:
        return model(input_ids=ids_BL, attention_mask=batch["attention_mask"], position_ids=pos_BL,
                     use_cache=False).logits
    impl = getattr(getattr(getattr(model, "module", model), "config", None), "_attn_implementation", "") or ""
    if impl.startswith("flash"):
        B, L = ids_BL.shape
        out = model(input_ids=ids_BL.reshape(1, B * L), position_ids=pos_BL.reshape(1, B * L), use_cache=False)
        return out.logits.view(B, L, -1)
    return model(input_ids=ids_BL, attention_mask=None, position_ids=pos_BL, use_cache=False).logits


def response_logprobs(model, batch, temperature: float = 1.0, with_entropy: bool = False):
    """Log-probs of the response tokens under `model`.

    Layout (from the rollout role): input_ids_BL = [left-padded prompt (P) | right-padded response (R)],
    so the logits at columns P-1 .. P+R-2 predict the response tokens at P .. P+R-1.
    Logits are divided by the sampling temperature so these match vLLM's processed log-probs.
    Returns logp_BR (and entropy_BR when asked).
    """
    input_ids_BL = batch["input_ids"]
    P = input_ids_BL.shape[1] - batch["responses"].shape[1]
    logits_BRV = forward_logits(model, batch)[:, P - 1:-1].float()
    if temperature != 1.0:
        logits_BRV = logits_BRV / temperature
    logp_BR = logprobs_from_logits(logits_BRV, batch["responses"])
    if not with_entropy:
        return logp_BR
    return logp_BR, entropy_from_logits(logits_BRV)


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
