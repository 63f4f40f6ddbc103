"""Format rewards for R1-style recipes: reasoning in <think>...</think>, then the answer.

    compute_score(prompt, response, ground_truth=None, *, think_tag="think", answer_tag=None,
                  require_reasoning=True, allow_trailing_text=False, pattern=None, mode="strict",
                  return_dict=False, **extra) -> float | dict

The ground truth is ignored: only the shape of the response is scored.  Surrounding whitespace is
ignored; tags are matched exactly (case-sensitive).

Checks (mode="strict" scores 1.0 when all pass, else 0.0; mode="partial" scores the fraction that
pass, so a fully formatted response still scores 1.0):

1. "think_open":  the response starts with <think>, and it holds exactly one <think>.
2. "think_close": it holds exactly one </think> (after the <think>, if there is one).
3. "reasoning":   the text before </think> (after <think>) is not blank (skipped with
   require_reasoning=False).
4. "answer":      a non-blank answer follows </think>.  With answer_tag="answer" it must be exactly
   one <answer>...</answer> right after </think> (whitespace between them allowed), with a
   non-blank inside and nothing after </answer> (unless allow_trailing_text=True).

If the prompt already ends with <think> (R1-Zero templates open the tag in the prompt), the
response is read as continuing it: "reasoning</think>answer" is well formed there.

pattern: a regex (re.DOTALL) the stripped response must fullmatch; it replaces the checks above and
scores 1.0 / 0.0 in either mode.

return_dict=True returns {"score", "reason", "checks": {name: bool}} instead of the float.
"""
from __future__ import annotations

import re


def _checks(response: str, think_tag: str, answer_tag: str | None, require_reasoning: bool,
            allow_trailing_text: bool) -> dict[str, bool]:
    open_, close = f"<{think_tag}>", f"</{think_tag}>"
    text = response.strip()
    i, j = text.find(open_), text.find(close)
    checks = {"think_open": text.startswith(open_) and text.count(open_) == 1,
              "think_close": text.count(close) == 1 and (i < 0 or i < j)}
    closed = checks["think_close"]
    if require_reasoning:
        start = i + len(open_) if 0 <= i < j else 0
        checks["reasoning"] = closed and bool(text[start:j].strip())
    after = text[j + len(close):] if closed else ""
    if answer_tag is None:
        checks["answer"] = closed and bool(after.strip()) and open_ not in after
    else:
        a_open, a_close = f"<{answer_tag}>", f"</{answer_tag}>"
        tail = after.strip()
        ok = closed and tail.startswith(a_open) and tail.count(a_open) == 1 and tail.count(a_close) == 1
        if ok:
            k = tail.find(a_close)
            inner = tail[len(a_open):k]
            ok = k > 0 and bool(inner.strip()) and (allow_trailing_text or not tail[k + len(a_close):].strip())
            ok = ok and open_ not in tail and close not in tail
        checks["answer"] = ok
    return checks


def compute_score(prompt: str, response: str, ground_truth=None, *, think_tag: str = "think",
                  answer_tag: str | None = None, require_reasoning: bool = True, allow_trailing_text: bool = False,
                  pattern: str | None = None, mode: str = "strict", return_dict: bool = False, **extra):
    if mode not in ("strict", "partial"):
        raise ValueError(f"mode must be 'strict' or 'partial', not {mode!r}")
    response = "" if response is None else str(response)
    if pattern is not None:
        ok = re.fullmatch(pattern, response.strip(), re.DOTALL) is not None
        score, checks = float(ok), {"pattern": ok}
    else:
        open_ = f"<{think_tag}>"
        if str(prompt or "").rstrip().endswith(open_) and not response.lstrip().startswith(open_):
            response = open_ + response  # the prompt opened the think block
        checks = _checks(response, think_tag, answer_tag, require_reasoning, allow_trailing_text)
        passed = sum(checks.values())
        score = passed / len(checks) if mode == "partial" else float(passed == len(checks))
    if not return_dict:
        return score
    failed = [k for k, v in checks.items() if not v]
    return {"score": score, "reason": "ok" if not failed else "failed: " + ", ".join(failed), "checks": checks}
