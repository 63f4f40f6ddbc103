"""Benchmark models: Qwen2-architecture, random init, the tiny tokenizer, built locally and cached.

    tiny  ~0.9M  (tiny:base itself)
    30m   ~32M   hidden 512, 10 layers
    100m  ~99M   hidden 768, 14 layers
    500m  ~426M  hidden 1024, 28 layers (intermediate 4096, 16 heads, 4 KV heads; 1.7 GB fp32 on disk)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlengine import tiny  # noqa: E402

SIZES = {
    "30m": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=10, num_attention_heads=8,
                num_key_value_heads=4),
    "100m": dict(hidden_size=768, intermediate_size=2304, num_hidden_layers=14, num_attention_heads=12,
                 num_key_value_heads=6),
    "500m": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=4),
}


def build(size: str) -> Path:
    if size == "tiny":
        return tiny.build_base()
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = tiny.cache_root() / f"bench_{size}"
    if (out / "config.json").exists():
        return out
    tok = tiny.build_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      torch_dtype="float32", **SIZES[size])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    os.replace(tmp, out)
    return out


def embed_params(path: Path) -> int:
    """Elements of the input embedding when it is not tied to the output head (a lookup: no FLOPs)."""
    import math

    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        if "model.embed_tokens.weight" not in keys or "lm_head.weight" not in keys:
            return 0
        return math.prod(f.get_slice("model.embed_tokens.weight").get_shape())


def n_params(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel")
                   else int(__import__("math").prod(f.get_slice(k).get_shape())) for k in f.keys())


if __name__ == "__main__":
    for s in sys.argv[1:] or ["tiny", "30m", "100m"]:
        p = build(s)
        print(s, p, f"{n_params(p) / 1e6:.1f}M params")
