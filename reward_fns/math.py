"""Math answer verifier: extract the final answer, then decide equivalence with the ground truth.

    compute_score(prompt, response, ground_truth, fallback_last_number=True, **extra)
        -> {"score": 1.0 | 0.0, "extracted": str | None, "reason": str}

ground_truth: the answer string (or a number), a GSM8K solution ending in "#### 72", a MATH solution
with a ``\\boxed{}`` answer (see `gold_answer`), or a list of acceptable answers.

It never raises: any internal error scores 0.0 with the error in `reason` (the one exception is the
reward manager's own per-call timeout, which is let through so that it is counted as a timeout).

Extraction (first rule that applies wins; `extract_answer` returns (answer, how)).  R1-style
responses: only the text after the last ``</think>`` is searched (nothing there: no answer), and if
it holds ``<answer>...</answer>`` the last such block is searched with rules 1-3, else its whole
content is the answer ("answer tag").

1. "boxed": the content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced;
   ``\\boxed 5`` also accepted).  The box wins over anything the text says, and with several boxes the
   last one is the answer, even if an earlier box holds the right one.  An empty box gives "" (score
   0); a last box that is never closed (a truncated response) gives no answer (score 0).
2. "####": the text after the last GSM8K ``#### `` marker, up to the end of that line (a markdown
   heading such as "#### Step 1: ..." is not an answer line and is skipped).
3. "answer is": the expression after the last "answer is" / "answer:" / "answer =" (also "final
   answer", "answer would/should/will be", markdown ``**Answer:**``), taken up to the end of its
   clause (sentence end, newline, ", since", " because", ...), so "The answer is 7, since 3+4=7"
   gives "7".  ``$...$``, ``\\(...\\)``, ``\\[...\\]`` are taken whole; ``$12.50`` is a price.  A
   self-correction right after it wins: "The answer is 5... actually 6" gives "6".  "answer is not
   5" and an "answer" that is only words ("the answer is: the number of apples, ...") are skipped.
4. "whole response" (only with ``fallback_last_number=True``, the default): a short one-line
   response that is nothing but an expression ("$\\frac{1}{2}$", "\\(2x+2\\)", "(1, 2]", "x = 5").
5. "last number" (only with ``fallback_last_number=True``): the last number in the text.

Equivalence (`is_equivalent(answer, ground_truth)`), after normalising both sides (LaTeX delimiters,
``\\left``/``\\right``, spacing commands, ``\\dfrac``/``\\tfrac``, ``\\text{..}`` unwrapped, currency
signs, degree signs, thousands separators "1,000" / "1{,}000" / "1\\,000", a leading "x =", trailing
unit words "5 cm", "12 dollars", "3 km/h", "4 square feet"):

* Fast path, no math-verify: both sides are plain numbers (integers, decimals, "a/b", ``\\frac{a}{b}``,
  scientific notation "1.5e3" / "1.5 \\times 10^{3}", percentages, magnitude words "2 million").
  They are compared exactly as rationals, so "0.50" == "1/2" and "1,000" == "1000".  When either side
  is written as a decimal, values that agree after rounding to 6 decimal places also match (as
  math-verify does, so "0.333333" == "1/3" but "0.33" != "1/3"); below 1e-3 the agreement must be
  relative (1e-6), so "1e-7" != "2e-7".
* Percent policy (math-verify's for "50%", applied here to "50\\%" and "50 percent" too): "p%" on
  either side matches the bare number p and the fraction p/100, so "50%" matches "50", "50%",
  "50\\%" and "0.5"; two bare numbers never match across the factor 100 ("0.5" != "50").
* Text answers: equal after normalisation (case-insensitive for plain words; "(B)" == "B").
* Everything else goes to math-verify (LaTeX and plain expressions, intervals, sets, tuples,
  matrices, symbolic equality "2x+2" == "2(x+1)").  Its timeouts are SIGALRM alarms, which only work
  on the main thread: there each parse / verify call gets min(MV_TIMEOUT_S, what is left of an alarm
  already armed, e.g. the reward manager's per-call one), and that outer alarm is re-armed afterwards
  (math-verify would otherwise cancel it).  Off the main thread they are off, and answers that could
  explode (power towers, huge factorials) are refused up front.  Bracket nesting deeper than 30 is
  always refused.
"""
from __future__ import annotations

import re
import signal
import threading
import time
from fractions import Fraction

__all__ = ["compute_score", "extract_answer", "last_boxed", "is_equivalent", "gold_answer"]

MAX_ANSWER_CHARS = 1000  # a longer "answer" is not an answer; scored 0 without parsing
MV_TIMEOUT_S = 3  # math-verify parse / verify timeouts (seconds, integer), when they can be used

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


class _TooComplex(Exception):
    pass


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
    if cand and re.match(r"[-+−$\\(\[{.\d]", cand) and re.search(r"\d|\\", cand):
        return cand
    return None


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


# ------------------------------------------------------------------------------------- normalising

# Unit abbreviations accepted as one letter ("5 m") or glued to the number ("10kg").  Letters that are
# usually variables (n, k, x, ...) are not units here: "5k" is not 5.  (math-verify, which sees what the
# fast path leaves, has its own unit list and also reads e.g. "5t" and "5d" as 5 tonnes / 5 days.)
_UNIT_WORDS = {
    "m", "cm", "mm", "km", "g", "kg", "mg", "l", "ml", "s", "h", "hr", "hrs", "min", "mins", "sec", "secs",
    "ft", "in", "yd", "mi", "lb", "lbs", "oz", "mph", "kph", "kmh", "deg", "kw", "pa", "hz", "sq", "cu",
}
# Words after a number that make it an expression, not a quantity with a unit.
_MATH_WORDS = {"pi", "e", "i", "j", "inf", "infinity", "infty", "sqrt", "log", "ln", "sin", "cos", "tan", "exp",
               "mod", "or", "and", "to", "plus", "minus", "times", "over", "divided", "root", "squared", "cubed",
               "not"}
_SCALE = {"hundred": 10 ** 2, "thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12}
_NUMBER_BODY = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_NUMBER_RE = re.compile(
    r"^(?P<sign>[-+])?\s*"
    r"(?:(?P<frac>\\frac\{\s*(?P<fn>[-+]?\d+)\s*\}\{\s*(?P<fd>\d+)\s*\}|\\frac(?P<fn2>\d)(?P<fd2>\d))"
    r"|(?P<num>" + _NUMBER_BODY + r")(?:\s*/\s*(?P<den>\d+))?)"
    r"(?P<sci>\s*[eE](?P<e1>[-+]?\d+)"
    r"|\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*(?:\{\s*(?P<e2>[-+]?\d+)\s*\}|(?P<e3>[-+]?\d+)))?"
    r"\s*(?P<pct>\\?%|percent\b|per\s*cent\b)?(?P<unit>.*)$", re.S)
_UNIT = r"[A-Za-z][A-Za-z.']*(?:\s*\^\s*\{?[23]\}?|[²³])?"  # cm, cm^2, sq.
_UNIT_TAIL_RE = re.compile(r"^\s*" + _UNIT + r"(?:\s*(?:/|\s|\bper\b)\s*" + _UNIT + r")*\s*$")


def _unwrap_text_commands(s: str) -> str:
    for _ in range(4):
        new = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname|textnormal|mathit)\s*\{([^{}]*)\}",
                     r" \1 ", s)
        if new == s:
            break
        s = new
    return s


def _normalize(s: str) -> str:
    """Cheap, meaning-preserving clean-up applied to both sides before comparing."""
    s = str(s).strip()
    for u, latex in (("−", "-"), ("–", "-"), ("×", "\\times "), ("·", "\\cdot "), ("÷", "\\div "), ("π", "\\pi "),
                     ("∞", "\\infty "), ("√", "\\sqrt"), ("≤", "\\le "), ("≥", "\\ge "), ("\u00a0", " ")):
        s = s.replace(u, latex)
    for _ in range(3):  # outer delimiters, possibly nested ("$\boxed{..}$" already unboxed)
        before = s
        s = s.strip()
        for o, c in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
            if len(s) > len(o) + len(c) - 1 and s.startswith(o) and s.endswith(c):
                s = s[len(o):len(s) - len(c)]
                break
        b = last_boxed(s) if _BOX_RE.search(s) else None
        if b is not None and re.fullmatch(r"\s*\\(?:boxed|fbox)\s*\{.*\}\s*", s, re.S):
            s = b
        s = _strip_wrapping(s)
        if s == before:
            break
    s = s.replace("\\$", " ").replace("$", " ")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*", "", s)
    s = re.sub(r"(?<=\d)(?:\{,\}|\\,|\\ |\\;|\\!|~)(?=\d{3}\b)", "", s)  # 1{,}000  1\,000
    s = re.sub(r"(?<!\\)\\[,;:! ]|~", " ", s)  # spacing commands (not the "\\\\" row break)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\langle\b\s*", "(", s)
    s = re.sub(r"\s*\\rangle\b", ")", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree", "", s)
    s = _unwrap_text_commands(s)
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\s+", " ", s).strip()
    s = _strip_wrapping(s)
    return s


def _strip_assignment(s: str) -> str:
    """"x = 5" -> "5" (one variable, one "=")."""
    m = re.fullmatch(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*=\s*([^=]+)", s)
    return m.group(1).strip() if m and not re.search(r"[<>]", s) else s


_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = {w: 10 * k for k, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if k > 1}
_WORD_NUM_RE = re.compile(r"^(?P<neg>minus\s+|negative\s+)?(?P<a>[a-z]+)(?:[-\s](?P<b>[a-z]+))?(?P<rest>(?:\s.*)?)$",
                          re.S)


def _number_words(s: str) -> str:
    """"five" -> "5", "twenty-one apples" -> "21 apples" (0 to 99 only); anything else unchanged."""
    m = _WORD_NUM_RE.match(s.strip().lower())
    if not m:
        return s
    a, b = m.group("a"), m.group("b")
    if a in _TENS and b in _SMALL[1:10]:
        n, rest = _TENS[a] + _SMALL.index(b), m.group("rest")
    elif a in _TENS or a in _SMALL:
        n = _TENS.get(a, _SMALL.index(a) if a in _SMALL else 0)
        rest = (" " + b if b else "") + m.group("rest")
    else:
        return s
    return ("-" if m.group("neg") else "") + str(n) + rest


def _parse_number(s: str) -> tuple[Fraction, bool, bool] | None:
    """(value, is_percent, written_as_decimal) for a plain number, possibly with a unit; else None."""
    s = _number_words(_strip_assignment(s))
    m = _NUMBER_RE.match(s.strip())
    if not m:
        return None
    unit = m.group("unit").strip()
    scale = 1
    if unit:
        words = re.findall(r"[A-Za-z]+", unit)
        if not _UNIT_TAIL_RE.match(unit) or not words:
            return None
        if words[0].lower() in _SCALE:
            scale = _SCALE[words[0].lower()]
            words = words[1:]
        attached = not m.group("unit")[:1].isspace()  # "10kg", "5x"
        for k, w in enumerate(words):
            wl = w.lower()
            if wl in _UNIT_WORDS:
                continue
            if wl in _MATH_WORDS or len(w) == 1 or (k == 0 and attached and len(w) < 3):
                return None
    try:
        if m.group("frac"):
            num = m.group("fn") or m.group("fn2")
            den = m.group("fd") or m.group("fd2")
            value = Fraction(int(num), int(den))
            decimal = False
        else:
            body = m.group("num").replace(",", "")
            if len(body) > 400:
                return None
            value = Fraction(body if not body.endswith(".") else body[:-1])
            decimal = "." in body
            if m.group("den"):
                value /= int(m.group("den"))
        if m.group("sci"):
            e = int(m.group("e1") or m.group("e2") or m.group("e3"))
            if abs(e) > 400:
                return None
            value *= Fraction(10) ** e
            decimal = True
    except (ValueError, ZeroDivisionError):
        return None
    if m.group("sign") == "-":
        value = -value
    return value * scale, bool(m.group("pct")), decimal


def _drop_unit(s: str) -> str:
    s = _strip_assignment(s).strip()
    m = _NUMBER_RE.match(s)
    return s[:m.start("unit")].strip() if m and m.group("unit").strip() else s


def _numbers_equal(a: tuple[Fraction, bool, bool], g: tuple[Fraction, bool, bool]) -> bool:
    (av, ap, ad), (gv, gp, gd) = a, g
    a_vals = {av, av / 100} if ap and not gp else {av}
    g_vals = {gv, gv / 100} if gp and not ap else {gv}
    inexact = ad or gd
    for x in a_vals:
        for y in g_vals:
            if x == y:
                return True
            if inexact and round(x, 6) == round(y, 6):
                big = max(abs(x), abs(y))
                if big >= Fraction(1, 1000) or abs(x - y) <= big / 10 ** 6:
                    return True
    return False


def _text_key(s: str) -> str:
    s = re.sub(r"\s+", "", s)
    m = re.fullmatch(r"\(?([A-Ea-e])\)?[.:]?", s)
    if m:
        return m.group(1).upper()
    return s.lower() if re.fullmatch(r"[A-Za-z][A-Za-z'\-]+", s) else s


# ------------------------------------------------------------------------------------ math-verify

class _Deadline:
    """math-verify's timeouts are SIGALRM alarms: usable on the main thread only, and they replace
    (then cancel) any alarm already armed, such as the reward manager's per-call one.  On the main
    thread each math-verify call gets min(MV_TIMEOUT_S, time left on the outer alarm) and the outer
    alarm is re-armed afterwards with what is left of it; if nothing is left, its handler is run right
    here (math-verify catches exceptions, so an alarm going off inside it would be lost), and the
    manager still sees its timeout.  Off the main thread: no timeouts (None)."""

    def __init__(self):
        self.main = threading.current_thread() is threading.main_thread()
        self.outer_at = None
        self.outer_handler = None
        if self.main:
            left = signal.getitimer(signal.ITIMER_REAL)[0]
            if left > 0:
                self.outer_at = time.monotonic() + left
                self.outer_handler = signal.getsignal(signal.SIGALRM)

    def timeout(self) -> int | None:
        if not self.main:
            return None
        if self.outer_at is None:
            return MV_TIMEOUT_S
        return max(1, min(MV_TIMEOUT_S, int(-(-(self.outer_at - time.monotonic()) // 1))))  # ceil

    def _expire(self):
        """The outer alarm's time is up: deliver it here, where nothing swallows it."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.outer_handler)
        if callable(self.outer_handler):
            self.outer_handler(signal.SIGALRM, None)
        elif self.outer_handler == signal.SIG_DFL:
            signal.raise_signal(signal.SIGALRM)

    def call(self, fn, *args, **kwargs):
        if self.outer_at is not None and time.monotonic() >= self.outer_at:
            self._expire()
        try:
            return fn(*args, **kwargs)
        finally:
            if self.outer_at is not None:
                signal.signal(signal.SIGALRM, self.outer_handler)
                left = self.outer_at - time.monotonic()
                if left > 0:
                    signal.setitimer(signal.ITIMER_REAL, left)
                else:
                    self._expire()


def _too_deep(s: str, limit: int = 30) -> bool:
    """Bracket nesting deeper than any real answer (the parser crawls on it)."""
    depth = 0
    for c in s:
        if c in "{([":
            depth += 1
            if depth > limit:
                return True
        elif c in "})]":
            depth -= 1
    return False


def _too_complex(s: str) -> bool:
    """Inputs that make sympy explode without a timeout to stop it: power towers, huge factorials."""
    return bool(re.search(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\*\*[^*]*\*\*|\d{4,}\s*!", s))


def _mv_equal(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    if _too_deep(answer) or _too_deep(gold):
        raise _TooComplex("too deeply nested to verify")
    clock = _Deadline()
    if clock.timeout() is None and (_too_complex(answer) or _too_complex(gold)):
        raise _TooComplex("too complex to verify without a timeout")

    def p(text: str):  # timeout None: off (math-verify then logs a warning once)
        return clock.call(parse, text, parsing_timeout=clock.timeout())

    g = p(f"${gold}$") or p(gold)
    a = p(f"${answer}$") or p(answer)
    if not g or not a:
        return False
    return bool(clock.call(verify, g, a, timeout_seconds=clock.timeout()))


def is_equivalent(answer: str, ground_truth: str) -> bool:
    """Whether the extracted answer means the same as the reference answer (may raise; compute_score
    guards it)."""
    a, g = _normalize(answer), _normalize(ground_truth)
    if not a or not g:
        return False
    if _text_key(a) == _text_key(g):
        return True
    an, gn = _parse_number(a), _parse_number(g)
    if an is not None and gn is not None:
        return _numbers_equal(an, gn)
    # Hand a number-with-units to math-verify as the bare number ("12 dollars" parses as a product).
    if an is not None:
        a = _drop_unit(a)
    if gn is not None:
        g = _drop_unit(g)
    return _mv_equal(a, g)


def gold_answer(ground_truth) -> str:
    """The reference answer: GSM8K rows carry the worked solution ending in "#### 72", MATH rows a
    solution with a \\boxed{} answer; a plain answer string passes through."""
    text = str(ground_truth)
    m = _HASH_RE.findall(text)
    if m and m[-1].strip():
        return m[-1].strip()
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else text.strip()


def compute_score(prompt: str, response: str, ground_truth, fallback_last_number: bool = True, **extra) -> dict:
    """{"score": 1.0 or 0.0, "extracted": the answer found (or None), "reason": how it was decided}.

    ground_truth: the answer string (or a number), a GSM8K solution ending in "#### x", a MATH
    solution with a \\boxed{} answer, or a list of acceptable answers."""
    answer, outer = None, False
    try:
        outer = _Deadline().outer_at is not None
        if ground_truth is None:
            return {"score": 0.0, "extracted": None, "reason": "no ground truth"}
        answer, how = extract_answer("" if response is None else str(response), fallback_last_number)
        if answer is None:
            why = {"unclosed boxed": "unclosed \\boxed (truncated response?)",
                   "nothing after </think>": "nothing after </think>"}.get(how, "no answer found")
            return {"score": 0.0, "extracted": None, "reason": why}
        if not answer.strip():
            return {"score": 0.0, "extracted": answer, "reason": f"{how}: empty answer"}
        if len(answer) > MAX_ANSWER_CHARS:
            return {"score": 0.0, "extracted": answer[:200] + "...", "reason": f"{how}: answer too long"}
        golds = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
        golds = [gold_answer(g) for g in golds if g is not None]
        ok = any(is_equivalent(answer, g) for g in golds if g)
        return {"score": 1.0 if ok else 0.0, "extracted": answer, "reason": f"{how}: {'match' if ok else 'mismatch'}"}
    except Exception as e:  # never raise ...
        # ... except the reward manager's own per-call alarm: it fired, so let it count as a timeout.
        if outer and threading.current_thread() is threading.main_thread() \
                and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            raise
        kind = str(e) if isinstance(e, _TooComplex) else f"error: {type(e).__name__}: {e}"[:300]
        return {"score": 0.0, "extracted": answer, "reason": kind}
