"""Answer extraction for the math verifier: `extract_answer` and `last_boxed` (the rules are in
reward_fns/math.py's docstring)."""
from __future__ import annotations

import re

from reward_fns.math_numbers import _parse_number

# A number as written in prose: "1,234.5", "42", "-3", ".5", "3/4" (the fallback keeps the fraction).
# No sign after a word character or bracket, so "3-5" gives 5, not -5.
_NUM = (r"(?:(?<![\w)\]}.])[-+−])?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?"
        r"(?:[eE][-+]?\d+\b|[ \t]*(?:×|\\times|\\cdot|x|\*)[ \t]*10[ \t]*\^[ \t]*\{?[-+]?\d+\}?)?(?:/\d+)?"
        r"|(?<![\w.])[-+]?\.\d+")
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_MATHLIKE_START_RE = re.compile(r"\s*(?:[-+−$\\(\[{.\d]|[A-Za-z]\s*=|[A-Ea-e]\W*$|(?:yes|no|true|false)\W*$)", re.I)
_ANSWER_RE = re.compile(
    r"\banswer\b(?:\s*\*\*|\s*\*)?\s*(?:(?:is|was|would\s+be|should\s+be|will\s+be|=|:)\s*(?:\*\*|\*)?\s*:?)+",
    re.IGNORECASE)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
# What may follow a stated answer to replace it: "... actually 6", "Wait, no, it's 6."
_CORRECTION_RE = re.compile(
    r"^[\s.,;:!…-]*(?:\b(?:actually|wait|no|nope|sorry|oops|correction|rather|hmm|i\s+mean|scratch\s+that|"
    r"make\s+that)\b[\s.,;:!…—-]*)+(?:(?:it'?s|it\s+is|that'?s|that\s+is|the\s+(?:final\s+|correct\s+|right\s+)?"
    r"answer\s+(?:is|should\s+be)|(?:it\s+|that\s+)?should\s+be|is)\b\s*[:=]?\s*)?", re.IGNORECASE)
# Clause ends after a stated answer (outside brackets): words that start an explanation.
_STOP_WORDS_RE = re.compile(
    r"\s+(?:since|because|as|which|so|given|where|when|for|from|thus|hence|therefore|but|then|if|i\.e\.|"
    r"e\.g\.|not)\b|\s+\((?=[A-Za-z]{2,})", re.IGNORECASE)


# Words between "answer is" and the answer itself.
_FILLER_RE = re.compile(r"(?:(?:approximately|approx\.?|about|around|roughly|exactly|equal\s+to|just|therefore|thus|"
                        r"then|so|simply|clearly|now)\s+)+", re.IGNORECASE)


# ---------------------------------------------------------------------------------------- extraction

def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces balanced.

    None when there is no box or the last one is never closed; "\\boxed 5" gives "5"."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    i = m.end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        mm = re.match(r"[ \t]+([^\s$]+)", text[m.end():])
        return mm.group(1) if mm else None
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
            continue  # "\{" is a literal brace; it is balanced by its "\}" anyway
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def _looks_like_prose(s: str) -> bool:
    """True for "$12 and Bob paid $": the text between two dollar signs is words, not LaTeX."""
    t = re.sub(r"\\[A-Za-z]+(?:\{[^{}]*\})?", " ", s)
    return bool(re.search(r"[A-Za-z]{3,}[^A-Za-z]+[A-Za-z]{3,}", t)) or bool(re.search(r"[A-Za-z]{4,}", t) and
                                                                            re.match(r"\s*\d", s) is None)


def _clause_end(s: str) -> int:
    """Where the leading expression of s ends: a sentence end, newline, "; ", "...", ", since",
    " because" ... at bracket depth 0."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == "\n":
            return i
        elif depth == 0:
            nxt = s[i + 1] if i + 1 < len(s) else ""
            if c in ".!?" and (nxt == "" or nxt.isspace() or nxt in "*\"'."):
                return i
            if c == ";":
                return i
            if c == "," and re.match(r",\s*[A-Za-z]{2,}\b", s[i:i + 40]):
                return i
            if c.isspace() and _STOP_WORDS_RE.match(s, i):
                return i
    return len(s)


def _strip_wrapping(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("*").strip()
        s = re.sub(r"^\\textbf\{(.*)\}$", r"\1", s, flags=re.S)
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'`":
            s = s[1:-1]
        s = s.rstrip(".,;:?").strip()  # not "!": 5! is a factorial
        if s == before:
            break
    return s


def _take_expression(tail: str) -> tuple[str, int]:
    """The expression a stated answer begins with, and where it ends in tail: a whole $...$ /
    \\(...\\) / \\[...\\] span (with a unit word after it), else the leading clause (a "$" before a
    number with no LaTeX partner is a price)."""
    s = tail[:600]
    start = len(s) - len(s.lstrip(" \t*:="))
    m = _FILLER_RE.match(s, start)
    if m:
        start = m.end()
    for open_, close in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if s.startswith(open_, start):
            j = s.find(close, start + len(open_))
            while open_ == "$" and j > 0 and s[j - 1] == "\\":  # "\$" inside math is a dollar sign
                j = s.find(close, j + 1)
            if j > 0:
                inner = s[start + len(open_):j]
                if open_ != "$" or ("\n" not in inner and not _looks_like_prose(inner)):
                    end = j + len(close)
                    # "$5$ dollars", "$50$%", "$5$ cm": keep a unit word or percent sign after the span
                    mu = re.match(r"[ \t]*(%|percent\b|[A-Za-z]+(?:\^\d)?(?:/[A-Za-z]+)?)", s[end:])
                    if mu and (mu.group(1) == "%" or mu.group(1).lower() == "percent" or _parse_number(
                            "1 " + mu.group(1)) is not None) and not _STOP_WORDS_RE.match(" " + mu.group(1)):
                        inner += " " + mu.group(1)
                        end += mu.end()
                    return _strip_wrapping(inner), end
            if open_ == "$":
                start += 1  # a price: "$1,234.50"
            break
    end = start + _clause_end(s[start:])
    return _strip_wrapping(s[start:end]), end


def _correction(after: str) -> str | None:
    """A self-correction right after a stated answer: "... actually 6", "Wait, no, it's 6."."""
    m = _CORRECTION_RE.match(after[:300])
    if not m or not re.search(r"[A-Za-z]", m.group(0)):
        return None
    cand, _ = _take_expression(after[m.end():])
    # Only a bare answer ("6", "$\\frac{1}{2}$", "6 cm"), not a check ("12 / 3 = 4") or a new sentence
    # ("3 more apples arrived").
    if not cand or "=" in cand or len(cand) > 60 or not re.match(r"[-+−$\\(\[{.\d]", cand):
        return None
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", " ", cand))
    return cand if re.search(r"\d|\\", cand) and len(words) <= 1 else None


def _whole_response_answer(response: str) -> str | None:
    """A response that is nothing but one expression: "$\\frac{1}{2}$", "\\(2x+2\\)", "(1, 2]", "x = 5"."""
    text = response.strip()
    if not text or len(text) > 200:
        return None
    for o, c in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if len(text) > len(o) + len(c) and text.startswith(o) and text.endswith(c) \
                and o not in text[len(o):-len(c)] and c not in text[len(o):-len(c)]:
            inner = text[len(o):-len(c)].strip()
            return _strip_wrapping(inner) or None
    if "\n" in text or "$" in text:
        return None
    bare = re.sub(r"\\[A-Za-z]+", " ", text)  # LaTeX commands are not words
    if re.search(r"[A-Za-z]{2,}", bare) or not re.search(r"[\dA-Za-z]", bare):
        return None
    return _strip_wrapping(text) or None


_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def extract_answer(response: str, fallback_last_number: bool = True) -> tuple[str | None, str]:
    """Returns (answer, how it was found): how is "boxed", "####", "answer is", "answer tag",
    "whole response", "last number"; or, with answer None, "unclosed boxed", "nothing after </think>"
    or "none"."""
    response = str(response)
    if "</think>" in response:  # R1-style: the reasoning is not the answer
        response = response.rsplit("</think>", 1)[1]
        if not response.strip():
            return None, "nothing after </think>"
    tags = _ANSWER_TAG_RE.findall(response)
    if tags:
        answer, how = _extract(tags[-1], fallback_last_number=False)
        if answer is None and how == "none":
            return _strip_wrapping(tags[-1]), "answer tag"
        return answer, how
    return _extract(response, fallback_last_number)


def _extract(response: str, fallback_last_number: bool) -> tuple[str | None, str]:
    if _BOX_RE.search(response):
        boxed = last_boxed(response)
        if boxed is None:
            return None, "unclosed boxed"
        return _strip_wrapping(boxed) if boxed.strip() not in ("", "{}") else "", "boxed"
    # "#### 72"; a markdown heading ("#### Step 1: ...") is not an answer line.
    m = [h for h in _HASH_RE.findall(response) if _MATHLIKE_START_RE.match(h)]
    if m:
        return _strip_wrapping(m[-1]), "####"
    last = None
    for mm in _ANSWER_RE.finditer(response):
        if not re.match(r"\s*not\b", response[mm.end():mm.end() + 10], re.I):
            last = mm
    if last is not None:
        after = response[last.end():]
        ans, end = _take_expression(after)
        # "the answer is: the number of apples, which is ..." states no answer; fall through.
        if ans and not re.fullmatch(r"[A-Za-z']+(?:\s+[A-Za-z']+){2,}", ans):
            corrected = _correction(after[end:])
            return (corrected if corrected is not None else ans), "answer is"
    if fallback_last_number:
        whole = _whole_response_answer(response)
        if whole is not None:
            return whole, "whole response"
        nm = None
        for nm in _NUM_RE.finditer(response):
            pass
        if nm is not None:
            return nm.group(0).replace("−", "-"), "last number"
    return None, "none"
