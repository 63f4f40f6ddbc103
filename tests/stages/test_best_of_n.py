"""rlengine/stages/best_of_n.py: the filters, pairs, statistics and resumable output files by hand,
and one step driven through a stand-in controller (no Ray)."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from rlengine.compose import load_config
from rlengine.data import DataError
from rlengine.errors import ConfigError
from rlengine.protocol import Batch
from rlengine.stages.best_of_n import (BestOfN, Outputs, Sample, pick_pair, prompt_stats, select, totals_figures,
                                       truncate_lines)


def S(response, score, correct=None, n_tokens=2, finished=True):
    return Sample(response, float(score), score >= 1.0 if correct is None else correct, n_tokens, finished)


# ---------------------------------------------------------------- select

def test_top_n_is_best_first_and_ties_keep_sampling_order():
    g = [S("a", 0.2), S("b", 0.9), S("c", 0.9), S("d", 0.5)]
    assert select(g, top_n=1) == [1]
    assert select(g, top_n=3) == [1, 2, 3]
    assert select(g, top_n=4) == [1, 2, 3, 0]


def test_threshold_dedup_length_cap_and_unfinished():
    g = [S("x", 1.0, n_tokens=3), S("x", 1.0, n_tokens=3), S("y", 1.0, n_tokens=9), S("z", 0.0),
         S("w", 1.0, finished=False)]
    assert select(g, top_n=5, min_score=1.0) == [0, 2]  # the repeat of "x" and the unfinished "w" dropped
    assert select(g, top_n=5, min_score=1.0, dedup=False) == [0, 1, 2]
    assert select(g, top_n=5, min_score=1.0, max_response_tokens=3) == [0]
    assert select(g, top_n=5, min_score=1.0, keep_unfinished=True) == [0, 2, 4]
    assert select(g, top_n=5) == [0, 2, 3]
    assert select(g, top_n=5, min_score=1.5) == []  # a threshold above every score keeps nothing


def test_dedup_keeps_the_better_copy_only_when_scores_differ():
    # Same text, different scores (e.g. a stochastic reward model): the better one stays.
    g = [S("x", 0.1), S("y", 0.5), S("x", 0.8)]
    assert select(g, top_n=3) == [2, 1]


# ---------------------------------------------------------------- pairs

def test_pair_is_best_kept_vs_worst_within_the_cap_and_needs_the_margin():
    g = [S("a", 1.0), S("b", 0.0, n_tokens=50), S("c", 0.2), S("d", 0.2)]
    kept = select(g, top_n=1, min_score=1.0)
    assert pick_pair(g, kept, margin=0.5) == (0, 1)
    assert pick_pair(g, kept, margin=0.5, max_response_tokens=10) == (0, 2)  # "b" too long; c before d
    assert pick_pair(g, kept, margin=0.9, max_response_tokens=10) is None  # 1.0 - 0.2 < 0.9
    assert pick_pair(g, [], margin=0.0) is None
    assert pick_pair([S("a", 1.0), S("a", 1.0)], [0], margin=0.0) is None  # no other text to reject


# ---------------------------------------------------------------- statistics

def test_prompt_stats_by_hand():
    g = [S("a", 1.0), S("b", 0.0), S("a", 1.0), S("c", 0.0, finished=False)]
    st = prompt_stats(g, kept=[0])
    assert st == {"n": 4, "kept": 1, "score_mean": 0.5, "score_max": 1.0, "score_min": 0.0, "score_std": 0.5,
                  "correct": 2, "pass_at_k": 1.0, "unique": 3, "unfinished": 1}
    assert prompt_stats([S("a", 0.0), S("b", 0.0)], [])["pass_at_k"] == 0.0
    st = prompt_stats([S("a", 0.0), S("b", 0.3), S("c", 0.9)], [2])
    assert st["score_std"] == pytest.approx(math.sqrt(((0.4) ** 2 + 0.1 ** 2 + 0.5 ** 2) / 3))


def test_totals_figures_by_hand():
    t = {"prompts": 4, "samples": 64, "correct": 16, "kept": 3, "kept_correct": 3, "passed": 3, "pairs": 2,
         "prompts_kept": 3, "score_sum": 16.0}
    f = totals_figures(t)
    assert f["sample/single_accuracy"] == 0.25 and f["sample/kept_accuracy"] == 1.0
    assert f["sample/pass_at_k"] == 0.75 and f["sample/kept_fraction"] == 3 / 64
    assert f["sample/rows"] == 3 and f["sample/prompts"] == 4 and f["sample/score_mean"] == 0.25
    empty = totals_figures({k: 0 for k in t})
    assert empty["sample/kept_accuracy"] == 0.0 and empty["sample/single_accuracy"] == 0.0


# ---------------------------------------------------------------- output files

def test_truncate_lines_keeps_whole_lines_and_drops_a_torn_one(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a"')
    truncate_lines(p, 3)
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 3}\n'
    truncate_lines(p, 1)
    assert p.read_text() == '{"a": 1}\n'
    truncate_lines(p, 0)
    assert p.read_text() == ""


def test_truncate_lines_refuses_when_rows_the_checkpoint_recorded_are_gone(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text('{"a": 1}\n{"a"')
    with pytest.raises(DataError, match="has 1 complete lines but its checkpoint recorded 2"):
        truncate_lines(p, 2)


def test_outputs_fresh_start_empties_and_resume_cuts_back(tmp_path):
    out = Outputs(tmp_path / "data")
    out.open(None)
    out.append("sft", [{"i": 0}, {"i": 1}])
    out.append("stats", [{"i": 0}])
    saved = dict(out.lines)
    out.append("sft", [{"i": 2}])  # appended, then the job was killed before its checkpoint
    again = Outputs(tmp_path / "data")
    again.open(saved)
    assert [json.loads(x)["i"] for x in again.paths["sft"].read_text().splitlines()] == [0, 1]
    assert again.lines == {"sft": 2, "pairs": 0, "stats": 1}
    fresh = Outputs(tmp_path / "data")
    fresh.open(None)
    assert all(p.read_text() == "" for p in fresh.paths.values())
    (tmp_path / "data" / "pairs.jsonl").unlink()
    with pytest.raises(DataError, match="missing"):
        Outputs(tmp_path / "data").open({"pairs": 1})


# ---------------------------------------------------------------- config rules

def _err(overrides) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_config("best_of_n_tiny", overrides)
    return ei.value


@pytest.mark.parametrize("override,key", [
    ("sample.k=0", "sample.k"), ("sample.top_n=0", "sample.top_n"), ("sample.top_n=17", "sample.top_n"),
    ("sample.max_response_tokens=0", "sample.max_response_tokens"), ("sample.max_prompts=0", "sample.max_prompts"),
    ("sample.pair_margin=-1", "sample.pair_margin"), ("rollout.temperature=0", "rollout.temperature"),
    ("reward.fns=[]", "reward.fns"), ("algorithm.kl_coef=0.1", "algorithm.kl_coef"),
    ("model.lora.r=8", "model.lora.r"), ("resources.colocate=true", "resources.colocate"),
    ("checkpoint.export_hf_to=/tmp/x", "checkpoint.export_hf_to"),
])
def test_bad_sampling_config_fails_before_any_actor_naming_the_key(override, key):
    assert _err([override]).key == key


def test_no_trainer_role_and_no_trainer_batch_rules():
    from rlengine.placement import role_specs

    # 10 prompts x 16 samples = 160 rows: no minibatch / micro-batch divisibility applies (nothing trains).
    cfg, plan = load_config("best_of_n_tiny", ["data.prompts_per_step=10", "algorithm.minibatches=3"])
    assert not plan.use_trainer and plan.samples_per_step == 160
    assert [s.name for s in role_specs(cfg, plan)] == ["rollout"]


def test_qwen_recipe_composes_and_places_engines_only():
    from rlengine import memory
    from rlengine.placement import required, role_specs

    cfg, plan = load_config("best_of_n_qwen", [])
    assert cfg.resources.device == "cuda" and cfg.resources.gpus_per_trainer == 0 and not plan.use_trainer
    assert cfg.data.chat_template and cfg.sample.k == 16 and cfg.sample.min_score == 1.0
    assert required(role_specs(cfg, plan)) == {"CPU": 16, "GPU": 4}
    # The memory planner plans the engines alone: no trainer states on any device.
    ev = memory.check_fits(cfg, plan, capacity=80 * 2**30)
    assert "trainer" not in ev["roles"] and [g["devices"] for g in ev["per_device"]] == ["rollout"]
    assert _err_qwen(["resources.gpus_per_rollout=0"]).key == "resources.gpus_per_rollout"


def _err_qwen(overrides) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_config("best_of_n_qwen", overrides)
    return ei.value


# ---------------------------------------------------------------- one step through a stand-in controller

class _Ctl:
    """What BestOfN.step calls on the controller: prompts, redo(generate), score; responses by script."""

    def __init__(self, responses: list[list[str]], k: int, max_new_tokens: int):
        self.responses, self.k, self.max_new = responses, k, max_new_tokens
        self.roles = SimpleNamespace(rollout="engines")
        self.encoder = SimpleNamespace(tokenizer=SimpleNamespace(eos_token_id=1))
        self.faults = {}

    def prompts(self, rows, step):
        return rows

    def redo(self, group, method, rows, n, join=None):
        assert (group, method, n) == ("engines", "generate", self.k)
        texts = [t for r in rows for t in self.responses[int(r["answer"])]]
        # Token ids: one per character, EOS (1) appended unless the text ends with "~" (cut at the cap).
        ids = [[ord(c) for c in t] + ([] if t.endswith("~") else [1]) for t in texts]
        ids = [x[:self.max_new] for x in ids]
        width = max(map(len, ids))
        meta = {"response": texts, "prompt": [r["prompt"] for r in rows for _ in range(n)],
                "ground_truth": [r["answer"] for r in rows for _ in range(n)], "extra": [{} for _ in texts]}
        return Batch(tensors={"responses": torch.tensor([x + [0] * (width - len(x)) for x in ids]),
                              # float, as the rollout layout has it
                              "response_length": torch.tensor([float(len(x)) for x in ids])}, meta=meta)

    def score(self, batch):
        s = torch.tensor([1.0 if t.strip() == gt else 0.0 for t, gt in zip(batch["response"], batch["ground_truth"])])
        return batch.update(scores=s), SimpleNamespace(per_fn=[s], errors=0, timeouts=0)


def _stage(tmp_path, overrides=()):
    cfg, plan = load_config("best_of_n_tiny", ["sample.k=3", "data.prompts_per_step=2", *overrides])
    stage = BestOfN(cfg, plan)
    # Prompt i's answer is str(i): the scripted responses are looked up by it.
    stage.rows = [{"prompt": f"Q{i}", "answer": str(i), "_source": f"t:{i}"} for i in range(4)]
    stage.start(tmp_path)
    return stage


SCRIPT = [[" 0", " 0", " 5"], [" 9", " 8", " 7"], [" 2", " 3", "22222222~"], [" 3", " 3", " 3"]]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_step_writes_kept_rows_pairs_and_stats(tmp_path):
    stage = _stage(tmp_path)
    ctl = _Ctl(SCRIPT, k=3, max_new_tokens=8)
    assert stage.total_steps() == 2
    m1 = stage.step(ctl, 1)
    data = tmp_path / "data"
    sft = _lines(data / "sft.jsonl")
    assert sft == [{"messages": [{"role": "user", "content": "Q0"}, {"role": "assistant", "content": " 0"}],
                    "prompt": "Q0", "completion": " 0", "answer": "0", "score": 1.0, "correct": True,
                    "index": 0, "sample": 0}]
    assert _lines(data / "pairs.jsonl") == [{"prompt": "Q0", "chosen": " 0", "rejected": " 5", "answer": "0",
                                             "chosen_score": 1.0, "rejected_score": 0.0, "index": 0}]
    stats = _lines(data / "stats.jsonl")
    assert [(s["index"], s["kept"], s["correct"], s["pass_at_k"], s["unique"]) for s in stats] == [
        (0, 1, 2, 1.0, 2), (1, 0, 0, 0.0, 3)]
    assert m1["sample/single_accuracy"] == pytest.approx(2 / 6) and m1["sample/kept_accuracy"] == 1.0
    assert m1["sample/pass_at_k"] == 0.5 and m1["sample/rows"] == 1

    m2 = stage.step(ctl, 2)
    stats = _lines(data / "stats.jsonl")
    assert [s["index"] for s in stats] == [0, 1, 2, 3]
    # Prompt 2: " 2" is right; the 8-token "22222222~" was cut at the cap: unfinished, dropped.
    assert stats[2]["unfinished"] == 1 and stats[3]["unique"] == 1 and stats[3]["kept"] == 1
    assert m2["sample/rows"] == 2
    r = stage.results()
    assert r["sample/prompts"] == 4 and r["sample/rows"] == 3 and not r["sample/empty"]
    assert r["sample/single_accuracy"] == pytest.approx(6 / 12) and r["sample/pass_at_k"] == 0.75
    assert r["outputs"] == {n: str(data / f"{n}.jsonl") for n in ("sft", "pairs", "stats")}
    stage.finish({**r})  # data was kept: no error


def test_resume_cuts_the_files_back_to_the_checkpoint_and_redoes_the_step(tmp_path):
    stage = _stage(tmp_path)
    ctl = _Ctl(SCRIPT, k=3, max_new_tokens=8)
    stage.step(ctl, 1)
    state = json.loads(json.dumps(stage.state_dict()))  # what the checkpoint after step 1 holds
    stage.step(ctl, 2)  # appended; killed before its checkpoint
    want = {n: (tmp_path / "data" / f"{n}.jsonl").read_text() for n in ("sft", "pairs", "stats")}

    resumed = _stage(tmp_path)
    resumed.load_state_dict(state)
    resumed.step(ctl, 2)
    got = {n: (tmp_path / "data" / f"{n}.jsonl").read_text() for n in ("sft", "pairs", "stats")}
    assert got == want  # no prompt lost or written twice
    assert resumed.results()["sample/prompts"] == 4 and resumed.results()["sample/rows"] == 3


def test_a_threshold_that_keeps_nothing_is_an_error_at_the_end(tmp_path):
    stage = _stage(tmp_path, ["sample.min_score=2.0"])
    ctl = _Ctl(SCRIPT, k=3, max_new_tokens=8)
    stage.step(ctl, 1)
    stage.step(ctl, 2)
    r = stage.results()
    assert r["sample/empty"] and r["sample/rows"] == 0
    with pytest.raises(DataError, match="kept no sample of 12"):
        stage.finish(r)


def test_a_verifier_apart_from_the_reward_decides_correctness(tmp_path):
    # eval.fn differs from the reward: correctness comes from its own scoring pool.
    stage = _stage(tmp_path, ["eval.fn=reward_fns/math.py:compute_score",
                              "reward.fns=[{fn:'examples/custom_reward.py:concise_number',weight:1.0}]"])
    try:
        batch = _Ctl(SCRIPT, k=3, max_new_tokens=8).redo("engines", "generate", stage.rows[:1], 3)
        batch = batch.update(scores=torch.zeros(3))
        assert stage.correct(batch, SimpleNamespace(per_fn=[torch.zeros(3)])).tolist() == [True, True, False]
    finally:
        stage.close()


def test_resuming_with_another_prompts_per_step_is_refused(tmp_path):
    stage = _stage(tmp_path)
    stage.step(_Ctl(SCRIPT, k=3, max_new_tokens=8), 1)
    state = stage.state_dict()
    cfg, plan = load_config("best_of_n_tiny", ["sample.k=3", "data.prompts_per_step=1"])
    with pytest.raises(ConfigError) as ei:
        BestOfN(cfg, plan).load_state_dict(state)
    assert ei.value.key == "data.prompts_per_step"
