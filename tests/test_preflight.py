import json

import pytest

from rlengine import preflight
from rlengine.errors import ConfigError
from rlengine.main import load_config

HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"


def check(*overrides, recipe="grpo_tiny"):
    cfg, _ = load_config(recipe, list(overrides))
    preflight.check(cfg)


def fails(*overrides, recipe="grpo_tiny") -> ConfigError:
    with pytest.raises(ConfigError) as e:
        check(*overrides, recipe=recipe)
    return e.value


def checkpoint(d, *files):
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        (d / f).write_text(json.dumps({}))
    return d


@pytest.fixture(autouse=True)
def online(monkeypatch):
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)


def test_recipe_defaults_pass():
    check()
    check(recipe="ppo_tiny")


def test_missing_model_dir_names_the_key():
    e = fails("model.path=/no/model")
    assert e.key == "model.path" and "/no/model" in str(e) and str(e).startswith("config key 'model.path'")


def test_dir_without_config_json(tmp_path):
    e = fails(f"model.path={tmp_path}")
    assert e.key == "model.path" and "config.json" in str(e)


def test_checkpoint_dir_passes(tmp_path):
    check(f"model.path={checkpoint(tmp_path / 'm', 'config.json', 'tokenizer_config.json')}")


def test_checkpoint_without_tokenizer_needs_tokenizer_path(tmp_path):
    model = checkpoint(tmp_path / "m", "config.json")
    e = fails(f"model.path={model}")
    assert e.key == "model.tokenizer_path" and "tokenizer" in str(e)
    check(f"model.path={model}", f"model.tokenizer_path={checkpoint(tmp_path / 't', 'tokenizer.json')}")
    assert fails(f"model.path={model}", f"model.tokenizer_path={model}").key == "model.tokenizer_path"


def test_hub_id_passes_online():
    check(f"model.path={HUB_ID}")


@pytest.mark.parametrize("path", ["a b", "org/name/extra", "./nope", "-bad-"])
def test_not_a_dir_nor_a_hub_id(path):
    assert fails(f"model.path='{path}'").key == "model.path"


def test_offline_hub_id_must_be_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = fails(f"model.path={HUB_ID}")
    assert e.key == "model.path" and "not in the local HF cache" in str(e) and "offline" in str(e)
    repo = tmp_path / ("models--" + HUB_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    checkpoint(repo / "snapshots" / ("0" * 40), "config.json")
    check(f"model.path={HUB_ID}")


def test_bad_reward_model_path(tmp_path):
    e = fails("reward_model.path=/no/rm", recipe="ppo_tiny")
    assert e.key == "reward_model.path" and "/no/rm" in str(e)
    e = fails(f"reward_model.tokenizer_path={tmp_path}", recipe="ppo_tiny")
    assert e.key == "reward_model.tokenizer_path" and "tokenizer" in str(e)


def test_bad_critic_path():
    assert fails("critic.model_path=/no/critic", recipe="ppo_tiny").key == "critic.model_path"


def test_unknown_tiny_names():
    assert fails("model.path=tiny:train").key == "model.path"
    assert fails("data.test_path=tiny:sft").key == "data.test_path"


def test_missing_data_files(tmp_path):
    e = fails(f"data.train_path={tmp_path / 'train.jsonl'}")
    assert e.key == "data.train_path" and "train.jsonl" in str(e)
    assert fails(f"data.test_path={tmp_path / 'test.parquet'}").key == "data.test_path"
    (tmp_path / "train.jsonl").write_text("{}\n")
    check(f"data.train_path={tmp_path / 'train.jsonl'}", "data.test_path=openai/gsm8k")
