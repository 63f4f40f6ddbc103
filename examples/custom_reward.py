"""A worked example of a custom reward function (see README, "Reward functions").

Plug it in next to the built-in verifier:

    python -m rlengine.main recipe=grpo_tiny \
        "reward.fns=[{fn:'reward_fns/math.py:compute_score',weight:1.0},{fn:'examples/custom_reward.py:concise_number',weight:0.2,kwargs:{max_chars:6}}]"

The signature is fixed: (prompt, response, ground_truth, **extra); `extra` carries the dataset
row's other fields and the entry's `kwargs`. Return a float, or a dict with "score" plus anything
you want to see in diagnostics. Raising is fine: the call scores reward.error_score and is counted
in reward/errors; it never stops the run.
"""
import re


def concise_number(prompt: str, response: str, ground_truth, max_chars: int = 8, **extra) -> dict:
    """1.0 for a response that is just a number of at most `max_chars` characters; partial credit
    for the share of the response that is digits. Dense, so it also shapes a random model."""
    text = response.strip()
    digits = sum(ch.isdigit() for ch in text)
    if re.fullmatch(r"-?\d+(\.\d+)?", text) and len(text) <= max_chars:
        return {"score": 1.0, "reason": "bare number"}
    return {"score": 0.5 * digits / max(1, len(text)), "reason": f"{digits} digits in {len(text)} chars"}
