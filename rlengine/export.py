"""Export a checkpoint's trainer (or critic) shards as a Hugging Face model, without Ray or GPUs.

    python -m rlengine.export RUN_DIR/checkpoints/step_000002 [OUT_DIR] [--role critic]

OUT_DIR defaults to CHECKPOINT/hf. The ZeRO partitions of every rank are merged into one fp32
state dict (DeepSpeed's zero_to_fp32), loaded into the architecture named by the checkpoint's
`model_config/`, cast to the run's dtype and saved with the tokenizer.

A LoRA run's checkpoint holds the adapter (and any trained head) only: the base is rebuilt from
the run's model.path (quantized again for QLoRA), and OUT_DIR gets the merged model (W0 + BA, a
plain HF checkpoint) with the adapter in PEFT's format under OUT_DIR/adapter.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from rlengine import checkpoint, lora
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
    if state["shape"].get("trainer.zero_stage", 3) > 0:
        sd = get_fp32_state_dict_from_zero_checkpoint(str(shards), tag=state["tag"])
    else:
        sd = torch.load(shards / state["tag"] / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    if state["shape"].get("model.lora.r", 0):
        return _export_lora(state, sd, role, config_dir, out)
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
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


def _export_lora(state: dict, trained: dict, role: str, config_dir: Path, out: Path) -> Path:
    """Base from the run's model.path + the checkpoint's adapter -> merged HF model + adapter/."""
    import transformers

    from rlengine import tiny
    from rlengine.config import LoraConfig, ModelConfig

    m = dict(state["config"]["model"])
    m["lora"] = LoraConfig(**m["lora"])
    mcfg = ModelConfig(**m)
    path = tiny.resolve_path(mcfg.path)
    auto = transformers.AutoModelForTokenClassification if role == "critic" else (
        transformers.AutoModelForSequenceClassification if state["config"]["algorithm"]["name"] == "rm"
        else transformers.AutoModelForCausalLM)
    extra = {"num_labels": 1} if auto is not transformers.AutoModelForCausalLM else {}
    base = auto.from_pretrained(path, dtype=DTYPES[mcfg.dtype], **extra, **lora.load_kwargs(mcfg, "cpu"))
    task = {transformers.AutoModelForCausalLM: "CAUSAL_LM", transformers.AutoModelForTokenClassification: "TOKEN_CLS",
            transformers.AutoModelForSequenceClassification: "SEQ_CLS"}[auto]
    model = lora.wrap(base, mcfg, task)  # as the trainer built it
    own = dict(model.named_parameters())
    unknown = [k for k in trained if k not in own]
    if unknown:
        raise SystemExit(f"error: the checkpoint's adapter does not fit {path}: unexpected {unknown[:5]}")
    with torch.no_grad():
        for k, v in trained.items():
            own[k].copy_(v.to(own[k].dtype))
    dtype = DTYPES[mcfg.dtype]
    merged = {n: t.detach().to("cpu", copy=True).contiguous() for g in lora.merged_tensors(model, dtype) for n, t in g}
    adapter = {lora.saved_name(n): own[n].detach().clone() for n in lora.adapter_names(model)}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lora.write_merged(str(tmp), merged, model)
    lora.write_adapter(str(tmp / "adapter"), adapter, lora.adapter_config(model))
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
