"""Pipeline recipes (rlengine/pipeline.py): references, up-front validation, skipping finished stages,
the summary and the plot.  Nothing here starts Ray: job.run and the held-out evaluation are replaced
by fakes that write what a finished stage writes (summary.json, an HF config, named outputs)."""
import json
import textwrap
from pathlib import Path

import pytest

from rlengine import job, pipeline, pipeline_report, preflight
from rlengine.config import to_dict
from rlengine.errors import ConfigError
from rlengine.main import main
from rlengine.pipeline import Pipeline, instances
from rlengine.pipeline_spec import is_pipeline

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"

CHAIN = """\
pipeline:
  rounds: 2
  start_model: tiny:sft
  plot: chain.png
  stages:
    - name: rm
      recipe: rm_tiny
      once: true
      overrides: [trainer.total_steps=3]
    - name: sft
      recipe: sft_tiny
      model: grpo@prev|start
      overrides:
        - trainer.total_steps=2
        - "seed={round}"
    - name: grpo
      recipe: grpo_tiny
      model: sft
      reward_model: rm
      overrides: [trainer.total_steps=2]
"""


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    """A recipes/ directory with the project's recipes and `write(name, text)` for pipelines."""
    d = tmp_path / "recipes"
    d.mkdir()
    for p in RECIPES.glob("*.yaml"):
        (d / p.name).symlink_to(p)
    monkeypatch.setenv("RLENGINE_RECIPES", str(d))

    def write(name: str, text: str) -> Path:
        path = d / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def _line(path: Path, text: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if text in ln)


def _err(path: Path, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        Pipeline.load(path, list(overrides))
    return ei.value


def test_references_resolve_to_the_right_stage_round_and_key(recipes, tmp_path):
    p = Pipeline.load(recipes("chain", CHAIN), [f"run_dir={tmp_path / 'run'}"])
    assert [(i.round, i.stage.name) for i in instances(p.spec)] == [(1, "rm"), (1, "sft"), (1, "grpo"),
                                                                    (2, "sft"), (2, "grpo")]
    c = {k: cfg for k, (cfg, _) in p.configs.items()}
    assert c[(1, "sft")].model.path == "tiny:sft"  # grpo@prev does not exist in round 1: start
    assert c[(2, "sft")].model.path == "<round 1 grpo: model>"
    assert c[(1, "grpo")].model.path == "<round 1 sft: model>"
    assert c[(2, "grpo")].model.path == "<round 2 sft: model>"
    assert c[(2, "grpo")].reward_model.path == "<round 1 rm: model>"  # a once stage: round 1's
    assert (c[(1, "sft")].seed, c[(2, "sft")].seed) == (1, 2)  # {round} in an override
    assert c[(2, "grpo")].run_dir == str(tmp_path / "run" / "round2" / "grpo")
    assert all(cfg.resume == "auto" for cfg in c.values())
    assert c[(1, "rm")].trainer.total_steps == 3


def test_command_line_overrides_reach_the_pipeline_one_stage_or_every_stage(recipes, tmp_path):
    p = Pipeline.load(recipes("chain", CHAIN), [f"run_dir={tmp_path}", "pipeline.rounds=1",
                                               "stages.sft.trainer.lr=0.01", "tracking.progress_bar=false"])
    assert p.spec.rounds == 1 and set(p.configs) == {(1, "rm"), (1, "sft"), (1, "grpo")}
    assert p.configs[(1, "sft")][0].trainer.lr == 0.01 and p.configs[(1, "grpo")][0].trainer.lr != 0.01
    assert not any(cfg.tracking.progress_bar for cfg, _ in p.configs.values())


@pytest.mark.parametrize("edit, key, message", [
    (("model: sft", "model: sfx"), "pipeline.stages[2].model", "'sfx' names no stage"),
    (("model: grpo@prev|start", "model: grpo"), "pipeline.stages[1].model", "runs after it"),
    (("model: sft", "model: grpo"), "pipeline.stages[2].model", "refers to itself"),
    (("model: grpo@prev|start", "model: grpo@prev"), "pipeline.stages[1].model", "no previous round"),
    (("model: sft", "model: sft.pairs"), "pipeline.stages[2].model", "writes no output 'pairs'"),
    (("reward_model: rm", "reward_model: rm@prev"), "pipeline.stages[2].reward_model", "runs once"),
    (("model: sft", "model: 'sft..x'"), "pipeline.stages[2].model", "is not a reference"),
    (("once: true", "once: true\n      model: start\n      evaluate: true"), "pipeline.stages[0].evaluate",
     "unknown stage key"),
])
def test_reference_errors_name_the_key_and_line(recipes, edit, key, message):
    path = recipes("bad", CHAIN.replace(*edit))
    e = _err(path)
    assert e.key == key and message in str(e), str(e)
    written = edit[1].splitlines()[-1].strip().split(":")[0] + ":"  # the line of the key at fault
    assert e.where == f"{path}:{_line(path, written) if key.endswith('evaluate') else e.where.split(':')[-1]}"
    assert e.where.startswith(f"{path}:"), str(e)


def test_a_cycle_is_a_forward_reference(recipes):
    # sft takes grpo's model and grpo takes sft's: sft's reference is to a later stage.
    e = _err(recipes("cycle", CHAIN.replace("model: grpo@prev|start", "model: grpo")))
    assert e.key == "pipeline.stages[1].model" and "cycle" in str(e)


def test_a_bad_override_in_a_stage_names_the_override_and_its_line(recipes):
    path = recipes("bad", CHAIN.replace("trainer.total_steps=2\n", "trainer.total_stepz=2\n"))
    e = _err(path)
    assert e.key == "pipeline.stages[1].overrides[0]", str(e)
    assert e.where == f"{path}:{_line(path, 'trainer.total_stepz=2')}"
    assert "total_stepz" in str(e) and "stage 'sft'" in str(e)


def test_a_stage_recipe_that_fails_validation_names_the_stage(recipes):
    # algorithm.kl_coef > 0 is refused by the SFT stage's own check.
    path = recipes("bad", CHAIN.replace("trainer.total_steps=2\n", "algorithm.kl_coef=0.1\n"))
    e = _err(path)
    assert e.key == "pipeline.stages[1].overrides[0]" and "algorithm.kl_coef" in str(e), str(e)
    e = _err(recipes("bad2", CHAIN.replace("recipe: sft_tiny", "recipe: sft_tinyy")))
    assert e.key == "pipeline.stages[1].recipe" and "no recipe 'sft_tinyy'" in str(e), str(e)


def test_command_line_errors_say_so(recipes, tmp_path):
    path = recipes("chain", CHAIN)
    e = _err(path, ["stages.sft.trainer.total_stepz=1"])
    assert e.key == "stages.sft.trainer.total_stepz" and e.where == "command-line override", str(e)
    e = _err(path, ["stages.nope.trainer.lr=1"])
    assert e.key == "stages.nope.trainer.lr" and "stages: ['grpo', 'rm', 'sft']" in str(e)
    e = _err(path, ["pipeline.rounds=0"])
    assert e.key == "pipeline.rounds" and ">= 1" in str(e)
    e = _err(path, ["pipeline.stages=[]"])
    assert e.key == "pipeline.stages" and e.where == "command-line override"
    e = _err(path, ["model.path=tiny:base"])  # for every stage: it would cut the chain
    assert e.key == "model.path" and "pipeline.stages[1].model" in str(e)
    e = _err(path, ["resume=PATH"])
    assert e.key == "resume"


def test_the_pipeline_owns_run_dir_and_the_references_keys(recipes):
    e = _err(recipes("bad", CHAIN.replace("trainer.total_steps=3", "run_dir=/tmp/x")))
    assert e.key == "pipeline.stages[0].overrides[0]" and "set by the pipeline" in str(e)
    e = _err(recipes("bad2", CHAIN.replace("overrides: [trainer.total_steps=2]", "overrides: [model.path=x]")))
    assert e.key == "pipeline.stages[2].overrides[0]" and "already set by pipeline.stages[2].model" in str(e)


def test_nothing_starts_when_the_pipeline_is_invalid(recipes, monkeypatch, capsys):
    recipes("bad", CHAIN.replace("model: sft", "model: sfx"))
    monkeypatch.setattr(job, "run", lambda *a: pytest.fail("a stage ran"))
    assert main(["recipe=bad"]) == 2
    assert "pipeline.stages[2].model" in capsys.readouterr().err


def test_cfg_prints_every_stage_of_every_round(recipes, tmp_path, capsys):
    recipes("chain", CHAIN)
    assert main(["recipe=chain", "--cfg", f"run_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "round 2 sft: recipe=sft_tiny" in out and "model.path=<round 1 grpo: model>" in out


@pytest.mark.parametrize("value", ["/tmp/a b/c=d,e[1]", "/tmp/it's", "/tmp/${x}/{round}", "C:\\x\\", "a\\'b"])
def test_reference_values_reach_the_config_verbatim(value):
    from rlengine.compose import load_config

    assert load_config("sft_tiny", ["model.path=" + pipeline._quote(value)])[0].model.path == value


def test_a_pipeline_is_not_a_stage_recipe(recipes):
    from rlengine.compose import load_config

    recipes("chain", CHAIN)
    with pytest.raises(ConfigError, match="is a pipeline"):
        load_config("chain", [])


# -- running, with fakes of a stage run ------------------------------------------------------------

class FakeStages:
    """job.run's stand-in: records each call and writes what a finished stage leaves behind."""

    def __init__(self, fail_at=None):
        self.calls: list[tuple[str, dict]] = []
        self.fail_at = fail_at

    def __call__(self, cfg, plan):
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), default=str))
        label = f"{run_dir.parent.name}/{run_dir.name}"
        self.calls.append((label, {"model": cfg.model.path, "data": cfg.data.train_path,
                                   "reward_model": cfg.reward_model.path}))
        if label == self.fail_at:
            raise job.RunInterrupted("stopped by SIGTERM after step 1 of 2")
        if cfg.algorithm.name == "best_of_n":  # trains nothing: data sets, no model
            outputs = {n: str(run_dir / "data" / f"{n}.jsonl") for n in ("sft", "pairs", "stats")}
            summary = {"recipe": cfg.recipe, "outputs": outputs, "sample/kept_accuracy": 1.0}
            (run_dir / "summary.json").write_text(json.dumps(summary))
            return summary
        hf = run_dir / "checkpoints" / "step_000002" / "hf"
        hf.mkdir(parents=True)
        arch = "Qwen2ForSequenceClassification" if cfg.algorithm.name == "rm" else "Qwen2ForCausalLM"
        (hf / "config.json").write_text(json.dumps({"architectures": [arch]}))
        summary = {"recipe": cfg.recipe, "hf_checkpoint": str(hf), "steps": 2, "wall_time_s": 1.0,
                   "eval/accuracy_after": 0.5}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary


@pytest.fixture
def fakes(monkeypatch):
    stages = FakeStages()
    monkeypatch.setattr(job, "run", stages)
    monkeypatch.setattr(job, "build_tiny", lambda *a: None)
    monkeypatch.setattr(preflight, "check", lambda *a: None)
    evals = []

    def fake_eval(model, spec, out):
        if out.exists():  # as the real one: cached per model
            return json.loads(out.read_text())
        evals.append(model)
        acc = {"tiny:sft": 0.3}.get(model, 0.3 + 0.1 * len(evals))
        res = {"model": model, "accuracy": acc, "n": 500}
        out.write_text(json.dumps(res))
        return res

    monkeypatch.setattr(pipeline, "evaluate_model", fake_eval)
    return stages, evals


def test_stages_run_in_order_on_their_predecessors_outputs(recipes, tmp_path, fakes):
    stages, evals = fakes
    root = tmp_path / "run"
    summary = Pipeline.load(recipes("chain", CHAIN), [f"run_dir={root}"]).run()
    assert [c[0] for c in stages.calls] == ["round1/rm", "round1/sft", "round1/grpo", "round2/sft", "round2/grpo"]
    calls = dict(stages.calls)
    hf = lambda r, s: str(root / f"round{r}" / s / "checkpoints" / "step_000002" / "hf")  # noqa: E731
    assert calls["round1/sft"]["model"] == "tiny:sft"
    assert calls["round1/grpo"] == {"model": hf(1, "sft"), "data": "tiny:train", "reward_model": hf(1, "rm")}
    assert calls["round2/sft"]["model"] == hf(1, "grpo")
    assert calls["round2/grpo"]["reward_model"] == hf(1, "rm")
    # The reward model is not a policy: it is not evaluated; every policy stage is, and the start.
    assert evals == ["tiny:sft", hf(1, "sft"), hf(1, "grpo"), hf(2, "sft"), hf(2, "grpo")]
    on_disk = json.loads((root / "pipeline_summary.json").read_text())
    assert on_disk["finished"] and on_disk["start"]["heldout_accuracy"] == 0.3
    rows = {(r["round"], r["stage"]): r for r in on_disk["stages"]}
    assert rows[(1, "rm")]["heldout_accuracy"] is None and rows[(1, "rm")]["status"] == "ran"
    assert rows[(2, "grpo")]["heldout_accuracy"] == pytest.approx(0.8)
    assert rows[(2, "grpo")]["inputs"] == {"model.path": hf(2, "sft"), "reward_model.path": hf(1, "rm")}
    assert rows[(1, "sft")]["stage_eval"] == {"eval/accuracy_after": 0.5}
    assert on_disk["heldout_accuracy_by_round"] == {"1": pytest.approx(0.6), "2": pytest.approx(0.8)}
    assert summary["plot"] == str(root / "chain.png") and (root / "chain.png").stat().st_size > 1000
    assert (root / "pipeline.log").read_text().count("running recipe=") == 5


def test_a_rerun_skips_finished_stages_and_resumes_the_interrupted_one(recipes, tmp_path, fakes, monkeypatch):
    stages, _ = fakes
    root = tmp_path / "run"
    path = recipes("chain", CHAIN)
    stopping = FakeStages(fail_at="round2/sft")
    monkeypatch.setattr(job, "run", stopping)
    with pytest.raises(job.RunInterrupted, match="Rerun the pipeline"):
        Pipeline.load(path, [f"run_dir={root}"]).run()
    assert [c[0] for c in stopping.calls][-1] == "round2/sft"
    assert not json.loads((root / "pipeline_summary.json").read_text())["finished"]

    monkeypatch.setattr(job, "run", stages)
    summary = Pipeline.load(path, [f"run_dir={root}"]).run()
    assert [c[0] for c in stages.calls] == ["round2/sft", "round2/grpo"]  # only what had not finished
    status = {(r["round"], r["stage"]): r["status"] for r in summary["stages"]}
    assert status[(1, "rm")] == status[(1, "grpo")] == "skipped: finished earlier"
    assert status[(2, "sft")] == status[(2, "grpo")] == "ran"

    stages.calls.clear()
    again = Pipeline.load(path, [f"run_dir={root}"]).run()
    assert stages.calls == [] and all(r["status"].startswith("skipped") for r in again["stages"])
    assert [r["heldout_accuracy"] for r in again["stages"]] == [r["heldout_accuracy"] for r in summary["stages"]]


def test_a_missing_output_at_run_time_names_the_reference(recipes, tmp_path, fakes, monkeypatch):
    stages, _ = fakes
    real = stages.__call__

    def no_export(cfg, plan):
        s = real(cfg, plan)
        if cfg.algorithm.name == "sft":
            s.pop("hf_checkpoint")
            (Path(cfg.run_dir) / "summary.json").write_text(json.dumps(s))
        return s

    monkeypatch.setattr(job, "run", no_export)
    with pytest.raises(ConfigError) as ei:
        Pipeline.load(recipes("chain", CHAIN), [f"run_dir={tmp_path}"]).run()
    assert ei.value.key == "pipeline.stages[2].model" and "without an HF model" in str(ei.value)


def test_the_held_out_check_runs_once_per_model_and_is_cached(tmp_path, monkeypatch, recipes):
    """The real evaluation (rlengine.evaluate in its own process) on the untrained tiny model."""
    spec = Pipeline.load(recipes("chain", CHAIN.replace("start_model: tiny:sft", "start_model: tiny:base")
                                 .replace("  plot: chain.png", "  plot: chain.png\n  eval: {limit: 8}")),
                         [f"run_dir={tmp_path}"]).spec
    out = tmp_path / "eval.json"
    res = pipeline.evaluate_model("tiny:base", spec, out)
    assert res["n"] == 8 and 0.0 <= res["accuracy"] <= 1.0 and res["eval"]["limit"] == 8
    monkeypatch.setattr(pipeline_report.subprocess, "run", lambda *a, **k: pytest.fail("evaluated again"))
    assert pipeline.evaluate_model("tiny:base", spec, out) == res


@pytest.mark.parametrize("name", ["flywheel_tiny", "flywheel_qwen"])
def test_the_shipped_pipelines_compose_and_validate(name, tmp_path, monkeypatch):
    monkeypatch.setenv("RLENGINE_RECIPES", str(RECIPES))
    assert is_pipeline(RECIPES / f"{name}.yaml")
    p = Pipeline.load(RECIPES / f"{name}.yaml", [f"run_dir={tmp_path}"])
    c = {k: cfg for k, (cfg, _) in p.configs.items()}
    assert p.spec.rounds == 2 and p.spec.plot == "flywheel.png"
    assert c[(1, "sample")].algorithm.name == "best_of_n" and c[(1, "sample")].model.path == p.spec.start_model
    assert c[(2, "sample")].model.path == "<round 1 dpo: model>"
    assert c[(2, "sft")].data.train_path == "<round 2 sample: sft>"
    assert c[(2, "dpo")].data.train_path == "<round 2 sample: pairs>"
    assert c[(2, "dpo")].model.path == "<round 2 sft: model>"
    if name == "flywheel_tiny":
        assert c[(2, "sample")].reward_model.path == "<round 1 rm: model>" and (2, "rm") not in c
        assert c[(1, "sft")].sft.format == "completion"
    else:
        assert {cfg.resources.device for cfg in c.values()} == {"cuda"} and p.spec.eval.device == "cuda"
        assert c[(1, "sample")].reward_model.path is None  # the verifier is the reward


def test_the_tiny_flywheel_hands_each_stage_its_predecessors_outputs(tmp_path, fakes, monkeypatch):
    stages, evals = fakes
    monkeypatch.setenv("RLENGINE_RECIPES", str(RECIPES))
    root = tmp_path / "fw"
    summary = Pipeline.load(RECIPES / "flywheel_tiny.yaml", [f"run_dir={root}"]).run()
    calls = dict(stages.calls)
    hf = lambda r, s: str(root / f"round{r}" / s / "checkpoints" / "step_000002" / "hf")  # noqa: E731
    data = lambda r, n: str(root / f"round{r}" / "sample" / "data" / f"{n}.jsonl")  # noqa: E731
    assert [c[0] for c in stages.calls] == ["round1/rm", "round1/sample", "round1/sft", "round1/dpo",
                                            "round2/sample", "round2/sft", "round2/dpo"]
    assert calls["round1/sample"] == {"model": "tiny:sft", "data": "tiny:train", "reward_model": hf(1, "rm")}
    assert calls["round2/sample"] == {"model": hf(1, "dpo"), "data": "tiny:train", "reward_model": hf(1, "rm")}
    assert calls["round2/sft"] == {"model": hf(1, "dpo"), "data": data(2, "sft"), "reward_model": None}
    assert calls["round2/dpo"] == {"model": hf(2, "sft"), "data": data(2, "pairs"), "reward_model": None}
    # Evaluated: the start model and every policy stage; not the reward model, not the sampler.
    assert evals == ["tiny:sft", hf(1, "sft"), hf(1, "dpo"), hf(2, "sft"), hf(2, "dpo")]
    assert summary["plot"] == str(root / "flywheel.png")
    rows = {(r["round"], r["stage"]): r for r in summary["stages"]}
    assert rows[(1, "sample")]["outputs"]["pairs"] == data(1, "pairs") and rows[(1, "sample")]["model"] is None


@pytest.mark.parametrize("edit, key, message", [
    (("data: sample.sft ", "data: sample.sfx "), "pipeline.stages[2].data",
     "writes no output 'sfx'; its outputs: ['sft', 'pairs', 'stats']"),
    (("      model: sft\n", "      model: sample\n"), "pipeline.stages[3].model",
     "exports no model (it trains nothing)"),
])
def test_best_of_n_outputs_are_checked_before_anything_runs(recipes, edit, key, message):
    text = (RECIPES / "flywheel_tiny.yaml").read_text()
    assert edit[0] in text
    path = recipes("fw_bad", text.replace(*edit))
    e = _err(path)
    assert e.key == key and message in str(e) and e.where == f"{path}:{_line(path, edit[1].strip())}", str(e)
