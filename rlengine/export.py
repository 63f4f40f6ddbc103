"""Export a checkpoint's trainer (or critic) shards as a Hugging Face model, without Ray or GPUs.

    python -m rlengine.export RUN_DIR/checkpoints/step_000002 [OUT_DIR] [--role critic]

OUT_DIR defaults to CHECKPOINT/hf. The ZeRO partitions of every rank are merged into one fp32
state dict (DeepSpeed's zero_to_fp32), loaded into the architecture named by the checkpoint's
`model_config/`, cast to the run's dtype and saved with the tokenizer.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from rlengine import checkpoint
from rlengine.modeling import DTYPES


def export(ckpt: Path, out: Path, role: str = "trainer") -> Path:
    import transformers
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    why = checkpoint.problem(ckpt)
    if why is not None:
        raise SystemExit(f"error: {ckpt} is not a complete checkpoint: {why}")
    state = checkpoint.read_state(ckpt)
    shards = ckpt / role
    if not shards.is_dir():
        raise SystemExit(f"error: {ckpt} has no {role}/ (roles saved: "
                         f"{sorted(p.name for p in ckpt.iterdir() if (p / 'latest').exists())})")
    config_dir = ckpt / "trainer" / "model_config"
    config = transformers.AutoConfig.from_pretrained(config_dir)
    if role == "critic":
        config.num_labels = 1
        cls = transformers.AutoModelForTokenClassification
    else:
        cls = getattr(transformers, (config.architectures or ["AutoModelForCausalLM"])[0])
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    if state["shape"].get("trainer.zero_stage", 3) > 0:
        sd = get_fp32_state_dict_from_zero_checkpoint(str(shards), tag=state["tag"])
    else:
        sd = torch.load(shards / state["tag"] / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(f"error: the shards do not match {cls.__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.to(DTYPES[state["shape"].get("model.dtype", "float32")])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(config_dir).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlengine.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--role", choices=("trainer", "critic"), default="trainer")
    args = ap.parse_args(argv)
    ckpt = args.checkpoint.resolve()
    out = export(ckpt, (args.out or ckpt / ("hf" if args.role == "trainer" else "hf_critic")).resolve(), args.role)
    print(f"exported {ckpt} ({args.role}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
