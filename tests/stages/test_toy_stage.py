"""The stage spec is the single place a training kind is declared: a toy stage in one new module
(tests/stages/toy_stage.py), loaded by algorithm.plugins, runs two steps end to end."""
import pytest

from rlengine.compose import load_config
from tests.conftest import REPO, read_metrics, read_summary, run_main

TOY = str(REPO / "tests" / "stages" / "toy_stage.py")


def test_toy_stage_composes_from_its_module_alone():
    cfg, plan = load_config("sft_tiny", [f"algorithm.plugins=[{TOY}]", "algorithm.name=toy"])
    assert plan.use_rollout is False and plan.use_reference is False and plan.samples_per_step == 64
    from rlengine.stages import get_stage, stage_names

    assert "toy" in stage_names() and get_stage("toy").__module__.startswith("rlengine_plugin_toy_stage")


def test_bad_plugin_is_a_config_error():
    from rlengine.errors import ConfigError

    with pytest.raises(ConfigError, match="algorithm.plugins"):
        load_config("sft_tiny", ["algorithm.plugins=[/no/such/stage.py]"])


@pytest.mark.e2e
def test_toy_stage_runs_two_steps(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_main(["recipe=sft_tiny", f"algorithm.plugins=[{TOY}]", "algorithm.name=toy", "model.path=tiny:base",
                     "trainer.total_steps=2", "data.prompts_per_step=8", "trainer.micro_batch_size=4",
                     "tracking.progress_bar=false", f"run_dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = read_summary(run_dir)
    assert s["steps"] == 2 and s["algorithm"] == "toy"
    assert s["eval/answer_nll_after"] < s["eval/answer_nll_before"]  # lr 2e-3 on the answers: the NLL drops
    steps = [m for m in read_metrics(run_dir) if "toy/loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and steps[0]["toy/rank_rows"] == 8
    assert "held-out answer NLL before" in proc.stdout
