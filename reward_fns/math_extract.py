"""Answer extraction for the math verifier: `extract_answer`, `last_boxed`, `boxed_parts` (the boxes
of a multi-part answer) and `strip_chat_tokens` (the rules are in reward_fns/math.py's docstring)."""
from __future__ import annotations

import re

from reward_fns.math_numbers import _parse_number

# A number as written in prose: "1,234.5", "42", "-3", ".5", "3/4" (the fallback keeps the fraction),
# "2,74" (a decimal comma: two digits after it), thousands in LaTeX spacing ("32,\\! 349", "1{,}000"),
# with a percent sign ("25%") or a ratio / time ("3:2", "10:30") kept.  No sign after a word
# character or bracket, so "3-5" gives 5, not -5.
_NUM = (r"(?<![\d,(\[])\d+,\d{2}(?![\d,])|"  # a decimal comma, "2,74 $"
        r"(?:(?<![\w)\]}.])[-+−])?(?:\d{1,3}(?:(?:,|\{,\}|,\\![ ]?|\\,)\d{3})+(?![\d])|\d+)(?:\.\d+)?"
        r"(?:[eE][-+]?\d+\b|[ \t]*(?:×|\\times|\\cdot|x|\*)[ \t]*10[ \t]*\^[ \t]*\{?[-+]?\d+\}?)?"
        r"(?:/\d+|:\d+(?!\d|\.\d))?(?:[ \t]?\\?%)?|(?<![\w.])[-+]?\.\d+(?:[ \t]?\\?%)?")
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_MATHLIKE_START_RE = re.compile(r"\s*(?:[-+−$\\(\[{.\d]|[A-Za-z]\s*=|[A-Ea-e]\W*$|(?:yes|no|true|false)\W*$)", re.I)
_ANSWER_RE = re.compile(
    r"\b(?:answers?|option|choice)\b(?:\s*\*\*|\s*\*)?\s*"
    r"(?:(?:is|are|was|were|would\s+be|should\s+be|will\s+be|=|:)\s*(?:\*\*|\*)?\s*:?)+",
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

def _box_at(text: str, m) -> tuple[int, str | None]:
    """(end, content) of the box whose command is matched by m; content None if it is never closed."""
    i = m.end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        mm = re.match(r"[ \t]+([^\s$]+)", text[m.end():])
        return (m.end() + mm.end(), mm.group(1)) if mm else (m.end(), None)
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
                return j + 1, text[i + 1:j]
    return len(text), None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces balanced.

    None when there is no box or the last one is never closed; "\\boxed 5" gives "5"."""
    matches = list(_BOX_RE.finditer(text))
    return _box_at(text, matches[-1])[1] if matches else None


def boxed_parts(text: str) -> list[str]:
    """The last box and the boxes just before it that belong to the same statement ("$x = \\boxed{2}$
    and $y = \\boxed{3}$", "(a) \\boxed{5} (b) \\boxed{7}"): each gap under 100 characters.  One item
    (or none) for a single answer; the parts of a multi-part answer otherwise."""
    text = strip_chat_tokens(str(text))
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    boxes, pos = [], 0
    for m in _BOX_RE.finditer(text):
        if m.start() < pos:
            continue  # a box nested in the previous one
        end, content = _box_at(text, m)
        boxes.append((m.start(), end, content))
        pos = end
    if not boxes or boxes[-1][2] is None:
        return []
    parts = [boxes[-1]]
    for b in reversed(boxes[:-1]):
        if b[2] is None or parts[0][0] - b[1] > 100 or "\n\n" in text[b[1]:parts[0][0]]:
            break
        parts.insert(0, b)
    return [_strip_wrapping(p[2]) for p in parts]


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
        if s.startswith("\\textbf"):
            s = re.sub(r"^\\textbf\{(.*)\}$", r"\1", s, flags=re.S)
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'`":
            s = s[1:-1]
        if not s.endswith(("...", "…", "dots")):  # "1, 2, 3, ..." is not "1, 2, 3"
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
# Chat-template tokens.  An end-of-turn token ends the response (what follows is a hallucinated next
# turn); any other one is dropped.
_END_TOKEN_RE = re.compile(r"<\|(?:im_end|im_start|eot_id|eom_id|endoftext|end|start_header_id|user|assistant)\|>|"
                           r"</s>|<eos>|<end_of_turn>|<｜end▁of▁sentence｜>|<\|end_of_text\|>")
_TOKEN_RE = re.compile(r"<\|[A-Za-z_][\w.-]{0,40}\|>|<｜[^｜>]{1,40}｜>|</?s>|<eos>|<pad>|<(?:start|end)_of_turn>")
# A response that does not commit to an answer: no fallback reads a number out of it (looked for in
# its last 400 characters, so that doubts voiced early in a long derivation do not count).
_HEDGE_RE = re.compile(
    r"\b(?:(?:i\s*(?:'m|am)\s+)?not\s+(?:sure|certain)|unsure|i\s+(?:do\s*n[o']?t|don't)\s+know|"
    r"(?:can\s*not|can't|unable\s+to|impossible\s+to)\s+(?:be\s+)?(?:determine|determined|solve|solved)|"
    r"not\s+enough\s+information|insufficient\s+information|i\s+give\s+up)\b", re.IGNORECASE)
# "Final Answer: The final answer is X" (the Minerva / lm-eval prompt's closing line)
_FINAL_ANSWER_RE = re.compile(r"\bfinal\s+answer\b", re.IGNORECASE)
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$([^$\n]+?)(?<!\\)\$", re.S)
_UNIT_AFTER = {"m", "cm", "mm", "km", "g", "kg", "mg", "l", "ml", "s", "h", "hr", "hrs", "min", "ft", "in", "yd",
               "mi", "lb", "lbs", "oz", "mph", "kph", "st", "nd", "rd", "th", "am", "pm"}


def strip_chat_tokens(text: str) -> str:
    """Drop chat special tokens: the response ends at the first end-of-turn token after some text."""
    text = text.lstrip()
    while True:  # tokens the response starts with ("<|im_start|>assistant\n")
        m = _TOKEN_RE.match(text) or _END_TOKEN_RE.match(text)
        if not m:
            break
        text = re.sub(r"^(?:assistant|model)\b[ \t]*\n?", "", text[m.end():].lstrip(), count=1).lstrip()
    m = _END_TOKEN_RE.search(text)
    if m:
        text = text[:m.start()]
    return _TOKEN_RE.sub(" ", text) if "<" in text else text


def extract_answer(response: str, fallback_last_number: bool = True) -> tuple[str | None, str]:
    """Returns (answer, how it was found): how is "boxed", "final answer", "####", "answer is",
    "answer tag", "whole response", "inline math", "last number"; or, with answer None, "unclosed
    boxed", "nothing after </think>", "hedged" or "none"."""
    response = strip_chat_tokens(str(response))
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


def _answer_is(response: str) -> str | None:
    """The expression after the last "answer is" / "answer:" that states one (rule 3)."""
    last = None
    for mm in _ANSWER_RE.finditer(response):
        if not re.match(r"\s*not\b", response[mm.end():mm.end() + 10], re.I):
            last = mm
    if last is None:
        return None
    after = response[last.end():]
    ans, end = _take_expression(after)
    if not ans:
        return None
    if _parse_number(ans) is None:
        # "The volume of $ABCDEFGH$ is 120": a sentence that ends in the answer
        prose = re.sub(r"\$[^$]*\$|\\[A-Za-z]+", " ", ans)
        if len(re.findall(r"[A-Za-z]{3,}", prose)) >= 2:
            m = list(re.finditer(r"\s(?:is|are|was|equals|=)\s+", ans))
            if m:
                ans = _strip_wrapping(ans[m[-1].end():])
                return ans if re.match(r"[-+$\\(\[{.\d]", ans) or _parse_number(ans) is not None else None
        # "the answer is: the number of apples, ..." states no answer
        if re.fullmatch(r"[A-Za-z']+(?:\s+[A-Za-z']+){2,}", ans) or len(re.findall(r"[A-Za-z]{3,}", prose)) >= 3:
            return None
    corrected = _correction(after[end:])
    return corrected if corrected is not None else ans


def _standalone_numbers(text: str):
    """Numbers that stand alone: not digits inside a word ("AZYUK2A", "H2O", "\\frac13", "5x") but with
    a unit glued on ("10kg", "5cm", "3rd") allowed."""
    for m in _NUM_RE.finditer(text):
        before = text[m.start() - 1] if m.start() else ""
        if before.isalpha() or before == "\\":
            continue
        after = re.match(r"[a-z]+", text[m.end():])  # "5x" is not 5 (but "82Q: ..." is a new sentence)
        if after and after.group(0) not in _UNIT_AFTER:
            continue
        yield m


def _last_math_span(response: str) -> tuple[str, int] | None:
    """The last $...$ / $$...$$ / \\(...\\) / \\[...\\] span that holds more than a variable name, with
    where it ends."""
    last = None
    for m in _MATH_SPAN_RE.finditer(response):
        inner = next(g for g in m.groups() if g is not None).strip()
        if re.fullmatch(r"[A-Za-z]{1,3}(?:\([A-Za-z]\))?|[A-Za-z]_\{?\w+\}?", inner) or _looks_like_prose(inner):
            continue
        last = (inner, m.end())
    return last


def _extract(response: str, fallback_last_number: bool) -> tuple[str | None, str]:
    if _BOX_RE.search(response):
        end, boxed = _box_at(response, list(_BOX_RE.finditer(response))[-1])
        if boxed is None:
            return None, "unclosed boxed"
        # "... \\boxed{255} ... Final Answer: The final answer is $10,455$.": the closing line wins
        tail = response[end:]
        if _FINAL_ANSWER_RE.search(tail):
            stated = _answer_is(tail)
            # an expression, not words ("The final answer is boxed above.")
            if stated and len(re.findall(r"[A-Za-z]{3,}", re.sub(r"\\[A-Za-z]+", " ", stated))) < 2:
                return stated, "final answer"
        return _strip_wrapping(boxed) if boxed.strip() not in ("", "{}") else "", "boxed"
    # "#### 72"; a markdown heading ("#### Step 1: ...") is not an answer line.
    m = [h for h in _HASH_RE.findall(response) if _MATHLIKE_START_RE.match(h)]
    if m:
        return _strip_wrapping(m[-1]), "####"
    stated = _answer_is(response)
    if stated:
        return stated, "answer is"
    if fallback_last_number:
        if _HEDGE_RE.search(response[-400:]):
            return None, "hedged"
        whole = _whole_response_answer(response)
        if whole is not None:
            return whole, "whole response"
        span = _last_math_span(response)
        nm = prev = None
        for m in _standalone_numbers(response):
            prev, nm = nm, m
        # "$\\frac{5}{36}$, which is about 0.139": an approximation of what precedes it is not the answer
        if nm is not None and (span is not None and span[1] <= nm.start() or prev is not None) \
                and _APPROX_GAP_RE.fullmatch(response[max(span[1] if span and span[1] <= nm.start() else 0,
                                                          prev.end() if prev else 0):nm.start()]):
            nm = prev if prev is not None and (span is None or prev.start() >= span[1]) else None
        # LaTeX stated inline is read as LaTeX, unless a plain number comes after it
        if span is not None and (nm is None or nm.start() < span[1]):
            return _strip_wrapping(span[0]), "inline math"
        if nm is not None:
            return nm.group(0).replace("−", "-"), "last number"
    return None, "none"


# What separates an exact answer from an approximation of it: ", which is about", " (approximately",
# " \\approx", " or roughly", " minutes, about" (a unit word or two may come first).
_APPROX_GAP_RE = re.compile(r"[$)\s]*(?:[A-Za-z]+\s*){0,2}(?:(?:[,;(]|\bor\b)\s*"
                            r"(?:(?:which|that)\s+is\s+|or\s+|i\.e\.,?\s*)?"
                            r"(?:about|approximately|approx\.?|roughly|around|nearly|almost)\b|\\approx|≈|~)"
                            r"\s*[$(]?\s*", re.IGNORECASE)
# The list a response ends with: "the numbers are 3 and 4.", "the solutions are $x=2$ and $x=-5$."
_ITEM = r"(?:\$[^$\n]{1,80}\$|\\\([^\n]{1,80}?\\\)|(?<![\w.])[-+−]?\d+(?:\.\d+)?(?:/\d+)?(?!\w|\.\d))"
_TRAILING_LIST_RE = re.compile(_ITEM + r"(?:(?:\s*,\s*(?:and|or)\s+|\s*,\s*|\s+(?:and|or)\s+)" + _ITEM + r")+"
                               r"\s*[.!]?\s*$", re.IGNORECASE)


def trailing_list(response: str) -> list[str]:
    """The items of the list a response ends with ("..., the numbers are 3 and 4."), or [] (for a
    multi-part reference, in place of the last-number fallback)."""
    text = strip_chat_tokens(str(response))[-600:].rstrip()
    m = _TRAILING_LIST_RE.search(text)
    if not m:
        return []
    items = re.findall(_ITEM, m.group(0))
    return [_strip_wrapping(i.strip("$").removeprefix("\\(").removesuffix("\\)")) for i in items]
