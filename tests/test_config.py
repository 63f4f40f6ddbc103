"""Config schema, recipe composition, validation rules and the command-line entry point.

Nothing here starts Ray, vLLM or DeepSpeed: load_config only composes + validates, and the
placement helpers used are pure functions over the config.
"""
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlengine.config import RootConfig
from rlengine.errors import ConfigError
from rlengine.plan import Plan, validate
from rlengine.main import load_config, main, parse_argv
from rlengine.pipeline_spec import is_pipeline

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
# Pipeline recipes chain these stage recipes; tests/test_pipeline.py composes them.
RECIPE_NAMES = sorted(p.stem for p in RECIPES.glob("*.yaml") if not is_pipeline(p))


@pytest.fixture(autouse=True)
def _project_recipes(monkeypatch):
    # Independent of the cwd pytest was started from.
    monkeypatch.setenv("RLENGINE_RECIPES", str(RECIPES))


def _err(recipe, overrides) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_config(recipe, overrides)
    return ei.value


def _line_of(path: Path, text: str) -> int:
    """1-based line number of the first line equal to `text`."""
    lines = path.read_text().splitlines()
    return lines.index(text) + 1


# ---------------------------------------------------------------- recipes compose

def test_project_has_the_three_recipes():
    assert {"grpo_tiny", "sft_tiny", "grpo_qwen_math"} <= set(RECIPE_NAMES)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_recipe_composes_and_validates(name):
    cfg, plan = load_config(name, [])
    assert isinstance(cfg, RootConfig)
    assert isinstance(plan, Plan)
    assert cfg.recipe == name
    # validate is a pure function of the config: running it again gives the same plan.
    assert validate(cfg) == plan


def test_grpo_tiny_plan_by_hand():
    cfg, plan = load_config("grpo_tiny", [])
    # 32 prompts x 8 samples, 1 minibatch, 1 rank, micro_batch_size 256
    assert plan == Plan(samples_per_step=256, minibatch_size=256, micro_batches_per_minibatch=1,
                        micro_batch_size=256, use_rollout=True, use_reference=True, use_critic=False,
                        use_reward_model=False, advantage="grpo",
                        eval_max_new_tokens=8, dtype="float32", old_logp_in_update=True, zero_stage=2)
    assert cfg.model.path == "tiny:sft"
    assert cfg.resources.device == "cpu"


def test_sft_tiny_plan_by_hand():
    cfg, plan = load_config("sft_tiny", [])
    # sft: one sample per prompt; kl_coef defaults to 0 -> no reference
    assert plan == Plan(samples_per_step=64, minibatch_size=64, micro_batches_per_minibatch=1,
                        micro_batch_size=64, use_rollout=True, use_reference=False, use_critic=False,
                        use_reward_model=False, advantage=None,
                        eval_max_new_tokens=8, dtype="float32", zero_stage=2)
    assert cfg.model.path == "tiny:base"


@pytest.mark.parametrize("overrides, stage", [
    ([], 2),  # one rank: nothing to partition, so stage 3 runs as stage 2
    (["trainer.world_size=2", "data.prompts_per_step=4"], 3),
    (["trainer.zero_stage=0"], 0),
    (["trainer.zero_stage=1"], 1),
    (["trainer.world_size=2", "data.prompts_per_step=4", "trainer.zero_stage=2"], 2),
])
def test_effective_zero_stage(overrides, stage):
    assert load_config("grpo_tiny", overrides)[1].zero_stage == stage


@pytest.mark.parametrize("overrides, expected", [
    ([], True),  # one update on fresh samples: the update's forward pass gives the old log-probs
    (["algorithm.ppo_epochs=2"], False),
    (["algorithm.minibatches=2"], False),
    (["algorithm.reuse_rollout_logprobs=true"], False),
    (["algorithm.kl_in_reward=true"], False),  # the reward needs old log-probs before the update
    (["algorithm.kl_in_reward=true", "algorithm.kl_coef=0"], True),
])
def test_old_logp_pass_is_skipped_only_for_a_single_on_policy_update(overrides, expected):
    assert load_config("grpo_tiny", overrides)[1].old_logp_in_update is expected


def test_overrides_are_applied_and_typed():
    cfg, plan = load_config("grpo_tiny", ["trainer.lr=3e-4", "algorithm.group_size=4",
                                          "trainer.micro_batch_size=32", "eval.max_new_tokens=5"])
    assert cfg.trainer.lr == 3e-4 and isinstance(cfg.trainer.lr, float)
    assert cfg.algorithm.group_size == 4
    # 32 prompts x 4 = 128 samples; 128 per rank / 32 = 4 micro batches
    assert (plan.samples_per_step, plan.minibatch_size, plan.micro_batch_size,
            plan.micro_batches_per_minibatch, plan.eval_max_new_tokens) == (128, 128, 32, 4, 5)


def test_reward_fns_are_dataclasses_after_composition():
    from rlengine.config import RewardFnConfig

    cfg, _ = load_config("grpo_tiny", [])
    # Frozen: lists become tuples after validation.
    assert cfg.reward.fns == (RewardFnConfig(fn="reward_fns/math.py:compute_score", weight=1.0, kwargs={}),)


def test_reward_fn_list_element_can_be_overridden():
    # DESIGN: "Any key is overridable on the command line", list elements included.
    cfg, _ = load_config("grpo_tiny", ["reward.fns.0.weight=2.0"])
    assert cfg.reward.fns[0].weight == 2.0


def test_config_is_frozen():
    cfg, plan = load_config("grpo_tiny", [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.trainer.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.algorithm = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.samples_per_step = 1
    assert cfg.trainer.lr == 3.0e-4 and cfg.seed == 1


# ---------------------------------------------------------------- bad keys and types

def test_unknown_override_key_names_the_key():
    e = _err("grpo_tiny", ["algorithm.group_sise=4"])
    assert e.key == "algorithm.group_sise"
    assert e.where == "command-line override"
    assert "algorithm.group_sise" in str(e)
    assert "command-line override" in str(e)


def test_unknown_top_level_override_key():
    e = _err("grpo_tiny", ["sed=1"])
    assert e.key == "sed"
    assert "command-line override" in str(e)


def test_wrong_type_override():
    e = _err("grpo_tiny", ["trainer.lr=abc"])
    assert e.key == "trainer.lr"
    assert e.where == "command-line override"
    assert "abc" in str(e)


def test_wrong_type_int_override():
    e = _err("grpo_tiny", ["algorithm.group_size=abc"])
    assert e.key == "algorithm.group_size"
    assert "command-line override" in str(e)


def test_unknown_recipe_lists_available():
    e = _err("no_such_recipe", [])
    assert e.key == "recipe"
    assert "no_such_recipe" in str(e)
    for name in RECIPE_NAMES:
        assert name in str(e)


# ---------------------------------------------------------------- impossible combinations

@pytest.mark.parametrize("overrides, key, fragment", [
    (["algorithm.group_size=1"], "algorithm.group_size", "group_size must be >= 2, got 1"),
    (["algorithm.name=rloo", "algorithm.group_size=1"], "algorithm.group_size", "got 1"),
    (["algorithm.name=dr_grpo", "algorithm.group_size=1"], "algorithm.group_size", "got 1"),
    # 32 * 8 = 256 samples; 256 % 3 != 0
    (["algorithm.minibatches=3"], "algorithm.minibatches", "256 samples per step do not split into 3"),
    (["algorithm.dual_clip=1.0"], "algorithm.dual_clip", "> 1"),
    (["algorithm.dual_clip=0.5"], "algorithm.dual_clip", "> 1"),
    # minibatch of 256 over 3 ranks
    (["trainer.world_size=3"], "trainer.world_size", "256 samples does not split over 3 ranks"),
    # 256 per rank is not a multiple of 100
    (["trainer.micro_batch_size=100"], "trainer.micro_batch_size", "256 samples per rank"),
    (["rollout.top_p=1.5"], "rollout.top_p", "(0, 1]"),
    (["rollout.top_p=0"], "rollout.top_p", "(0, 1]"),
    (["rollout.top_p=-0.1"], "rollout.top_p", "(0, 1]"),
    (["algorithm.name=a2c"], "algorithm.name", "'a2c'"),
    # a critic with an algorithm that has none (DESIGN: grpo with a critic is impossible)
    (["critic.model_path=/some/critic"], "critic.model_path", "does not use a critic"),
    (["algorithm.name=sft", "reward_model.path=tiny:rm"], "reward_model.path", "does not score"),
    (["algorithm.lam=1.5"], "algorithm.lam", "[0, 1]"),
    (["model.dtype=float16"], "model.dtype", "CPU"),
    (["resources.device=cuda"], "resources.gpus_per_trainer", "gpus_per_trainer > 0"),
    (["trainer.lr=0"], "trainer.lr", "> 0"),
    (["rollout.temperature=-1"], "rollout.temperature", ">= 0"),
    (["reward.fns=[]"], "reward.fns", "at least one"),
    (["reward.fns=[{fn: compute_score}]"], "reward.fns[0].fn", "neither"),
])
def test_impossible_combinations(overrides, key, fragment):
    e = _err("grpo_tiny", overrides)
    assert e.key == key
    assert fragment in str(e)
    # The message says where the value came from.
    if key == overrides[-1].split("=", 1)[0]:
        assert e.where == "command-line override"


def test_valid_edge_values_pass():
    # Boundaries that must be accepted: top_p == 1, dual_clip just above 1, group_size 1 for
    # reinforce_pp (not group-normalised), sft ignores group_size.
    load_config("grpo_tiny", ["rollout.top_p=1.0", "algorithm.dual_clip=1.01"])
    load_config("grpo_tiny", ["algorithm.name=reinforce_pp", "algorithm.group_size=1"])
    _, plan = load_config("sft_tiny", ["algorithm.group_size=1"])
    assert plan.samples_per_step == 64


def test_combination_error_points_at_recipe_line(tmp_path, monkeypatch):
    # The override changes prompts_per_step, but the rule that fails is on world_size, which
    # the recipe sets: the error names the key and its file:line.
    # grpo_qwen_math: 3 prompts * 8 = 24 samples, 4 minibatches -> 6, world_size 8 -> error.
    e = _err("grpo_qwen_math", ["data.prompts_per_step=3"])
    assert e.key == "trainer.world_size"
    assert "6 samples does not split over 8 ranks" in str(e)
    recipe = RECIPES / "grpo_qwen_math.yaml"
    assert e.where == f"{recipe}:{_line_of(recipe, '  world_size: 8')}"


# ---------------------------------------------------------------- errors inside a recipe file

def _broken_recipes(tmp_path, monkeypatch, old: str, new: str) -> Path:
    src = (RECIPES / "grpo_tiny.yaml").read_text()
    assert old in src.splitlines(), f"grpo_tiny.yaml no longer has the line {old!r}"
    d = tmp_path / "recipes"
    d.mkdir()
    f = d / "grpo_tiny.yaml"
    f.write_text("\n".join(new if ln == old else ln for ln in src.splitlines()) + "\n")
    monkeypatch.setenv("RLENGINE_RECIPES", str(d))
    return f


def test_bad_key_in_recipe_file_reports_file_line(tmp_path, monkeypatch):
    f = _broken_recipes(tmp_path, monkeypatch, "  group_size: 8", "  group_sise: 8")
    e = _err("grpo_tiny", [])
    assert e.key == "algorithm.group_sise"
    line = _line_of(f, "  group_sise: 8")
    assert e.where == f"{f.resolve()}:{line}"
    assert f"grpo_tiny.yaml:{line}" in str(e)


def test_bad_type_in_recipe_file_reports_file_line(tmp_path, monkeypatch):
    f = _broken_recipes(tmp_path, monkeypatch, "  lr: 3.0e-4", "  lr: abc")
    e = _err("grpo_tiny", [])
    assert e.key == "trainer.lr"
    assert e.where == f"{f.resolve()}:{_line_of(f, '  lr: abc')}"


def test_bad_combination_in_recipe_file_reports_file_line(tmp_path, monkeypatch):
    f = _broken_recipes(tmp_path, monkeypatch, "  group_size: 8", "  group_size: 1")
    e = _err("grpo_tiny", [])
    assert e.key == "algorithm.group_size"
    assert e.where == f"{f.resolve()}:{_line_of(f, '  group_size: 1')}"


def test_bad_key_inside_reward_fn_list_reports_file_line(tmp_path, monkeypatch):
    f = _broken_recipes(tmp_path, monkeypatch, "      weight: 1.0", "      wieght: 1.0")
    e = _err("grpo_tiny", [])
    assert e.key.startswith("reward.fns") and e.key.endswith("wieght")
    assert e.where == f"{f.resolve()}:{_line_of(f, '      wieght: 1.0')}"


def test_override_fixes_what_recipe_file_breaks(tmp_path, monkeypatch):
    _broken_recipes(tmp_path, monkeypatch, "  group_size: 8", "  group_size: 1")
    cfg, _ = load_config("grpo_tiny", ["algorithm.group_size=4"])
    assert cfg.algorithm.group_size == 4


# ---------------------------------------------------------------- the GPU recipe and placement

def test_grpo_qwen_math_recipe():
    cfg, plan = load_config("grpo_qwen_math", [])
    assert cfg.model.dtype == "bfloat16" and plan.dtype == "bfloat16"
    assert cfg.resources.device == "cuda"
    assert cfg.model.path.startswith("Qwen/")
    # 128 prompts x 8 = 1024 samples; 4 minibatches of 256; 8 ranks -> 32 per rank; micro 8 -> 4
    assert (plan.samples_per_step, plan.minibatch_size, plan.micro_batch_size,
            plan.micro_batches_per_minibatch) == (1024, 256, 8, 4)
    assert plan.use_reference is True and plan.reference_in_trainer
    # Hybrid: one trainer rank and one sleeping vLLM engine per GPU.
    assert cfg.resources.colocate and plan.sleep_level == 1 and not cfg.rollout.enforce_eager


def test_grpo_qwen_math_loads_the_main_config_of_gsm8k():
    cfg, _ = load_config("grpo_qwen_math", [])
    assert (cfg.data.train_path, cfg.data.test_path, cfg.data.config_name) == ("openai/gsm8k", "openai/gsm8k", "main")
    assert load_config("grpo_qwen_math", ["data.config_name=socratic"])[0].data.config_name == "socratic"
    assert load_config("grpo_tiny", [])[0].data.config_name is None


def test_grpo_qwen_math_placement_by_hand():
    from rlengine.placement import PlacementError, check_resources, required, role_specs

    raw = yaml.safe_load((RECIPES / "grpo_qwen_math.yaml").read_text())
    res, tr, ro, ref = raw["resources"], raw["trainer"], raw["rollout"], raw["reference"]
    # Hybrid: the engines share the trainer ranks' bundles, the reference lives in the ranks.
    assert res["colocate"] and ro["num_workers"] == tr["world_size"] and ref["placement"] == "trainer"
    gpus = tr["world_size"] * res["gpus_per_trainer"]
    cpus = tr["world_size"] * res["cpus_per_actor"]
    assert (gpus, cpus) == (8, 32)  # the recipe as written: 8 bundles of 1 GPU + 4 CPUs

    cfg, plan = load_config("grpo_qwen_math", [])
    specs = role_specs(cfg, plan)
    assert [(s.name, s.count, s.gpus) for s in specs] == [("trainer", 8, 1.0)]
    assert required(specs) == {"CPU": cpus, "GPU": gpus}

    with pytest.raises(PlacementError) as ei:
        check_resources(specs, {"CPU": 2})
    msg = str(ei.value)
    assert "CPU: need 32 (trainer 8x4), cluster has 2 (short 30)" in msg
    assert "GPU: need 8 (trainer 8x1), cluster has 0 (short 8)" in msg
    check_resources(specs, {"CPU": 32, "GPU": 8})  # exactly enough: no error

    # The separate layout of the same recipe: 8 + 8 GPUs, and a reference GPU.
    cfg, plan = load_config("grpo_qwen_math", ["resources.colocate=false", "reference.placement=separate"])
    assert [(s.name, s.count, s.gpus) for s in role_specs(cfg, plan)] == [
        ("trainer", 8, 1.0), ("rollout", 8, 1.0), ("reference", 1, 1.0)]
    assert plan.sleep_level == 0


def test_placement_tensor_parallel_and_no_reference():
    from rlengine.placement import required, role_specs

    cfg, plan = load_config("grpo_qwen_math", ["rollout.tensor_parallel_size=2", "algorithm.kl_coef=0",
                                               "resources.colocate=false", "trainer.world_size=4",
                                               "rollout.num_workers=4"])
    specs = role_specs(cfg, plan)
    assert [s.name for s in specs] == ["trainer", "rollout"]
    assert required(specs) == {"CPU": 32.0, "GPU": 4 * 1 + 4 * 1 * 2}


def test_tiny_placement_is_cpu_only_and_fits_two_cores():
    from rlengine.placement import check_resources, required, role_specs

    cfg, plan = load_config("grpo_tiny", [])
    specs = role_specs(cfg, plan)
    assert required(specs) == {"CPU": 0.75}  # 3 actors x 0.25, no GPU key at all
    check_resources(specs, {"CPU": 2})


# ---------------------------------------------------------------- command line

def test_parse_argv():
    assert parse_argv([]) == ("grpo_tiny", [], set())
    assert parse_argv(["recipe=sft_tiny", "trainer.lr=1", "--cfg", "seed=3"]) == \
        ("sft_tiny", ["trainer.lr=1", "seed=3"], {"--cfg"})


def test_main_cfg_prints_composed_config(capsys):
    assert main(["recipe=sft_tiny", "trainer.total_steps=7", "--cfg"]) == 0
    out = capsys.readouterr().out
    body, _, plan_line = out.rpartition("# plan:")
    dumped = yaml.safe_load(body)
    assert dumped["recipe"] == "sft_tiny"
    assert dumped["trainer"]["total_steps"] == 7
    assert dumped["algorithm"]["name"] == "sft"
    assert "samples_per_step=64" in plan_line


def test_main_bad_key_returns_2(capsys):
    assert main(["algorithm.group_sise=4", "--cfg"]) == 2
    err = capsys.readouterr().err
    assert "algorithm.group_sise" in err and "command-line override" in err


def test_main_help_lists_recipes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in RECIPE_NAMES:
        assert name in out


def test_main_short_help(capsys):
    # main() checks for "-h", but parse_argv must route it to the flags for that to work.
    assert main(["-h"]) == 0
    assert "usage" in capsys.readouterr().out


def test_main_unknown_flag_is_an_error_not_a_run(monkeypatch, capsys):
    # A misspelt --cfg must not fall through to starting a job.
    import rlengine.job

    calls = []
    monkeypatch.setattr(rlengine.job, "run", lambda cfg, plan: calls.append(cfg))
    rc = main(["--cgf"])
    assert calls == []
    assert rc == 2
    assert "--cgf" in capsys.readouterr().err


def test_cli_subprocess_bad_key_exits_2_fast():
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "rlengine.main", "algorithm.group_sise=4"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - t0
    assert p.returncode == 2, p.stderr
    assert "algorithm.group_sise" in p.stderr
    assert "Traceback" not in p.stderr
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_ppo_qwen_math_requests_a_critic_per_trainer_rank():
    from rlengine.placement import required, role_specs

    cfg, plan = load_config("ppo_qwen_math", [])
    assert cfg.algorithm.name == "ppo" and plan.use_critic and plan.use_reference
    assert cfg.model.dtype == "bfloat16" and cfg.resources.device == "cuda"
    roles = {r.name: r for r in role_specs(cfg, plan)}
    assert set(roles) == {"trainer", "rollout", "reference", "critic"}
    # 4 policy ranks + 4 critic ranks + 4 vLLM workers + 1 reference, one GPU each
    assert required(list(roles.values()))["GPU"] == 4 + 4 + 4 + 1


def test_strict_pack_role_must_fit_one_node():
    from rlengine.placement import PlacementError, RoleSpec, check_resources

    trainer = RoleSpec("trainer", 8, 1.0, 1.0)  # 8 GPUs, packed on one node by default
    nodes = [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 16.0, "GPU": 4.0}]
    with pytest.raises(PlacementError, match=r"role trainer needs .*'GPU': 8.0.* short \{'GPU': 4.0\}.*role_nodes.trainer"):
        check_resources([trainer], {"CPU": 32.0, "GPU": 8.0}, nodes)
    check_resources([RoleSpec("trainer", 8, 1.0, 1.0, nodes=2)], {"CPU": 32.0, "GPU": 8.0}, nodes)  # spread: fits


# ---------------------------------------------------------------- reference.placement

@pytest.mark.parametrize("overrides, in_trainer", [
    ([], False),  # separate is the default
    (["reference.placement=trainer"], True),
    (["reference.placement=trainer", "algorithm.kl_coef=0"], False),  # no KL: no reference anywhere
])
def test_reference_placement_plan(overrides, in_trainer):
    cfg, plan = load_config("grpo_tiny", overrides)
    assert plan.reference_in_trainer is in_trainer
    assert plan.use_reference is (cfg.algorithm.kl_coef > 0)  # log-probs computed, wherever


def test_reference_placement_is_checked():
    with pytest.raises(ConfigError, match=r"'reference.placement'.*'colocated' is not one of \['separate', 'trainer'\]"):
        load_config("grpo_tiny", ["reference.placement=colocated"])


def test_reference_in_trainer_has_no_role_of_its_own():
    from rlengine.placement import required, role_specs

    cfg, plan = load_config("grpo_qwen_math", ["reference.placement=trainer", "resources.colocate=false"])
    specs = role_specs(cfg, plan)
    assert [s.name for s in specs] == ["trainer", "rollout"]
    assert required(specs)["GPU"] == 8 + 8  # the reference's GPU is not requested
    cfg, plan = load_config("ppo_qwen_math", ["reference.placement=trainer"])
    assert {s.name for s in role_specs(cfg, plan)} == {"trainer", "rollout", "critic"}


@pytest.mark.parametrize("recipe,overrides,threads", [
    ("ppo_tiny", [], 1),  # policy and critic update at once: 2 cores split between them
    ("ppo_tiny", ["trainer.cpu_threads=4"], 2),
    ("ppo_tiny", ["trainer.cpu_threads=1"], 1),
    ("grpo_tiny", [], None),  # no critic: the update runs alone, with the role's own threads
])
def test_concurrent_updates_split_the_trainer_threads(recipe, overrides, threads):
    assert load_config(recipe, overrides)[1].update_threads == threads


@pytest.mark.parametrize("overrides,key", [
    (["rollout.sync_method=pigeon"], "rollout.sync_method"),
    (["rollout.sync_method=cuda_ipc"], "rollout.sync_method"),  # needs colocated GPUs
    (["rollout.sync_timeout_s=0"], "rollout.sync_timeout_s"),
    (["rollout.tensor_parallel_size=0"], "rollout.tensor_parallel_size"),
])
def test_bad_sync_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config("grpo_tiny", overrides)
