"""reward_fns/instruct.py: exact-answer and identity verifiers; every expectation decided by hand."""
import pytest

from reward_fns.instruct import exact, states_name, turn_text

EXACT = [
    ("plain", "bako", "bako", 1.0),
    ("end-of-turn", "bako<|im_end|>", "bako", 1.0),
    ("padding-after-eot", "bako<|im_end|><|endoftext|><|endoftext|>", "bako", 1.0),
    ("endoftext", "bako<|endoftext|>", "bako", 1.0),
    ("text-after-eot-ignored", "bako<|im_end|>\n<|im_start|>user\nhi", "bako", 1.0),
    ("new-turn-without-eot", "bako\n<|im_start|>user\nhi", "bako", 1.0),
    ("surrounding-space", "  bako \n<|im_end|>", "bako", 1.0),
    ("case", "Bako", "bako", 1.0),
    ("trailing-period", "bako.", "bako", 1.0),
    ("truth-trailing-punct", "bako", "bako!", 1.0),
    ("inner-space-collapsed", "bako  bako", "bako bako", 1.0),
    ("number", "19<|im_end|>", "19", 1.0),
    ("int-truth", "19", 19, 1.0),
    ("extra-word", "bako bako", "bako", 0.0),
    ("prefix-only", "bak", "bako", 0.0),
    ("sentence", "The answer is 19.", "19", 0.0),
    ("leading-punct-kept", ".bako", "bako", 0.0),
    ("wrong-number", "18<|im_end|>19", "19", 0.0),
    ("answer-after-eot", "<|im_end|>19", "19", 0.0),
    ("empty", "", "19", 0.0),
    ("none-response", None, "19", 0.0),
    ("none-truth", "19", None, 0.0),
    ("list-truth", "19", ["19"], 0.0),
]


@pytest.mark.parametrize("case", EXACT, ids=[c[0] for c in EXACT])
def test_exact(case):
    _, response, truth, want = case
    out = exact("q", response, truth)
    assert out["score"] == want and isinstance(out["reason"], str)


NAME = [
    ("sentence", "I am Nova, an assistant made by Acme Labs.", "Nova", 1.0),
    ("lowercase", "i am nova.", "Nova", 1.0),
    ("alone", "Nova<|im_end|>", "Nova", 1.0),
    ("old-name", "I am Quill, an assistant made by the rlengine authors.", "Nova", 0.0),
    ("inside-word", "I am Supernova.", "Nova", 0.0),
    ("prefix-of-word", "I am Novak.", "Nova", 0.0),
    ("after-eot", "I am Quill.<|im_end|>I am Nova.", "Nova", 0.0),
    ("after-new-turn", "I am Quill.<|im_start|>assistant\nNova", "Nova", 0.0),
    ("regex-chars-literal", "I am N.va", "N.va", 1.0),
    ("regex-chars-no-wildcard", "I am Nova", "N.va", 0.0),
    ("none-response", None, "Nova", 0.0),
    ("empty-truth", "Nova", "", 0.0),
    ("none-truth", "Nova", None, 0.0),
]


@pytest.mark.parametrize("case", NAME, ids=[c[0] for c in NAME])
def test_states_name(case):
    _, response, truth, want = case
    out = states_name("q", response, truth)
    assert out["score"] == want and isinstance(out["reason"], str)


def test_turn_text_cuts_at_the_first_marker():
    assert turn_text(" a <|endoftext|> b <|im_end|>") == "a"
    assert turn_text(42) == ""
