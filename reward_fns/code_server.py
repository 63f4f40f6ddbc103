"""The sandbox side of assert-style tests (code_remote.py has the design): the source of the
*solution server* program, and `_CODEC`, the plain-data encoding both sides use (the runner execs it
too, so the two can never disagree on it).

The server is untrusted the moment the solution's code has run in it: nothing here protects the
score, only the caller's plumbing (its replies are bound before the solution runs, so a solution
that patches os.write hangs nothing). What protects the score is that the runner decodes
replies to builtins only and never sends a test or an expected value.
"""
from __future__ import annotations

_CODEC = r'''

_MAX_DEPTH = 200


def _enc(v, handle, depth=0):
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if v is None or v is True or v is False:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        f = float(v)
        return f if f == f and f not in (float("inf"), float("-inf")) else {"$f": repr(f)}
    if isinstance(v, str):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return {"$b": bytes(v).hex()}
    if isinstance(v, complex):
        return {"$c": [repr(v.real), repr(v.imag)]}
    kind = (type(v).__module__, type(v).__name__)  # (fractions and decimal are not imported unless used)
    if kind == ("fractions", "Fraction"):
        return {"$q": [int(v.numerator), int(v.denominator)]}
    if kind in (("decimal", "Decimal"), ("_decimal", "Decimal"), ("_pydecimal", "Decimal")):
        return {"$m": str(v)}
    if isinstance(v, list):
        return [_enc(x, handle, depth + 1) for x in list(v)]
    if isinstance(v, tuple):
        return {"$t": [_enc(x, handle, depth + 1) for x in tuple(v)]}
    if isinstance(v, dict):
        return {"$d": [[_enc(k, handle, depth + 1), _enc(x, handle, depth + 1)] for k, x in dict(v).items()]}
    if isinstance(v, (set, frozenset)):
        return {"$fs" if isinstance(v, frozenset) else "$s": [_enc(x, handle, depth + 1) for x in v]}
    return handle(v)


_TAGS = {
    "$t": lambda x, d: tuple(d(e) for e in x),
    "$d": lambda x, d: {d(k): d(e) for k, e in x},
    "$s": lambda x, d: {d(e) for e in x},
    "$fs": lambda x, d: frozenset(d(e) for e in x),
    "$b": lambda x, d: bytes.fromhex(x),
    "$c": lambda x, d: complex(float(x[0]), float(x[1])),
    "$q": lambda x, d: __import__("fractions").Fraction(int(x[0]), int(x[1])),
    "$m": lambda x, d: __import__("decimal").Decimal(str(x)),
    "$f": lambda x, d: float(x),
}


def _dec(v, ref):
    """Tagged JSON -> builtins; `ref(obj)` resolves {"$h": ..} handles and {"$n": name}s."""
    def d(x):
        if x is None or type(x) in (bool, int, float, str):
            return x
        if type(x) is list:
            return [d(e) for e in x]
        if type(x) is dict and ("$h" in x or "$n" in x):
            return ref(x)
        if type(x) is dict and len(x) == 1:
            (tag, body), = x.items()
            if tag in _TAGS:
                return _TAGS[tag](body, d)
        raise ValueError("not a value: %.80r" % (x,))
    return d(v)
'''

_SERVER = _CODEC + r'''
# C modules only (no json, re, enum, types to import): this start-up is paid once per response
import _signal, os as _os, sys as _sys
from _json import encode_basestring_ascii as _quote

_ModuleType = type(_sys)


def _dumps(v):
    """JSON text of _enc's output (None, bool, int, float, str, list, dict with str keys)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    t = type(v)
    if t is int:
        return int.__repr__(v)
    if t is float:
        return float.__repr__(v)
    if t is str:
        return _quote(v)
    if t is list:
        return "[" + ",".join([_dumps(x) for x in v]) + "]"
    if t is dict:
        return "{" + ",".join([_quote(str(k)) + ":" + _dumps(x) for k, x in v.items()]) + "}"
    raise TypeError("not encodable: " + t.__name__)


def _literal(line):
    # requests are the runner's ascii() of plain lists, dicts, strings and numbers
    return eval(line, {"__builtins__": {}}, {})

_REQ = _os.fdopen(_os.dup(0), "rb")
_REP = _os.dup(1)
_null = _os.open(_os.devnull, _os.O_RDONLY)
_os.dup2(_null, 0)  # the solution's input() reads nothing, not the requests
_os.dup2(2, 1)      # its prints go to stderr, not into the replies
_objs = {}


def _handle(v):
    _objs[id(v)] = v
    return {"$h": id(v), "$r": type(v).__name__}


def _ref(x):
    if "$h" in x:
        return _objs[x["$h"]]
    return getattr(_solution, x["$n"])


def _reply(obj, _write=_os.write, _dumps=_dumps):  # bound now: a solution patching os.write hangs nothing
    data = (_dumps(obj) + "\n").encode("utf-8", "surrogatepass")
    while data:
        data = data[_write(_REP, data):]


class _LoadTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _LoadTimeout("loading the solution timed out")


def _kind(v):
    if isinstance(v, _ModuleType):
        return ["module", v.__name__]
    if callable(v):
        return ["callable", None]
    try:
        data = _enc(v, lambda o: (_ for _ in ()).throw(TypeError()))
        if len(_dumps(data)) <= 1 << 16:  # a big table stays behind its name (a handle)
            return ["data", data]
    except (TypeError, ValueError, RecursionError):
        pass
    return ["object", None]


_job = _literal(_REQ.readline())
_solution = _ModuleType("solution")
_solution.__file__ = "solution.py"
_sys.modules["solution"] = _solution
_signal.signal(_signal.SIGALRM, _on_alarm)
_signal.setitimer(_signal.ITIMER_REAL, _job["timeout"])
try:
    exec(compile(_job["code"], "solution.py", "exec"), _solution.__dict__)
    _signal.setitimer(_signal.ITIMER_REAL, 0)
except BaseException as _e:
    _signal.setitimer(_signal.ITIMER_REAL, 0)
    _reply({"load": type(_e).__name__ + ": " + str(_e)[:300]})
    _os._exit(0)
_reply({"names": {k: _kind(v) for k, v in list(_solution.__dict__.items()) if not k.startswith("__")}})

_OPS = {
    "call": lambda o, a, k: o(*a, **k),
    "getattr": lambda o, a, k: getattr(o, a[0]),
    "iter": lambda o, a, k: iter(o),
    "next": lambda o, a, k: next(o),
    "len": lambda o, a, k: len(o),
    "bool": lambda o, a, k: bool(o),
    "str": lambda o, a, k: str(o),
    "repr": lambda o, a, k: repr(o),
    "contains": lambda o, a, k: a[0] in o,
    "getitem": lambda o, a, k: o[a[0]],
}
_MUTABLE = (list, dict, set, bytearray)
for _line in _REQ:
    try:
        _r = _literal(_line)
        _target = _ref(_r["ref"])
        _args = [_dec(x, _ref) for x in _r.get("args", [])]
        _kwargs = {k: _dec(x, _ref) for k, x in _r.get("kwargs", {}).items()}
        try:
            _value = _OPS[_r["op"]](_target, _args, _kwargs)
        except StopIteration:
            _reply({"stop": True})
            continue
        _after = {}
        if _r["op"] == "call":
            _after = {str(i): _enc(x, _handle) for i, x in enumerate(_args) if isinstance(x, _MUTABLE)}
            _after.update({k: _enc(x, _handle) for k, x in _kwargs.items() if isinstance(x, _MUTABLE)})
        _reply({"value": _enc(_value, _handle), "after": _after})
    except BaseException as _e:
        try:
            _reply({"error": [type(_e).__name__, str(_e)[:300]]})
        except BaseException:
            _reply({"error": ["Exception", "unrepresentable error"]})
'''
