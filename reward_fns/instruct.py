"""Verifiers for the tiny chat world's instruction and identity tasks (rlengine/tiny_chat.py).

    exact(prompt, response, ground_truth, **extra) -> {"score": 1.0 | 0.0, "reason": str}
        The assistant's turn (the response up to its first <|im_end|>, <|endoftext|> or a new
        <|im_start|>), stripped, equals the ground truth, ignoring case and trailing punctuation.
    states_name(prompt, response, ground_truth, **extra) -> {"score": 1.0 | 0.0, "reason": str}
        The assistant's turn names ground_truth as a whole word (case-insensitive).

Neither raises: a missing or non-string response or ground truth scores 0.0 with the reason.
"""
from __future__ import annotations

import re

END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
_TRAILING = ".!?,;: \t\n"


def turn_text(response) -> str:
    """The first assistant turn of a decoded response (special tokens kept in the decode)."""
    text = response if isinstance(response, str) else ""
    cut = min((i for i in (text.find(t) for t in END_OF_TURN) if i >= 0), default=len(text))
    return text[:cut].strip()


def _norm(text: str) -> str:
    return " ".join(text.strip().rstrip(_TRAILING).split()).lower()


def exact(prompt, response, ground_truth, **extra) -> dict:
    if not isinstance(response, str):
        return {"score": 0.0, "reason": "no response"}
    if ground_truth is None or isinstance(ground_truth, (list, dict, bool)):
        return {"score": 0.0, "reason": f"unusable ground truth {ground_truth!r}"}
    got, want = _norm(turn_text(response)), _norm(str(ground_truth))
    if not got:
        return {"score": 0.0, "reason": "empty turn"}
    if got == want:
        return {"score": 1.0, "reason": "exact match"}
    return {"score": 0.0, "reason": f"got {got!r}, want {want!r}"}


def states_name(prompt, response, ground_truth, **extra) -> dict:
    if not isinstance(response, str):
        return {"score": 0.0, "reason": "no response"}
    name = ground_truth.strip() if isinstance(ground_truth, str) else ""
    if not name:
        return {"score": 0.0, "reason": f"unusable ground truth {ground_truth!r}"}
    turn = turn_text(response)
    # \w-aware boundaries so "Novak" or "Supernova" do not count as stating "Nova".
    if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", turn, flags=re.IGNORECASE):
        return {"score": 1.0, "reason": f"states {name}"}
    return {"score": 0.0, "reason": f"{name} not stated"}
