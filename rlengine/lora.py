"""Low-rank adapters (PEFT) and the quantized frozen base (bitsandbytes): building the trained
model, the tensors a weight sync or an export sends, and the checks a config gets before Ray.

Three views of one adapted model, by the names a consumer expects:
- `adapter_tensors`: the adapter alone, named as PEFT saves it (adapter_model.safetensors); what
  vLLM's LoRA path loads.
- `merged_tensors(with_adapter=False)`: the frozen base as Hugging Face names it, a quantized
  base dequantized, so that an engine samples from the weights the trainer computes with.
- `merged_tensors()`: W0 + ΔW per adapted layer (DoRA's magnitude included): a plain HF model.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import types
from contextlib import nullcontext
from typing import Callable, Iterator

import torch

from rlengine.config import ModelConfig, RootConfig
from rlengine.errors import ConfigError

# bitsandbytes (imported by peft) warns at import that an optional kernel for its bf16 CPU
# inference layout is missing; one_numerics_path never uses that layout.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

ADAPTER = "default"
# vLLM's allowed max_lora_rank values (vllm.config.lora.MaxLoRARanks).
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Layers vLLM's LoRA path serves in the decoder families rlengine runs (Qwen2/Llama layouts).
VLLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTIZATIONS = ("nf4", "fp4", "int8")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")


def enabled(m: ModelConfig) -> bool:
    return m.lora.r > 0


def vllm_max_rank(r: int) -> int:
    return next(v for v in VLLM_RANKS if v >= r)


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(m: ModelConfig):
    from transformers import BitsAndBytesConfig

    from rlengine.modeling import DTYPES

    if m.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=m.quantization,
                              bnb_4bit_use_double_quant=m.double_quant,
                              bnb_4bit_compute_dtype=DTYPES[m.compute_dtype or m.dtype])


def peft_config(m: ModelConfig, task_type: str):
    """PEFT's LoraConfig for `m.lora`.  SEQ_CLS / TOKEN_CLS task types make PEFT train the new
    `score` head in full (modules_to_save)."""
    from peft import LoraConfig

    lo = m.lora
    targets = lo.target_modules if isinstance(lo.target_modules, str) else list(lo.target_modules)
    # A classification head is trained in full, never adapted (all-linear would match it).
    heads = ["score", "classifier"] if task_type != "CAUSAL_LM" else None
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=targets,
                      exclude_modules=heads, use_rslora=lo.use_rslora, use_dora=lo.use_dora,
                      init_lora_weights=True if lo.init == "default" else lo.init, task_type=task_type)


def one_numerics_path(model) -> None:
    """bitsandbytes on an AVX512-BF16 CPU repacks a 4-bit layer's weights for a bf16 inference
    kernel the first time it runs in eval mode without gradients; from then on no-grad passes
    (old and reference log-probs) differ from training passes by ~0.1 in the logits and the
    training forward fails on the repacked layout.  Every pass uses the dequantize path instead."""
    for mod in model.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
        if type(mod).__name__ == "Linear8bitLt":
            # Its eval-mode path quantizes the activations too (int8 x int8, via fp16) and drops
            # the weight's scales that a later backward needs; the training path dequantizes the
            # weight and multiplies in the compute dtype, as the rollout engine does.
            mod.train = types.MethodType(_always_training, mod)
            mod.training = True


def own_storage(model) -> None:
    """The tensors bitsandbytes left unquantized (embeddings, norms, biases) are views of the
    checkpoint's memory map: they keep every page of it resident (1.6 GB at 0.43B parameters,
    bench/results/lora_memory.md) long after the quantized layers were built.  Copies free it."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype.is_floating_point and type(t).__name__ not in ("Params4bit", "Int8Params"):
            t.data = t.data.clone()


def _always_training(self, mode: bool = True):
    return torch.nn.Module.train(self, True)


def wrap(model, m: ModelConfig, task_type: str = "CAUSAL_LM"):
    """`model` with trainable adapters (PEFT) and everything else frozen."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if m.quantization:
        one_numerics_path(model)
        own_storage(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=m.gradient_checkpointing)
    return get_peft_model(model, peft_config(m, task_type))


def load_kwargs(m: ModelConfig, device: str) -> dict:
    """Extra from_pretrained arguments for a quantized base."""
    if not m.quantization:
        return {}
    return {"quantization_config": quantization_config(m), "device_map": {"": device}}


def _dequantized(layer) -> torch.Tensor:
    from peft.utils.integrations import dequantize_module_weight

    w = layer.weight
    if w.dtype in (torch.uint8, torch.int8) or hasattr(w, "quant_state") or hasattr(layer, "state"):
        return dequantize_module_weight(layer)
    return w


def _merged_weight(layer, base_weight: torch.Tensor) -> torch.Tensor:
    """W0 + ΔW of one adapted linear layer (DoRA: m · (W0 + ΔW) / ||W0 + ΔW|| row-wise)."""
    delta = layer.get_delta_weight(ADAPTER).to(base_weight.dtype)
    if not getattr(layer, "use_dora", {}).get(ADAPTER, False):
        return base_weight + delta
    mag = layer.lora_magnitude_vector[ADAPTER]
    norm = mag.get_weight_norm(base_weight, delta, scaling=1).detach()
    return (mag.weight / norm).view(-1, 1) * (base_weight + delta)


def inner_model(model):
    """The Hugging Face model inside a PeftModel (its names are the HF checkpoint's)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


Gather = Callable[[list], object]


def _units(model, with_adapter: bool) -> list[tuple[str, object, list[tuple[str, torch.nn.Parameter]]]]:
    """The HF checkpoint's tensors grouped by module: (kind, module, [(name, param)]), kind
    "lora" for an adapted layer (its weight is computed), "plain" otherwise."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    out = []
    seen: set[int] = set()
    skip: tuple[str, ...] = ()
    for prefix, mod in inner_model(model).named_modules():
        if skip and prefix.startswith(skip):
            continue
        dot = prefix + "." if prefix else ""
        if isinstance(mod, LoraLayer):
            skip += (dot,)
            base = mod.get_base_layer()
            named = [(dot + "weight", base.weight)] + ([(dot + "bias", base.bias)] if base.bias is not None else [])
            out.append(("lora", mod, named))
            continue
        if isinstance(mod, ModulesToSaveWrapper):
            skip += (dot,)
            src = mod.modules_to_save[ADAPTER] if with_adapter else mod.original_module
            named = [(dot + n, p) for n, p in src.named_parameters() if id(p) not in seen]
        else:
            named = [(dot + n, p) for n, p in mod.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in named)
        if named:
            out.append(("plain", mod, named))
    return out


def merged_layout(model, dtype: torch.dtype, with_adapter: bool = True) -> list[list[tuple[str, tuple, torch.dtype]]]:
    """(name, full shape, dtype) of what merged_tensors yields, group by group, without reading
    any weight (no gather: trainer rank 0 alone can call it).  Floating tensors are in `dtype`."""
    groups = []
    for kind, mod, named in _units(model, with_adapter):
        rows = []
        for n, p in named:
            if kind == "lora" and n.endswith(".weight"):
                base = mod.get_base_layer()
                rows.append((n, (base.out_features, base.in_features), dtype))
            else:
                kept = dtype if p.dtype.is_floating_point else p.dtype
                rows.append((n, tuple(getattr(p, "ds_shape", p.shape)), kept))
        groups.append(rows)
    return groups


def merged_tensors(model, dtype: torch.dtype, with_adapter: bool = True, gathered: Gather = lambda ps: nullcontext()
                   ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The model as a plain HF checkpoint, one module's tensors at a time, adapted layers as
    W0 + ΔW (with_adapter) or the dequantized W0.  Valid inside the iteration only: under ZeRO-3
    `gathered` materialises each module's partitions for the step."""
    for kind, mod, named in _units(model, with_adapter):
        with gathered(list(mod.parameters()) if kind == "lora" else [p for _, p in named]):
            if kind == "plain":  # QLoRA keeps norms and embeddings in fp32 whatever model.dtype is
                yield [(n, p.to(dtype) if p.dtype.is_floating_point else p) for n, p in named]
                continue
            w0 = _dequantized(mod.get_base_layer()).to(dtype)
            w = _merged_weight(mod, w0) if with_adapter else w0
            yield [(named[0][0], w)] + [(n, p.to(dtype)) for n, p in named[1:]]


def adapter_names(model) -> list[str]:
    """Trainable adapter parameters as named in the PeftModel, in parameter order."""
    return [n for n, p in model.named_parameters() if p.requires_grad and ("lora_" in n)]


def saved_name(peft_name: str) -> str:
    """PeftModel parameter name -> the key PEFT writes to adapter_model.safetensors."""
    return peft_name.replace(f".{ADAPTER}.", ".")


def adapter_config(model) -> dict:
    cfg = model.peft_config[ADAPTER].to_dict()
    return json.loads(json.dumps(cfg, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def write_adapter(path: str, tensors: dict[str, torch.Tensor], config: dict) -> str:
    """An adapter directory PeftModel.from_pretrained and vLLM's LoRARequest load."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
              os.path.join(path, "adapter_model.safetensors"))
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path


def hf_config(model):
    """The HF config of the trained model as a plain checkpoint's: a quantized base's
    quantization_config dropped (merged exports and checkpoints hold dequantized weights)."""
    import copy

    config = copy.deepcopy(inner_model(model).config)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    return config


def write_merged(path: str, state: dict[str, torch.Tensor], model) -> str:
    """A plain HF checkpoint (AutoModelForCausalLM loads it) from merged_tensors' state."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    hf = inner_model(model)
    hf_config(model).save_pretrained(path)
    if getattr(hf, "generation_config", None) is not None:
        hf.generation_config.save_pretrained(path)
    return path


def vllm_serves(m: ModelConfig) -> tuple[bool, str]:
    """(True, "") when vLLM's LoRA path can serve this adapter, else (False, why)."""
    lo = m.lora
    if lo.use_dora:
        return False, "vLLM does not serve DoRA adapters"
    if isinstance(lo.target_modules, str) and lo.target_modules != "all-linear":
        targets = [lo.target_modules]
    elif isinstance(lo.target_modules, str):
        targets = []
    else:
        targets = list(lo.target_modules)
    odd = [t for t in targets if t.split(".")[-1] not in VLLM_LORA_MODULES]
    if odd:
        return False, f"vLLM's LoRA path serves {list(VLLM_LORA_MODULES)}, not {odd}"
    return True, ""


def sync_mode(cfg: RootConfig) -> str | None:
    """What the engines get after each update: None (no LoRA: the full weights), "adapter" or
    "merged" (rollout.lora_sync, or merged where vLLM cannot serve the adapter)."""
    if not enabled(cfg.model):
        return None
    return cfg.rollout.lora_sync if vllm_serves(cfg.model)[0] else "merged"


def check_config(cfg: RootConfig) -> None:
    """The rules a type system cannot express (run by plan.validate)."""
    m, t = cfg.model, cfg.trainer
    lo = m.lora
    if lo.r < 0:
        raise ConfigError("model.lora.r", f"must be >= 0 (0: train every weight), got {lo.r}")
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError("trainer.optimizer", f"{t.optimizer!r} is not one of {list(OPTIMIZERS)}")
    if t.optimizer != "adamw" and not has_bitsandbytes():
        raise ConfigError("trainer.optimizer", f"{t.optimizer} is bitsandbytes', which is not installed "
                                               "(pip install bitsandbytes)")
    if t.optimizer == "paged_adamw_8bit" and cfg.resources.device != "cuda":
        raise ConfigError("trainer.optimizer", "paged optimizers page GPU memory: they need resources.device=cuda "
                                               "(adamw_8bit runs on CPU)")
    if cfg.rollout.lora_sync not in ("adapter", "merged"):
        raise ConfigError("rollout.lora_sync", f"{cfg.rollout.lora_sync!r} is not one of ['adapter', 'merged']")
    if m.quantization is None:
        return
    if m.quantization not in QUANTIZATIONS:
        raise ConfigError("model.quantization", f"{m.quantization!r} is not one of {list(QUANTIZATIONS)}")
    if not enabled(m):
        raise ConfigError("model.quantization", "a quantized base is frozen: it trains adapters only, so it "
                                                "needs model.lora.r > 0 (QLoRA)")
    if not has_bitsandbytes():
        raise ConfigError("model.quantization", f"{m.quantization} needs bitsandbytes, which is not installed "
                                                "(pip install bitsandbytes)")
    if m.compute_dtype is not None and m.compute_dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError("model.compute_dtype", f"{m.compute_dtype!r} is not one of float32, bfloat16, float16")
    if t.zero_stage == 3 and t.world_size > 1:
        raise ConfigError("trainer.zero_stage", "ZeRO-3 cannot partition a bitsandbytes-quantized base: use "
                                                "trainer.zero_stage=2 with model.quantization")


def _skeleton(path: str):
    """The model's modules on the meta device, from config.json alone (None: no config here)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_modules(key_path: str, path: str, m: ModelConfig) -> None:
    """target_modules must each match a module of the model at `path` and r must fit every
    adapted layer (run by preflight, before Ray; skipped when the config cannot be read offline)."""
    if not enabled(m):
        return
    model = _skeleton(path)
    if model is None:
        return
    linear = {n: mod for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    head = model.get_output_embeddings()
    lo = m.lora
    if isinstance(lo.target_modules, str) and lo.target_modules == "all-linear":
        chosen = {n: mod for n, mod in linear.items() if mod is not head}
    else:
        targets = [lo.target_modules] if isinstance(lo.target_modules, str) else list(lo.target_modules)
        names = sorted({n.split(".")[-1] for n in linear})
        chosen = {}
        for t in targets:
            hit = {n: mod for n, mod in dict(model.named_modules()).items() if n == t or n.endswith("." + t)}
            if not hit:
                raise ConfigError("model.lora.target_modules", f"{t!r} matches no module of {key_path}={path}; "
                                                               f"its linear layers are {names}")
            chosen.update(hit)
    for n, mod in chosen.items():
        if isinstance(mod, torch.nn.Linear) and lo.r > min(mod.in_features, mod.out_features):
            raise ConfigError("model.lora.r", f"rank {lo.r} exceeds layer {n} ({mod.in_features} -> "
                                              f"{mod.out_features}): a rank above min(in, out) adds no capacity")
