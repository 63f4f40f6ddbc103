"""Plain numbers for the math verifier (reward_fns/math.py): parse "1,234.5", "3/4", "\\frac{3}{4}",
"1.5e3", "50%", "2 million", "twenty-one", "12 dollars" (a quantity with a unit) as exact rationals, and
compare two of them (the fast path of `is_equivalent`, without math-verify)."""
from __future__ import annotations

import re
from fractions import Fraction


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
_NUMBER_BODY = r"(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_NUMBER_RE = re.compile(
    r"^(?P<sign>[-+])?\s*"
    r"(?:(?P<frac>\\frac\{\s*(?P<fn>[-+]?\d+)\s*\}\{\s*(?P<fd>\d+)\s*\}|\\frac(?P<fn2>\d)(?P<fd2>\d))"
    r"|(?P<num>" + _NUMBER_BODY + r")(?:\s*/\s*(?P<den>\d+))?)"
    r"(?P<sci>\s*[eE](?P<e1>[-+]?\d+)"
    r"|\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*(?:\{\s*(?P<e2>[-+]?\d+)\s*\}|(?P<e3>[-+]?\d+)))?"
    r"\s*(?P<pct>\\?%|percent\b|per\s*cent\b)?(?P<unit>.*)$", re.S)
_MIXED_RE = re.compile(r"([-+]?)\s*(\d+)(?:\s+(\d+)\s*/\s*(\d+)|\s*\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\})")
_UNIT = r"[A-Za-z][A-Za-z.']*(?:\s*\^\s*\{?[23]\}?|[²³])?"  # cm, cm^2, sq.
_UNIT_TAIL_RE = re.compile(r"^\s*" + _UNIT + r"(?:\s*(?:/|\s|\bper\b)\s*" + _UNIT + r")*\s*$")


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
    mixed = _MIXED_RE.fullmatch(s.strip())
    if mixed:  # "4 4/9", "7 \\frac{3}{4}": a whole number and a proper fraction
        sign, whole = mixed.group(1), int(mixed.group(2))
        num, den = int(mixed.group(3) or mixed.group(5)), int(mixed.group(4) or mixed.group(6))
        if not 0 < num < den:
            return None
        value = whole + Fraction(num, den)
        return (-value if sign == "-" else value), False, False
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
