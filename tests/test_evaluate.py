"""rlengine/evaluate.py: the held-out check is declared (eval.fn / eval.sets), not borrowed from the
reward being optimised."""
import json

import torch

from rlengine.compose import load_config
from rlengine.evaluate import heldout_sets

ROWS = [{"prompt": "Q: 1+2=? A:", "answer": "3"}, {"prompt": "Q: 2+2=? A:", "answer": "4"}]
SHAPED = "reward.fns=[{fn: 'examples/custom_reward.py:concise_number'}]"


def _score(held, responses):
    n = len(responses)
    return held.metrics([r["prompt"] for r in ROWS[:n]], responses, [r["answer"] for r in ROWS[:n]], [{}] * n,
                        torch.tensor([1.0] * n))


def test_a_declared_check_scores_accuracy_whatever_reward_is_trained():
    cfg, _ = load_config("grpo_tiny", [SHAPED, "eval.fn=reward_fns/math.py:compute_score"])
    (held,) = heldout_sets(cfg, ROWS)
    try:
        m = _score(held, [" 3", " 5"])
    finally:
        held.close()
    assert held.fn == "reward_fns/math.py:compute_score" and held.describe()["n"] == 2
    assert m["eval/accuracy"] == 0.5 and m["eval/n"] == 2.0


def test_the_default_check_is_the_task_verifier_with_its_threshold():
    cfg, _ = load_config("grpo_tiny", ["eval.threshold=0.5"])
    (held,) = heldout_sets(cfg, ROWS)
    assert held.fn == cfg.reward.fns[0].fn and held.threshold == 0.5


def test_eval_sets_have_their_own_keys_check_and_name(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question": r["prompt"], "gold": r["answer"]}) + "\n" for r in ROWS))
    cfg, _ = load_config("grpo_tiny", [f"+eval.sets=[{{name: q, path: '{path}', prompt_key: question, "
                                       f"answer_key: gold, threshold: 1.0}}]"])
    main, extra = heldout_sets(cfg, ROWS)
    assert extra.name == "q" and extra.suffix == "/q" and extra.rows[0]["prompt"] == ROWS[0]["prompt"]
    try:
        m = _score(extra, [" 3", " 4"])
    finally:
        extra.close()
    assert m["eval/q/accuracy"] == 1.0
