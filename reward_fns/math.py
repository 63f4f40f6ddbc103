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

from reward_fns.math_extract import _BOX_RE, _HASH_RE, _strip_wrapping, extract_answer, last_boxed
from reward_fns.math_numbers import _drop_unit, _numbers_equal, _parse_number

__all__ = ["compute_score", "extract_answer", "last_boxed", "is_equivalent", "gold_answer"]

MAX_ANSWER_CHARS = 1000  # a longer "answer" is not an answer; scored 0 without parsing
MV_TIMEOUT_S = 3  # math-verify parse / verify timeouts (seconds, integer), when they can be used


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
