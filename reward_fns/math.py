"""Math answer verifier: extract the final answer, then decide equivalence with the ground truth.

    compute_score(prompt, response, ground_truth, fallback_last_number=True, **extra)
        -> {"score": 1.0 | 0.0, "extracted": str | None, "reason": str}

ground_truth: the answer string (or a number), a GSM8K solution ending in "#### 72", a MATH solution
with a ``\\boxed{}`` answer (see `gold_answer`), or a list of acceptable answers.

It never raises: any internal error scores 0.0 with the error in `reason` (the one exception is the
reward manager's own per-call timeout, which is let through so that it is counted as a timeout).

Extraction (first rule that applies wins; `extract_answer` returns (answer, how)).  Chat-template
tokens are dropped first, and the response ends at the first end-of-turn token (``<|im_end|>``,
``<|eot_id|>``, ``<|endoftext|>``, ``</s>``, ``<end_of_turn>``, ``<｜end▁of▁sentence｜>``, a new
``<|im_start|>`` turn ...) after some text: what follows is a hallucinated next turn.  R1-style
responses: only the text after the last ``</think>`` is searched (nothing there: no answer), and if
it holds ``<answer>...</answer>`` the last such block is searched with rules 1-3, else its whole
content is the answer ("answer tag").

1. "boxed": the content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced;
   ``\\boxed 5`` also accepted).  The box wins over what the text says before it, and with several
   boxes the last one is the answer, even if an earlier box holds the right one; except:
   "final answer": a "Final Answer: The final answer is X" line (any "final answer" followed by a
   stated answer, rule 3, that is an expression rather than words) AFTER the last box wins over it,
   so intermediate boxes do not shadow the closing line.  An empty box gives "" (score 0); a last
   box that is never closed (a truncated response) gives no answer (score 0).
   Several parts: when the reference has several parts (a list "2, 3", "19, 46, and 82", "3 or 5",
   "1 \\pm \\sqrt{19}", a set or a tuple), the last box and the boxes just before it in the same
   statement (each gap under 100 characters, no blank line: "$x = \\boxed{2}$ and $y = \\boxed{3}$")
   are the answer together, joined with ", " (`boxed_parts`).  A one-part reference is compared with
   the last box alone.
2. "####": the text after the last GSM8K ``#### `` marker, up to the end of that line (a markdown
   heading such as "#### Step 1: ..." is not an answer line and is skipped).
3. "answer is": the expression after the last "answer is" / "answer:" / "answer =" (also "final
   answer", "answers are", "answer would/should/will be", "the correct option/choice is", markdown
   ``**Answer:**``), taken up to the end of its clause (sentence end, newline, ", since", " because",
   ...), so "The answer is 7, since 3+4=7" gives "7".  ``$...$``, ``\\(...\\)``, ``\\[...\\]`` are
   taken whole; ``$12.50`` is a price.  A self-correction right after it wins: "The answer is 5...
   actually 6" gives "6".  A sentence that ends in the answer gives what follows its last "is" /
   "are" / "equals" / "=": "Final Answer: The volume of $ABCD$ is 120." gives "120".  "answer is
   not 5" and an "answer" that is only words ("the answer is: the number of apples, ...") are skipped.
Rules 4-6 run only with ``fallback_last_number=True`` (the default), and only for a response that
commits to an answer: one that hedges in its last 400 characters ("I'm not sure", "cannot be
determined", "unable to solve", "I don't know", "not enough information", ...) gets none ("hedged").
4. "whole response": a short one-line response that is nothing but an expression ("$\\frac{1}{2}$",
   "\\(2x+2\\)", "(1, 2]", "x = 5").
5. "inline math": the last ``$...$`` / ``$$...$$`` / ``\\(...\\)`` / ``\\[...\\]`` span that holds
   more than a variable name ("Therefore $x \\geq 5$ is the solution", "the pair is $(7, 6)$", a
   matrix), read as LaTeX, unless a standalone number comes after it in the text.
6. "last number": the last standalone number in the text: not digits inside a word ("AZYUK2A",
   "H2O", "5x") or a command ("\\frac13"), but a unit glued on is allowed ("10kg"); "2,74" (two
   digits after the comma) is a decimal comma; a percent sign ("25%") or a ratio / time ("3:2",
   "10:30") is kept with it.
   In rules 5-6 an approximation written right after an answer is not the answer: "$\\frac{5}{36}$,
   which is about 0.139", "5/36 or about 0.139", "$\\sqrt{2}$ (approximately 1.414)", "1/3 ≈ 0.333",
   "45 minutes, about 0.75 hours" give the exact value (a comma, bracket or "or", then about /
   approximately / roughly / around / nearly, or "\\approx"; "3 apples and about 4 pears" gives 4).
   Against a multi-part reference, a list the response ends with is the answer ("the numbers are 3
   and 4.", "the solutions are $x=2$ and $x=-5$."; `trailing_list`), as boxes are in rule 1.

Equivalence (`is_equivalent(answer, ground_truth)`), after normalising both sides (LaTeX delimiters,
``\\left``/``\\right``, spacing commands, ``\\dfrac``/``\\tfrac``, ``\\text{..}`` unwrapped, currency
signs, degree signs, ordinals "12^{\\text{th}}", thousands separators "1,000" / "1{,}000" / "1\\,000"
/ MATH's "10,\\!000" and "32,\\! 349" (but "32, 349" is a list), a leading "x =", trailing unit words
"5 cm", "12 dollars", "3 km/h", "4 square feet"; a repeating decimal "0.1\\overline{6}" / "0.\\bar{3}"
becomes its exact fraction; Python powers "3*s**2" become "3*s^{2}"):

* Fast path, no math-verify: both sides are plain numbers (integers, decimals, "a/b", ``\\frac{a}{b}``,
  mixed numbers "4 4/9" / "7 \\frac{3}{4}", scientific notation "1.5e3" / "1.5 \\times 10^{3}",
  percentages, magnitude words "2 million").  They are compared exactly as rationals, so "0.50" ==
  "1/2" and "1,000" == "1000".  When either side is written as a decimal, values that agree after
  rounding to 6 decimal places also match (as math-verify does, so "0.333333" == "1/3" but "0.33" !=
  "1/3"); below 1e-3 the agreement must be relative (1e-6), so "1e-7" != "2e-7".
* Percent policy (math-verify's for "50%", applied here to "50\\%" and "50 percent" too): "p%" on
  either side matches the bare number p and the fraction p/100, so "50%" matches "50", "50%",
  "50\\%" and "0.5"; two bare numbers never match across the factor 100 ("0.5" != "50").
* Text answers: equal after normalisation (case-insensitive for plain words; "(B)" == "B").  A choice
  letter with its option's text matches the letter: "(A) 3" == "A", "B. 7" == "B".
* A decimal comma against a decimal point: "1000,99" == "1000.99", "0,111" == "0.111" (only then: a
  bare "-2,1" is otherwise a list).
* Multi-part (reward_fns/math_parts.py): when either side is a bare list ("2, 3", "19, 46, and 82",
  "3 or 5"; "1 \\pm \\sqrt{19}" is the list of its two values), the parts are compared one by one:
  as a set, or in order when the other side is a tuple ("x=2, y=3" == "(2, 3)" != "(3, 2)").  A
  missing or extra part is wrong ("1728" != "1331 and 1728", "5, 6" != "5").
* An answer that is an equation, against a reference that is not: its last side is compared too
  ("P = \\frac{3}{8} = 37.5\\%" == "3/8", "f(2) = 5" == "5", as math-verify and Qwen's grader do), but
  a bare value does not answer an equation reference ("0" != "a + 3z = 0", math-verify's tests).
* Everything else goes to math-verify (LaTeX and plain expressions, intervals, sets, tuples,
  matrices, symbolic equality "2x+2" == "2(x+1)").  A number with a "unit" is handed over without it,
  and, if that does not match, as written ("3s^2" == "3*s**2": the "s" is a variable there).  When it
  says not equal and a side has a free "i", both are compared again with "i" as the imaginary unit
  ("e^{i\\pi}" == "-1", "(1+i)^2" == "2i").  Degrees are not converted to radians (the MATH and Qwen
  graders drop "^\\circ" and compare numbers): "45^\\circ" == "45" but "\\frac{\\pi}{4}" != "45^\\circ".
  A decimal matches an irrational value only to 6 places ("0.866" != "\\frac{\\sqrt{3}}{2}").  When it
  says equal and both sides are exact numbers (no decimal point, percent or degrees written, no
  variables), they must also agree to 40 significant digits (sympy evaluation), since math-verify
  compares numbers to 6 decimal places and would take 1/2^98 for 1/2^99 or 1/2006! for 1/2004!.
  Its timeouts are SIGALRM alarms, which only work on the main thread: there each parse / verify
  call gets min(MV_TIMEOUT_S, what is left of an alarm already armed, e.g. the reward manager's
  per-call one), and that outer alarm is re-armed afterwards (math-verify would otherwise cancel
  it).  Off the main thread they are off, and answers that could explode (power towers, huge
  factorials) are refused up front.  Bracket nesting deeper than 30 is always refused.
"""
from __future__ import annotations

import re
import signal
import threading
import time

from reward_fns.math_extract import (_BOX_RE, _HASH_RE, _strip_wrapping, boxed_parts, extract_answer, last_boxed,
                                    trailing_list)
from reward_fns.math_numbers import _drop_unit, _numbers_equal, _parse_number
from reward_fns.math_parts import as_parts, parts_equal

__all__ = ["compute_score", "extract_answer", "last_boxed", "is_equivalent", "gold_answer"]

MAX_ANSWER_CHARS = 1000  # a longer "answer" is not an answer; scored 0 without parsing
MV_TIMEOUT_S = 3  # math-verify parse / verify timeouts (seconds, integer), when they can be used


_PLAIN_RE = re.compile(r"[-+]?\d+(?:\.\d+)?")
_DECIMAL_COMMA_RE = re.compile(r"[-+]?\d+,\d+")


_REPEATING_RE = re.compile(r"(?<![\d.])(\d*)\.(\d*)\s*\\(?:overline|bar|dot)\s*(?:\{\s*(\d+)\s*\}|(\d))")
_PY_POWER_RE = re.compile(r"(?<=[\w)\]}])\*\*\s*(\d+(?:\.\d+)?|[A-Za-z]\w*|\((?:[^()]|\([^()]*\))*\))")
_EQ_SPLIT_RE = re.compile(r"(?<![<>!=:\\])=(?!=)")  # "=", not "<=", ">=", "!=", "==", ":="
_CHOICE_RE = re.compile(r"\(([A-Ea-e])\)[.:]?\s+\S.*|([A-E])[.:)]\s+\S.*", re.S)


def _repeating_to_frac(m) -> str:
    """"0.1\\overline{6}" -> "\\frac{1}{6}": the value of a repeating decimal, exactly."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3) or m.group(4)
    if len(fixed) + len(rep) > 50:
        return m.group(0)
    num = int(whole + fixed + rep) - int(whole + fixed)
    den = 10 ** len(fixed) * (10 ** len(rep) - 1)
    return f"\\frac{{{num}}}{{{den}}}"


class _TooComplex(Exception):
    pass


# ------------------------------------------------------------------------------------- normalising

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
    if _PLAIN_RE.fullmatch(s):  # the common case, "42" or "-3.5": nothing to clean
        return s
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
    # thousands in LaTeX spacing: 1{,}000  1\,000  10,\!000  32,\! 349  14 {, }916
    s = re.sub(r"(?<=\d)\s*(?:,\s*\\!|\{\s*,\s*\}|\\,|\\ |\\;|\\!|~)\s*(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"(?<!\\)\\[,;:! ]|~", " ", s)  # spacing commands (not the "\\\\" row break)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    if "\\overline" in s or "\\bar" in s or "\\dot" in s:  # 0.\overline{3}, 0.1\overline{6}: exact
        s = _REPEATING_RE.sub(_repeating_to_frac, s)
    if "**" in s:  # Python powers, "3*s**2": math-verify's LaTeX parser reads "s**2" as "s"
        s = _PY_POWER_RE.sub(r"^{\1}", s)
    s = re.sub(r"\\langle\b\s*", "(", s)
    s = re.sub(r"\s*\\rangle\b", ")", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree", "", s)
    s = re.sub(r"(?<=\d)\s*\^\s*\{?\s*\\(?:text|mathrm)\s*\{\s*(?:st|nd|rd|th)\s*\}\s*\}?", "", s)  # 12^{\text{th}}
    s = _unwrap_text_commands(s)
    s = re.sub(r"\{\s+", "{", re.sub(r"\s+\}", "}", s))  # \frac{1}{ e } (from \mathrm{e}) parses as \frac{1}{e}
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\s+", " ", s).strip()
    s = _strip_wrapping(s)
    return s


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


# A power of a power: "9^{9^{9}}", "9^9^9", "9**9**9", "9^{9}^{9}" (what "**" becomes in _normalize).
_TOWER_RE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\*\*[^*]*\*\*|\^\s*\{[^{}]*\}\s*\^")


def _too_complex(s: str) -> bool:
    """Inputs that make sympy explode without a timeout to stop it: power towers, huge factorials."""
    return bool(_TOWER_RE.search(s) or re.search(r"\d{4,}\s*!", s))


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
    if not clock.call(verify, g, a, timeout_seconds=clock.timeout()):
        # math-verify reads "i" as a variable: read it as the imaginary unit ("e^{i\\pi}" == "-1")
        swapped = _with_imaginary_unit(g, a)
        if swapped is None or not clock.call(verify, *swapped, timeout_seconds=clock.timeout()):
            return False
        g, a = swapped
    # math-verify compares numbers to 6 decimal places, so 1/2^98 "equals" 1/2^99: two exact numbers
    # (no decimals, percent or degrees written) must agree to 40 significant digits.
    if re.search(r"%|percent|circ|deg|[.]\d", answer + gold) or _TOWER_RE.search(answer + gold):
        return True  # (and power towers are not evaluated again)
    return not _exact_numbers_differ(g[0], a[0])


def _with_imaginary_unit(*sides):
    """Each parsed side with the free symbol "i" replaced by sympy's I; None when neither has one."""
    import sympy

    out, hit = [], False
    for parsed in sides:
        new = []
        for v in parsed:
            if isinstance(v, sympy.Basic) and not isinstance(v, sympy.MatrixBase):
                syms = {s: sympy.I for s in v.free_symbols if getattr(s, "name", "") == "i"}
                if syms:
                    v, hit = v.xreplace(syms), True
            new.append(v)
        out.append(new)
    return out if hit else None


def _exact_numbers_differ(x, y) -> bool:
    import sympy

    try:
        if not all(isinstance(v, sympy.Expr) and not isinstance(v, sympy.MatrixBase) and v.is_number
                   and not v.atoms(sympy.Float) for v in (x, y)):
            return False
        vx, vy, d = sympy.N(x, 40), sympy.N(y, 40), sympy.N(x - y, 40)
        return bool(abs(d) > max(abs(vx), abs(vy)) * sympy.Rational(1, 10 ** 30))
    except Exception:  # infinities, nan, or anything sympy cannot evaluate: keep math-verify's verdict
        return False


def warmup() -> None:
    """Run once per scoring process at start-up (rlengine.rewards): loads math-verify's parser."""
    _mv_equal("\\frac{1}{2}", "0.5")


def is_equivalent(answer: str, ground_truth: str) -> bool:
    """Whether the extracted answer means the same as the reference answer (may raise; compute_score
    guards it)."""
    a, g = _normalize(answer), _normalize(ground_truth)
    if not a or not g:
        return False
    if _text_key(a) == _text_key(g):
        return True
    for x, y in ((a, g), (g, a)):  # a choice letter with its option's text: "(A) 3" == "A"
        m = _CHOICE_RE.fullmatch(x)
        if m and re.fullmatch(r"[A-E]", _text_key(y)):
            return (m.group(1) or m.group(2)).upper() == _text_key(y)
    an, gn = _parse_number(a), _parse_number(g)
    if an is not None and gn is not None:
        return _numbers_equal(an, gn)
    if (an is None) != (gn is None):  # a decimal comma against a decimal point: "1000,99" == "1000.99"
        comma, point = (a, gn) if an is None else (g, an)
        if point[2] and _DECIMAL_COMMA_RE.fullmatch(comma):
            return _numbers_equal(_parse_number(comma.replace(",", ".")), point)
    if an is None or gn is None:  # "2, 3" vs "3, 2"; "19, 46, and 82"; "1 \\pm \\sqrt{19}"
        by_parts = parts_equal(a, g, is_equivalent)
        if by_parts is not None:
            return by_parts
    # Hand a number-with-units to math-verify as the bare number ("12 dollars" parses as a product).
    # An answer that is an equation, against a value: its last side is the answer ("P = \\frac{3}{8} =
    # 37.5\\%" == "3/8", "f(2) = 5" == "5"), as math-verify and Qwen's grader compare the right-hand
    # side.  Not the other way round: "0" does not answer "a + 3z = 0" (math-verify's tests).
    sides = _EQ_SPLIT_RE.split(a)
    if len(sides) > 1 and not _EQ_SPLIT_RE.search(g) and sides[-1].strip() and is_equivalent(sides[-1], g):
        return True
    # A "unit" may be a variable the other side has too ("3s^2" vs "3*s**2"): then compare as written.
    a2 = _drop_unit(a) if an is not None else a
    g2 = _drop_unit(g) if gn is not None else g
    if _mv_equal(a2, g2):
        return True
    return (a2, g2) != (a, g) and _mv_equal(a, g)


def gold_answer(ground_truth) -> str:
    """The reference answer: GSM8K rows carry the worked solution ending in "#### 72", MATH rows a
    solution with a \\boxed{} answer (adjacent boxes, as in `boxed_parts`, are the parts of one
    answer); a plain answer string passes through."""
    text = str(ground_truth)
    m = _HASH_RE.findall(text)
    if m and m[-1].strip():
        return m[-1].strip()
    parts = boxed_parts(text)
    if len(set(parts)) > 1:  # "$\\boxed{1}\\boxed{2}$": a multi-part answer
        return ", ".join(parts)
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
        # several boxes in one closing statement answer a multi-part reference together
        # (and the list a response ends with replaces the fallback's last number: "... are 3 and 4.")
        parts = boxed_parts(response) if how == "boxed" else \
            trailing_list(response) if how in ("last number", "inline math") else []
        joined = ", ".join(parts) if len(set(parts)) > 1 else None
        ok, shown = False, answer
        for g in golds:
            if not g:
                continue
            if joined is not None and as_parts(_normalize(g))[0] != "single":
                ok, shown = is_equivalent(joined, g), joined
            else:
                ok, shown = is_equivalent(answer, g), answer
            if ok:
                break
        return {"score": 1.0 if ok else 0.0, "extracted": shown, "reason": f"{how}: {'match' if ok else 'mismatch'}"}
    except Exception as e:  # never raise ...
        # ... except the reward manager's own per-call alarm: it fired, so let it count as a timeout.
        if outer and threading.current_thread() is threading.main_thread() \
                and signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            raise
        kind = str(e) if isinstance(e, _TooComplex) else f"error: {type(e).__name__}: {e}"[:300]
        return {"score": 0.0, "extracted": answer, "reason": kind}
