"""reward_fns/format.py: R1-style format rewards, table-driven; every expectation decided by hand."""
import pytest

from reward_fns.format import compute_score

# (id, prompt, response, kwargs, expected score)
CASES = [
    # ---------------------------------------------------------------- default: <think>...</think> answer
    ("ok", "q", "<think>3+4=7</think>The answer is 7.", {}, 1.0),
    ("ok-newlines", "q", "<think>\nadd them\n</think>\n\n\\boxed{7}", {}, 1.0),
    ("ok-surrounding-space", "q", "  \n<think>x</think> 7 \n", {}, 1.0),
    ("no-tags", "q", "The answer is 7.", {}, 0.0),
    ("no-close", "q", "<think>thinking forever", {}, 0.0),
    ("no-open", "q", "thinking</think>7", {}, 0.0),
    ("text-before-think", "q", "Sure! <think>x</think>7", {}, 0.0),
    ("empty-answer", "q", "<think>x</think>", {}, 0.0),
    ("blank-answer", "q", "<think>x</think>  \n ", {}, 0.0),
    ("empty-reasoning", "q", "<think></think>7", {}, 0.0),
    ("blank-reasoning", "q", "<think>\n\n</think>7", {}, 0.0),
    ("empty-reasoning-allowed", "q", "<think></think>7", {"require_reasoning": False}, 1.0),
    ("two-think-blocks", "q", "<think>a</think><think>b</think>7", {}, 0.0),
    ("nested-think", "q", "<think>a<think>b</think>c</think>7", {}, 0.0),
    ("reopened-after-close", "q", "<think>a</think>7<think>", {}, 0.0),
    ("close-before-open", "q", "</think><think>a</think>7", {}, 0.0),
    ("wrong-case-tag", "q", "<THINK>a</THINK>7", {}, 0.0),
    ("unclosed-bracket-tag", "q", "<think a</think>7", {}, 0.0),
    ("none-response", "q", None, {}, 0.0),
    ("empty-response", "q", "", {}, 0.0),
    # ---------------------------------------------------------------- prompt opened the think block
    ("prompt-opened", "Assistant: <think>", "3+4=7</think> 7", {}, 1.0),
    ("prompt-opened-newline", "Assistant: <think>\n", "\n3+4=7\n</think>\n7", {}, 1.0),
    ("prompt-opened-response-repeats-tag", "Assistant: <think>", "<think>3+4=7</think>7", {}, 1.0),
    ("prompt-opened-no-close", "Assistant: <think>", "3+4=7, so 7", {}, 0.0),
    ("prompt-opened-no-answer", "Assistant: <think>", "3+4=7</think>", {}, 0.0),
    # ---------------------------------------------------------------- answer tags
    ("answer-tag-ok", "q", "<think>x</think><answer>7</answer>", {"answer_tag": "answer"}, 1.0),
    ("answer-tag-ok-newlines", "q", "<think>\nx\n</think>\n<answer>\n7\n</answer>\n", {"answer_tag": "answer"}, 1.0),
    ("answer-tag-missing", "q", "<think>x</think>7", {"answer_tag": "answer"}, 0.0),
    ("answer-tag-unclosed", "q", "<think>x</think><answer>7", {"answer_tag": "answer"}, 0.0),
    ("answer-tag-empty", "q", "<think>x</think><answer> </answer>", {"answer_tag": "answer"}, 0.0),
    ("answer-tag-text-before", "q", "<think>x</think>So <answer>7</answer>", {"answer_tag": "answer"}, 0.0),
    ("answer-tag-text-after", "q", "<think>x</think><answer>7</answer> bye", {"answer_tag": "answer"}, 0.0),
    ("answer-tag-text-after-allowed", "q", "<think>x</think><answer>7</answer> bye",
     {"answer_tag": "answer", "allow_trailing_text": True}, 1.0),
    ("answer-tag-twice", "q", "<think>x</think><answer>7</answer><answer>8</answer>", {"answer_tag": "answer"}, 0.0),
    ("answer-tag-inside-think-only", "q", "<think><answer>7</answer></think>", {"answer_tag": "answer"}, 0.0),
    ("answer-tag-think-inside-answer", "q", "<think>x</think><answer><think>7</answer>", {"answer_tag": "answer"}, 0.0),
    # ---------------------------------------------------------------- custom tags
    ("custom-think-tag", "q", "<reasoning>x</reasoning>7", {"think_tag": "reasoning"}, 1.0),
    ("custom-think-tag-default-fails", "q", "<reasoning>x</reasoning>7", {}, 0.0),
    ("custom-both-tags", "q", "<reasoning>x</reasoning><solution>7</solution>",
     {"think_tag": "reasoning", "answer_tag": "solution"}, 1.0),
    # ---------------------------------------------------------------- custom regex
    ("pattern-open-r1", "q", "<think>\nx\n</think>\n<answer>\n7\n</answer>",
     {"pattern": r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$"}, 1.0),
    ("pattern-open-r1-no-newlines", "q", "<think>x</think><answer>7</answer>",
     {"pattern": r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$"}, 0.0),
    ("pattern-partial-mode-is-binary", "q", "nope",
     {"pattern": r"<think>.*</think>.+", "mode": "partial"}, 0.0),
    # ---------------------------------------------------------------- partial credit
    ("partial-full", "q", "<think>x</think>7", {"mode": "partial"}, 1.0),
    ("partial-nothing", "q", "just 7", {"mode": "partial"}, 0.0),
    ("partial-no-answer", "q", "<think>x</think>", {"mode": "partial"}, 0.75),
    ("partial-no-open", "q", "x</think>7", {"mode": "partial"}, 0.75),
    ("partial-unclosed", "q", "<think>x and 7", {"mode": "partial"}, 0.25),
    ("partial-empty-reasoning", "q", "<think></think>7", {"mode": "partial"}, 0.75),
    ("partial-no-reasoning-check", "q", "<think></think>", {"mode": "partial", "require_reasoning": False}, 2 / 3),
    ("partial-answer-tag-missing", "q", "<think>x</think>7", {"mode": "partial", "answer_tag": "answer"}, 0.75),
]


@pytest.mark.parametrize("prompt, response, kwargs, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_format_case(prompt, response, kwargs, expected):
    score = compute_score(prompt, response, None, **kwargs)
    assert isinstance(score, float)
    assert score == pytest.approx(expected)


def test_case_ids_unique():
    assert len({c[0] for c in CASES}) == len(CASES)


def test_return_dict_names_failed_checks():
    out = compute_score("q", "<think></think>", None, return_dict=True)
    assert out["score"] == 0.0
    assert out["checks"] == {"think_open": True, "think_close": True, "reasoning": False, "answer": False}
    assert out["reason"] == "failed: reasoning, answer"
    ok = compute_score("q", "<think>x</think>7", None, return_dict=True)
    assert ok == {"score": 1.0, "reason": "ok", "checks": {"think_open": True, "think_close": True,
                                                           "reasoning": True, "answer": True}}


def test_ground_truth_and_extra_are_ignored():
    assert compute_score("q", "<think>x</think>7", "8", data_source="gsm8k") == 1.0


def test_bad_mode_is_an_error():
    with pytest.raises(ValueError, match="mode"):
        compute_score("q", "<think>x</think>7", None, mode="lenient")


def test_through_the_manager_spec():
    from rlengine.rewards import resolve_fn

    f = resolve_fn("reward_fns/format.py:compute_score")
    assert f("q", "<think>x</think>7", None) == 1.0
    assert f("q", "7", None) == 0.0


def test_long_response_is_fast():
    import time

    response = "<think>" + "blah " * 200000 + "</think>" + "7 " * 100000
    t0 = time.perf_counter()
    assert compute_score("q", response, None) == 1.0
    assert time.perf_counter() - t0 < 1.0
