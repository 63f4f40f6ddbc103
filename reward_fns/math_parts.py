"""Multi-part answers for the math verifier (reward_fns/math.py, `is_equivalent`): "2, 3",
"19, 46, and 82", "3 or 5", "1 \\pm \\sqrt{19}", compared part by part, as a set unless one side is a
tuple, whose order then counts."""
from __future__ import annotations

import re

MAX_PARTS = 50  # a longer list is not an answer (and matching it as a set is quadratic)
# Separators between the parts of a bare list, outside brackets.  A comma followed by exactly three
# digits is a thousands separator ("1,000"), not a separator.
_SEP_RE = re.compile(r"\s*,\s*(?:and|or)\s+|\s*,(?!\d{3}(?!\d))\s*|\s*;\s*|\s+(?:and|or)\s+")


def split_top(s: str) -> list[str]:
    """s split at the separators that are outside every bracket (a matrix or other environment is one
    part)."""
    if "\\begin" in s:
        return [s.strip()] if s.strip() else []
    out, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and c in " ,;":
            m = _SEP_RE.match(s, i)
            if m and m.end() > i:
                out.append(s[start:i])
                start = i = m.end()
                continue
        i += 1
    out.append(s[start:])
    return [p.strip() for p in out if p.strip()]


def _encloses(s: str) -> bool:
    """Whether the bracket opening s is the one closing it: "(1, 2)" yes, "(1,2) \\cup (3,4)" no."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def as_parts(s: str) -> tuple[str, list[str]]:
    """("list", parts) for a bare list or a "\\pm" pair, ("set", elements) for {...}, ("tuple",
    elements) for (...) / [...] with two or more elements, else ("single", [s])."""
    parts = split_top(s)
    if len(parts) > 1:
        return "list", parts
    if s.count("\\pm") + s.count("\\mp") == 1:
        sign = "\\pm" if "\\pm" in s else "\\mp"
        return "list", [s.replace(sign, "+"), s.replace(sign, "-")]
    for o, c, kind in (("\\{", "\\}", "set"), ("{", "}", "set"), ("(", ")", "tuple"), ("[", "]", "tuple")):
        if s.startswith(o) and s.endswith(c) and _encloses(s[len(o) - 1:]):
            inner = split_top(s[len(o):len(s) - len(c)])
            if len(inner) > 1:
                return kind, inner
            break
    return "single", [s]


def parts_equal(a: str, g: str, eq) -> bool | None:
    """The verdict when either side is a bare list (eq compares two parts); None otherwise, for the
    caller to compare the whole."""
    ka, pa = as_parts(a)
    kg, pg = as_parts(g)
    if "list" not in (ka, kg):
        return None
    if "single" in (ka, kg) or len(pa) != len(pg) or len(pa) > MAX_PARTS:
        return False  # "5, 6" is not 5; "1728" is not "1331 and 1728"
    if "tuple" in (ka, kg):
        return all(eq(x, y) for x, y in zip(pa, pg))
    if all(eq(x, y) for x, y in zip(pa, pg)):  # the usual case, in linear time
        return True
    left = list(pg)
    for x in pa:
        hit = next((k for k, y in enumerate(left) if eq(x, y)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True
