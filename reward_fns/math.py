"""Math answer verifier: extract the final answer, then decide equivalence with the ground truth.

Extraction order: the last \\boxed{...} (nested braces kept), GSM8K's "#### x", "the answer is x",
and (when `fallback_last_number`) the last number in the response.  Plain numbers are compared
exactly as rationals; anything else goes to math-verify (LaTeX and expressions, symbolic equality).
"""
from __future__ import annotations

import re
from fractions import Fraction

_NUM = r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+"
_HASH_RE = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*[:=]?\s*\$?([^\n$]+?)\$?\s*(?:\.\s|\.$|$|\n)", re.IGNORECASE)
_NUM_RE = re.compile(_NUM)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces balanced."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = text.find("{", idx)
    if i < 0:
        m = re.match(r"\\boxed\s+(\S+)", text[idx:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def extract_answer(response: str, fallback_last_number: bool = True) -> tuple[str | None, str]:
    """Returns (answer, how it was found)."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed.strip(), "boxed"
    m = _HASH_RE.findall(response)
    if m:
        return m[-1].strip(), "####"
    m = _ANSWER_IS_RE.findall(response)
    if m:
        return m[-1].strip(), "answer is"
    if fallback_last_number:
        nums = _NUM_RE.findall(response)
        if nums:
            return nums[-1], "last number"
    return None, "none"


def _as_number(s: str) -> Fraction | None:
    s = s.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    if not re.fullmatch(_NUM, s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def is_equivalent(answer: str, ground_truth: str) -> bool:
    a, g = _as_number(answer), _as_number(str(ground_truth))
    if a is not None and g is not None:
        return a == g
    from math_verify import parse, verify

    gold = parse(f"${ground_truth}$") or parse(str(ground_truth))
    pred = parse(f"${answer}$") or parse(answer)
    return bool(gold) and bool(pred) and bool(verify(gold, pred))


def compute_score(prompt: str, response: str, ground_truth, fallback_last_number: bool = True, **extra) -> dict:
    answer, how = extract_answer(response, fallback_last_number)
    if answer is None:
        return {"score": 0.0, "extracted": None, "reason": "no answer found"}
    ok = is_equivalent(answer, str(ground_truth))
    return {"score": 1.0 if ok else 0.0, "extracted": answer, "reason": f"{how}: {'match' if ok else 'mismatch'}"}
