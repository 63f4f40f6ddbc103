"""Math answer verifier: extract the final answer, then decide equivalence with the ground truth.

    compute_score(prompt, response, ground_truth, fallback_last_number=True, **extra)
        -> {"score": 1.0 | 0.0, "extracted": str | None, "reason": str}

It never raises: any internal error scores 0.0 with the error in `reason` (the one exception is the
reward manager's own per-call timeout, which is let through so that it is counted as a timeout).

Extraction (first rule that applies wins; `extract_answer` returns (answer, how)):

1. "boxed": the content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced;
   ``\\boxed 5`` also accepted).  The box wins over anything the text says, and with several boxes the
   last one is the answer, even if an earlier box holds the right one.  An empty box gives "" (score
   0); a last box that is never closed (a truncated response) gives no answer (score 0).
2. "####": the text after the last GSM8K ``#### `` marker, up to the end of that line.
3. "answer is": the expression after the last "answer is" / "answer:" / "answer =" (also "final
   answer", "answer would/should/will be", markdown ``**Answer:**``), taken up to the end of its
   clause (sentence end, newline, ", since", " because", ...), so "The answer is 7, since 3+4=7"
   gives "7".  ``$...$``, ``\\(...\\)``, ``\\[...\\]`` are taken whole; ``$12.50`` is a price.  A
   self-correction right after it wins: "The answer is 5... actually 6" gives "6".
4. "last number" (only with ``fallback_last_number=True``, the default): the last number in the text.

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
* Percent policy (the same as math-verify's for "%"): "p%" (also "p\\%", "p percent") matches the bare
  number p and the fraction p/100, so "50%" matches "50", "50%", "50\\%" and "0.5"; two bare numbers
  never match across the factor 100 ("0.5" != "50").
* Text answers: equal after normalisation (case-insensitive for plain words; "(B)" == "B").
* Everything else goes to math-verify (LaTeX and plain expressions, intervals, sets, tuples,
  matrices, symbolic equality "2x+2" == "2(x+1)").  Its own signal-based timeouts are used when we
  are on the main thread and no outer alarm is armed; on other threads (signals are main-thread only)
  and under the reward manager's alarm they are off, and answers that could explode (power towers,
  huge factorials) are refused up front.
"""
from __future__ import annotations

import re
import signal
import threading
from fractions import Fraction

__all__ = ["compute_score", "extract_answer", "last_boxed", "is_equivalent", "gold_answer"]

MAX_ANSWER_CHARS = 1000  # a longer "answer" is not an answer; scored 0 without parsing
MV_TIMEOUT_S = 3  # math-verify parse / verify timeouts (seconds, integer), when they can be used

# A number as written in prose: "1,234.5", "42", "-3", ".5", "3/4" (the fallback keeps the fraction).
# No sign after a word character or bracket, so "3-5" gives 5, not -5.
_NUM = r"(?:(?<![\w)\]}.])[-+−])?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?:[eE][-+]?\d+\b|[ \t]*(?:×|\\times|\\cdot|x|\*)[ \t]*10[ \t]*\^[ \t]*\{?[-+]?\d+\}?)?(?:/\d+)?"
        r"|(?<![\w.])[-+]?\.\d+"
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
    m = re.match(r"(?:(?:approximately|approx\.?|about|around|roughly|exactly|equal\s+to|just|therefore|thus|then|so|simply|clearly|now)\s+)+", s[start:], re.I)
    if m:
        start += m.end()
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


def extract_answer(response: str, fallback_last_number: bool = True) -> tuple[str | None, str]:
    """Returns (answer, how it was found): how is "boxed", "####", "answer is", "last number",
    "unclosed boxed" (answer None) or "none" (answer None)."""
    response = str(response)
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
        nm = None
        for nm in _NUM_RE.finditer(response):
            pass
        if nm is not None:
            return nm.group(0).replace("−", "-"), "last number"
    return None, "none"


# ------------------------------------------------------------------------------------- normalising

_UNIT_WORDS = {  # units that may stand without a space after the number ("5cm") or as one letter ("5 m")
    "m", "cm", "mm", "km", "g", "kg", "mg", "l", "ml", "s", "h", "hr", "hrs", "min", "mins", "sec", "secs",
    "ft", "in", "yd", "mi", "lb", "lbs", "oz", "mph", "kph", "kmh", "deg", "k", "c", "f", "w", "kw", "v",
    "j", "n", "pa", "hz", "sq", "cu", "t",
}
_MATH_WORDS = {"pi", "e", "i", "j", "inf", "infinity", "infty", "sqrt", "log", "ln", "sin", "cos", "tan", "exp",
               "x", "y", "z", "n", "mod", "or", "and", "to", "plus", "minus", "times", "over", "divided",
               "root", "squared", "cubed", "i.e", "not"}
_SCALE = {"thousand": 10 ** 3, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12}
_NUMBER_BODY = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_NUMBER_RE = re.compile(
    r"^(?P<sign>[-+])?\s*(?:(?P<frac>\\frac\{\s*(?P<fn>[-+]?\d+)\s*\}\{\s*(?P<fd>\d+)\s*\}|\\frac(?P<fn2>\d)(?P<fd2>\d))"
    r"|(?P<num>" + _NUMBER_BODY + r")(?:\s*/\s*(?P<den>\d+))?)"
    r"(?P<sci>\s*[eE](?P<e1>[-+]?\d+)|\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*(?:\{\s*(?P<e2>[-+]?\d+)\s*\}|(?P<e3>[-+]?\d+)))?"
    r"\s*(?P<pct>\\?%|percent\b|per\s*cent\b)?(?P<unit>.*)$", re.S)
_UNIT_TAIL_RE = re.compile(
    r"^\s*(?:[A-Za-z][A-Za-z.']*(?:\s*\^\s*\{?[23]\}?|[²³])?)(?:\s*(?:/|\s|\bper\b)\s*[A-Za-z][A-Za-z.']*(?:\s*\^\s*\{?[23]\}?|[²³])?)*\s*$")


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
    s = s.replace("−", "-").replace("–", "-").replace("×", "\\times ").replace("·", "\\cdot ").replace("÷", "\\div ")
    s = s.replace("π", "\\pi ").replace("∞", "\\infty ").replace("√", "\\sqrt").replace("≤", "\\le ").replace("≥", "\\ge ")
    s = s.replace("\u00a0", " ")
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


def _parse_number(s: str) -> tuple[Fraction, bool, bool] | None:
    """(value, is_percent, written_as_decimal) for a plain number, possibly with a unit; else None."""
    s = _strip_assignment(s)
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
        attached = not m.group("unit")[:1].isspace()
        for k, w in enumerate(words):
            wl = w.lower()
            if wl in _MATH_WORDS and not (wl in _UNIT_WORDS and k > 0):
                return None
            if (len(w) == 1 or (k == 0 and attached)) and wl not in _UNIT_WORDS and not (k == 0 and attached and len(w) > 2):
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

def _signal_timeouts_usable() -> tuple[bool, bool]:
    """(math-verify may use its own SIGALRM timeouts, an outer alarm is armed)."""
    if threading.current_thread() is not threading.main_thread():
        return False, False
    try:
        outer = signal.getitimer(signal.ITIMER_REAL)[0] > 0
    except (AttributeError, OSError):
        return False, False
    return not outer, outer


def _too_complex(s: str) -> bool:
    """Inputs that make sympy explode: power towers, huge factorials, deep nesting."""
    if re.search(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\*\*[^*]*\*\*", s):
        return True
    if re.search(r"\d{4,}\s*!", s) or s.count("{") > 60 or s.count("(") > 60:
        return True
    return False


def _mv_equal(answer: str, gold: str, timeout_s: int | None) -> bool:
    from math_verify import parse, verify

    if timeout_s is None and (_too_complex(answer) or _too_complex(gold)):
        raise _TooComplex("too complex to verify without a timeout")
    kw = {"parsing_timeout": timeout_s}  # None: off (math-verify then only logs a warning once)
    g = parse(f"${gold}$", **kw) or parse(gold, **kw)
    p = parse(f"${answer}$", **kw) or parse(answer, **kw)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=timeout_s))


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
    own_timeouts, _ = _signal_timeouts_usable()
    return _mv_equal(a, g, MV_TIMEOUT_S if own_timeouts else None)


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
    answer = None
    own, outer = False, False
    try:
        own, outer = _signal_timeouts_usable()
        if ground_truth is None:
            return {"score": 0.0, "extracted": None, "reason": "no ground truth"}
        answer, how = extract_answer("" if response is None else str(response), fallback_last_number)
        if answer is None:
            why = "unclosed \\boxed (truncated response?)" if how == "unclosed boxed" else "no answer found"
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
        kind = "too complex" if isinstance(e, _TooComplex) else f"error: {type(e).__name__}: {e}"[:300]
        return {"score": 0.0, "extracted": answer, "reason": kind}
