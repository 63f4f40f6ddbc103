"""rlengine.lora: merged weights, the base view, adapter naming and the config-time checks."""
import dataclasses
import json

import pytest
import torch

from rlengine import lora, tiny
from rlengine.config import LoraConfig, ModelConfig
from rlengine.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model_cfg(**lo) -> ModelConfig:
    return ModelConfig(path="tiny:base", lora=LoraConfig(**{"r": 8, "alpha": 16.0, **lo}))


def _adapted(mcfg: ModelConfig, seed: int = 0):
    """tiny:base with adapters whose B is random (so ΔW != 0)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny.resolve_path("tiny:base"), dtype=torch.float32,
                                                **lora.load_kwargs(mcfg, "cpu"))
    model = lora.wrap(base, mcfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


def _state(groups) -> dict:
    return {n: t.detach().clone() for g in groups for n, t in g}


IDS = torch.tensor([[5, 9, 17, 33, 2, 41, 8, 12]])


@pytest.mark.parametrize("extra", [{}, {"use_rslora": True}, {"use_dora": True}])
def test_merged_equals_peft_merge_and_unload(extra):
    model = _adapted(_model_cfg(**extra))
    merged = _state(lora.merged_tensors(model, torch.float32))
    with torch.no_grad():
        logits_adapted = model(input_ids=IDS).logits
    reference = model.merge_and_unload()
    ref_sd = {n: p for n, p in reference.named_parameters()}
    assert set(merged) == set(ref_sd)
    for n, t in merged.items():
        torch.testing.assert_close(t, ref_sd[n], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(reference(input_ids=IDS).logits, logits_adapted, rtol=1e-4, atol=1e-5)


def test_layout_matches_tensors_and_base_view():
    model = _adapted(_model_cfg())
    layout = lora.merged_layout(model, torch.float32, with_adapter=False)
    groups = list(lora.merged_tensors(model, torch.float32, with_adapter=False))
    assert [[(n, tuple(t.shape), t.dtype) for n, t in g] for g in groups] == layout
    base = _state(groups)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny.resolve_path("tiny:base"), dtype=torch.float32)
    assert set(base) == {n for n, _ in plain.named_parameters()}
    for n, p in plain.named_parameters():
        assert torch.equal(base[n], p), n


def test_disabled_adapter_is_the_base_model():
    from transformers import AutoModelForCausalLM

    model = _adapted(_model_cfg())
    plain = AutoModelForCausalLM.from_pretrained(tiny.resolve_path("tiny:base"), dtype=torch.float32)
    with torch.no_grad():
        with model.disable_adapter():
            off = model(input_ids=IDS).logits
        on = model(input_ids=IDS).logits
        want = plain(input_ids=IDS).logits
    assert torch.equal(off, want)
    assert (on - want).abs().max() > 1e-3  # the adapter is live when enabled


def test_adapter_names_are_peft_save_names(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = _adapted(_model_cfg(target_modules=["q_proj", "v_proj"]))
    params = dict(model.named_parameters())
    tensors = {lora.saved_name(n): params[n] for n in lora.adapter_names(model)}
    assert len(tensors) == 4 * 2 * 2  # 4 layers x (q, v) x (A, B)
    out = lora.write_adapter(str(tmp_path / "a"), tensors, lora.adapter_config(model))
    json.load(open(tmp_path / "a" / "adapter_config.json"))
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny.resolve_path("tiny:base"), dtype=torch.float32), out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)


@pytest.mark.skipif(not lora.has_bitsandbytes(), reason="bitsandbytes not installed")
@pytest.mark.parametrize("quant", ["nf4", "fp4"])
def test_quantized_merge_is_what_the_trainer_computes(quant):
    """Dequantized W0 + ΔW gives the trainer's forward, with and without gradients (one numerics
    path: bitsandbytes' bf16 CPU inference repacking is off)."""
    from transformers import AutoModelForCausalLM

    model = _adapted(dataclasses.replace(_model_cfg(), quantization=quant))
    with torch.no_grad():
        nograd = model(input_ids=IDS).logits
    model.train()
    withgrad = model(input_ids=IDS).logits.detach()
    torch.testing.assert_close(withgrad, nograd, rtol=1e-4, atol=1e-4)
    merged = _state(lora.merged_tensors(model, torch.float32))
    plain = AutoModelForCausalLM.from_pretrained(tiny.resolve_path("tiny:base"), dtype=torch.float32)
    plain.load_state_dict(merged, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=IDS).logits, nograd, rtol=1e-4, atol=1e-4)
    full_base = AutoModelForCausalLM.from_pretrained(tiny.resolve_path("tiny:base"), dtype=torch.float32)
    base = _state(lora.merged_tensors(model, torch.float32, with_adapter=False))
    w = "model.layers.0.self_attn.q_proj.weight"
    assert 0 < (base[w] - dict(full_base.named_parameters())[w]).abs().max() < 0.5  # 4-bit, not the original


def test_vllm_serves_and_ranks():
    assert lora.vllm_serves(_model_cfg())[0]
    assert lora.vllm_serves(_model_cfg(target_modules=["q_proj", "down_proj"]))[0]
    ok, why = lora.vllm_serves(_model_cfg(use_dora=True))
    assert not ok and "DoRA" in why
    assert not lora.vllm_serves(_model_cfg(target_modules=["embed_tokens"]))[0]
    assert [lora.vllm_max_rank(r) for r in (1, 2, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]


def test_check_modules_names_the_key():
    with pytest.raises(ConfigError, match="model.lora.target_modules.*'qq_proj' matches no module.*q_proj"):
        lora.check_modules("model.path", tiny.resolve_path("tiny:base"), _model_cfg(target_modules=["qq_proj"]))
    with pytest.raises(ConfigError, match="model.lora.r.*rank 200 exceeds layer"):
        lora.check_modules("model.path", tiny.resolve_path("tiny:base"), _model_cfg(r=200))
    lora.check_modules("model.path", tiny.resolve_path("tiny:base"), _model_cfg(target_modules="q_proj"))
    lora.check_modules("model.path", "Qwen/not-cached-anywhere", _model_cfg())  # no config offline: skipped


@pytest.mark.parametrize("auto, task", [("AutoModelForSequenceClassification", "SEQ_CLS"),
                                        ("AutoModelForTokenClassification", "TOKEN_CLS")])
def test_score_heads_train_in_full_and_are_never_adapted(auto, task):
    import transformers

    model = getattr(transformers, auto).from_pretrained(tiny.resolve_path("tiny:base"), num_labels=1)
    wrapped = lora.wrap(model, _model_cfg(), task)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any("score.modules_to_save" in n for n in trainable)
    assert not any("score" in n and "lora_" in n for n in trainable)
    merged = _state(lora.merged_tensors(wrapped, torch.float32))
    assert "score.weight" in merged and "model.layers.0.mlp.up_proj.weight" in merged
