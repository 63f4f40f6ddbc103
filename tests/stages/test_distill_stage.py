"""The distillation stages' config rules: each bad combination names its key before anything runs."""
import pytest

from rlengine.compose import load_config
from rlengine.errors import ConfigError


@pytest.mark.parametrize("recipe,overrides,key", [
    ("distill_tiny", ["teacher.path=null"], "teacher.path"),
    ("distill_tiny", ["distill.divergence=kl"], "distill.divergence"),
    ("distill_tiny", ["distill.divergence=jsd", "distill.beta=1.0"], "distill.beta"),
    ("distill_tiny", ["distill.alpha=1.5"], "distill.alpha"),
    ("distill_tiny", ["distill.temperature=0"], "distill.temperature"),
    ("distill_tiny", ["teacher.top_k=-1"], "teacher.top_k"),
    ("distill_tiny", ["teacher.dtype=int8"], "teacher.dtype"),
    ("distill_tiny", ["resources.device=cuda", "resources.gpus_per_trainer=1"], "resources.gpus_per_teacher"),
    ("opd_tiny", ["algorithm.kl_coef=0.1"], "algorithm.kl_coef"),
    ("opd_tiny", ["distill.reward_coef=1.0", "reward.fns=[]", "eval.fn=reward_fns/math.py:compute_score"],
     "distill.reward_coef"),
    ("opd_tiny", ["distill.reward_coef=1.0", "algorithm.group_size=1"], "algorithm.group_size"),
    ("sft_tiny", ["teacher.path=tiny:teacher"], "teacher.path"),  # a stage without a teacher
])
def test_bad_distill_configs_name_their_key(recipe, overrides, key):
    with pytest.raises(ConfigError) as ei:
        load_config(recipe, overrides)
    assert ei.value.key == key, str(ei.value)


def test_plans_declare_the_teacher_role():
    from rlengine.placement import describe_plan

    cfg, plan = load_config("distill_tiny", [])
    assert plan.use_teacher and plan.use_rollout and not plan.use_reference
    assert "teacher: 1 actor" in describe_plan(cfg, plan)
    cfg, plan = load_config("opd_tiny", [])
    assert plan.use_teacher and plan.samples_per_step == 32 * 4
    cfg, plan = load_config("distill_qwen", [])
    assert plan.use_teacher and cfg.teacher.num_workers == 2 and "2 GPUs" in describe_plan(cfg, plan)
    assert not load_config("sft_tiny", [])[1].use_teacher
