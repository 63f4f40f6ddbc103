"""LoRA/QLoRA keys through the recipe schema: what the plan derives and what fails before Ray."""
import pytest

from rlengine import lora
from rlengine.compose import load_config
from rlengine.errors import ConfigError


def test_lora_plan_has_no_reference_role_and_adapter_sync():
    cfg, plan = load_config("grpo_tiny_lora", [])
    assert plan.lora and plan.lora_sync == "adapter"
    assert plan.use_reference and plan.reference_in_trainer  # the base with the adapter disabled
    _, full = load_config("grpo_tiny", [])
    assert not full.lora and full.lora_sync is None and not full.reference_in_trainer


def test_dora_and_unservable_targets_fall_back_to_merged():
    assert load_config("grpo_tiny_lora", ["model.lora.use_dora=true"])[1].lora_sync == "merged"
    assert load_config("grpo_tiny_lora", ["model.lora.target_modules=[embed_tokens,q_proj]"])[1].lora_sync == "merged"
    assert load_config("grpo_tiny_lora", ["rollout.lora_sync=merged"])[1].lora_sync == "merged"


@pytest.mark.parametrize("overrides, key, words", [
    (["recipe=grpo_tiny", "model.quantization=nf4"], "model.quantization", "model.lora.r > 0"),
    (["model.quantization=nf5"], "model.quantization", "not one of"),
    (["rollout.lora_sync=delta"], "rollout.lora_sync", "not one of"),
    (["trainer.optimizer=paged_adamw_8bit"], "trainer.optimizer", "need resources.device=cuda"),
    (["trainer.optimizer=sgd"], "trainer.optimizer", "not one of"),
    (["model.lora.r=-1"], "model.lora.r", ">= 0"),
    (["model.quantization=nf4", "trainer.world_size=2", "trainer.zero_stage=3", "data.prompts_per_step=8"],
     "trainer.zero_stage", "ZeRO-3 cannot partition"),
])
def test_bad_lora_keys_name_the_key(overrides, key, words):
    recipe = overrides[0].split("=", 1)[1] if overrides[0].startswith("recipe=") else "grpo_tiny_lora"
    with pytest.raises(ConfigError) as e:
        load_config(recipe, [o for o in overrides if not o.startswith("recipe=")])
    assert e.value.key == key and words in str(e.value)


def test_quantization_without_bitsandbytes_is_a_startup_error(monkeypatch):
    monkeypatch.setattr(lora, "has_bitsandbytes", lambda: False)
    with pytest.raises(ConfigError) as e:
        load_config("sft_tiny_qlora", [])
    assert e.value.key == "model.quantization" and "pip install bitsandbytes" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("grpo_tiny_lora", ["trainer.optimizer=adamw_8bit"])
    assert e.value.key == "trainer.optimizer"


@pytest.mark.parametrize("recipe", ["grpo_tiny_lora", "sft_tiny_qlora", "grpo_qwen_math_lora"])
def test_lora_recipes_compose(recipe):
    cfg, plan = load_config(recipe, [])
    assert plan.lora and cfg.model.lora.r > 0
