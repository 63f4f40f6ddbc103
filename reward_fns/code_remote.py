"""Assert-style tests decided outside the solution's reach (see code.py for the scoring rules).

Two processes per response, neither of which the solution can reach the other from:

* the *solution server* (code_server.py), in the sandbox: loads the response's code as module
  `solution`, then answers requests on its stdin (call this name or handle with these arguments,
  get an attribute, iterate, len, str, ...) with values on its stdout, as plain data (`_CODEC`);
* the *test runner* (this file run as a script, `python -I -S code_remote.py`, by the caller; it is
  trusted): runs each test's own code in its own interpreter with the solution's top-level names
  bound to proxies (`_Remote`) that make those requests, and compares on its side.

A value comes back as JSON data that decodes to builtins only (int, float, str, bytes, list, tuple,
dict, set, frozenset, complex, Fraction, Decimal, None): whatever the solution patches in its own
process (os.write, exec, compile, builtins, __eq__, the harness itself), all it can do is answer
requests, i.e. return values; it never sees the tests, their expected values or their frames. An
object that is not data stays in the solution and comes back as a handle: attributes, calls and
iteration go through it, and comparing a handle (==, !=, <, ...) is an error, so an object whose
__eq__ says yes to everything, or two names returning the same object, decide nothing. Mutated list/dict/set arguments are copied back. Names that
shadow a builtin are not exposed (the tests' `len`, `sorted`, ... stay the real ones); a module the
solution imported is re-imported on the trusted side when it is in the standard library, and so is
a standard module's name that a test uses as `name.attr`, whatever the solution bound to it.

A test that times out, or whose calls kill the solution (exit, crash, a limit), fails alone: the
solution is loaded again in a fresh sandbox for the next test. A test's own crash of the runner
(os._exit in a test) ends the run: the tests not reported count as failed.

Runner protocol: jobs as JSON lines on stdin {"code", "tests", "timeout", "stop_on_fail", "memory_mb",
"max_output_bytes"}, one at a time; for each, JSON lines on stdout: {"load": error} | {"test": i,
"ok": bool, "msg": str} | {"sandbox_error": message}, then {"done": true, "isolation": {...},
"restarts": n}. A runner lives as long as its caller uses it (code.py keeps idle ones), so its
start-up is paid once per caller process, not once per response.
"""
from __future__ import annotations

try:
    from reward_fns.code_server import _CODEC, _SERVER
except ImportError:  # run as the runner script (`python -I -S`) before sys.path has the project
    import importlib.util as _util
    import os as _os

    _spec = _util.spec_from_file_location("rlengine_reward_fns_code_server",
                                          _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "code_server.py"))
    _server_module = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_server_module)
    _CODEC, _SERVER = _server_module._CODEC, _server_module._SERVER

class SolutionError(Exception):
    """An exception raised inside the solution that is not a builtin exception type."""


class SolutionGone(Exception):
    """The solution process stopped answering (exit, crash, a limit, a timeout)."""


class _TestTimeout(BaseException):
    pass


def _exception(kind: str, msg: str) -> BaseException:
    import builtins

    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg)
        except Exception:
            pass
    return SolutionError(f"{kind}: {msg}")


class _Remote:
    """A name or object that lives in the solution process. Only data crosses back."""

    __slots__ = ("_rt", "_ref", "_gen", "_desc")

    def __init__(self, rt, ref: dict, desc: str):
        object.__setattr__(self, "_rt", rt)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_gen", rt.generation)
        object.__setattr__(self, "_desc", desc)

    def _ask(self, op, *args, **kwargs):
        return self._rt.request(self, op, args, kwargs)

    def __call__(self, *args, **kwargs):
        return self._ask("call", *args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        raise TypeError("the solution's objects cannot be modified from a test")

    def __iter__(self):
        it = self._ask("iter")
        if not isinstance(it, _Remote):  # iter() gives an iterator object, never data: a forged reply
            raise SolutionError("iter() of a solution object gave no iterator")
        while True:
            item = self._rt.request(it, "next", (), {})
            if item is _STOP:
                return
            yield item

    def __len__(self):
        return self._ask("len")

    def __bool__(self):
        return self._ask("bool") is True

    def __contains__(self, item):
        return self._ask("contains", item) is True

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __str__(self):
        return self._ask("str")

    def __repr__(self):
        return f"<solution {self._desc}>"

    def _no_verdict(self, other):
        # a verdict never rests on the solution's own comparison, nor on which handle came back
        raise TypeError(f"the solution's {self._desc} object cannot be compared: return plain data")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _no_verdict

    def __hash__(self):
        return hash((self._gen, str(self._ref)))


_STOP = object()


class _Runtime:
    """The solution server: started (and started again after it is lost) on demand."""

    def __init__(self, sandbox, job: dict):
        self.sandbox, self.job = sandbox, job
        self.session = None
        self.generation = 0
        self.names: dict = {}
        self.isolation: dict = {}
        self.restarts = -1
        self.busy = False

    def start(self) -> str | None:
        """Load the solution; its load error, or None."""
        import json

        self.stop()
        self.restarts += 1
        self.generation += 1
        job, n = self.job, len(self.job["tests"])
        budget = job["timeout"] * (n + 1)
        limits = self.sandbox.Limits(cpu_s=budget, wall_s=budget + 1.0 + 0.1 * n, memory_mb=job["memory_mb"],
                                     max_output_bytes=job["max_output_bytes"])
        self.session = self.sandbox.Session(_SERVER, limits)
        first = ascii({"code": job["code"], "timeout": job["timeout"]}) + "\n"  # (code_server's _literal)
        self.busy = True
        reply = None
        if self.session.send(first.encode("utf-8", "surrogatepass"), timeout=job["timeout"] + 2):
            line = self.session.recv_line(job["timeout"] + 2.0)
            reply = self._parse(line) if line is not None else None
        self.busy = False
        if not isinstance(reply, dict) or not ("names" in reply or "load" in reply):
            return "solution did not load (" + self._why() + ")"
        if "load" in reply:
            return str(reply["load"])
        self.names = reply["names"] if isinstance(reply["names"], dict) else {}
        return None

    def _why(self) -> str:
        r = self.stop()
        return "no reply" if r is None else r.failure()

    def stop(self):
        s, self.session = self.session, None
        if s is None:
            return None
        r = s.kill()
        if r is not None:
            self.isolation = r.isolation
        return r

    @staticmethod
    def _parse(line: bytes):
        import json

        try:
            return json.loads(line.decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError, UnicodeDecodeError):
            return None

    def _ref_of(self, x):
        if isinstance(x, _Remote):
            if x._gen != self.generation:
                raise SolutionGone("an object of an earlier run of the solution")
            return x._ref
        raise TypeError(f"cannot pass a {type(x).__name__} to the solution")

    def encode(self, v):
        return _enc(v, lambda o: self._ref_of(o))

    def decode(self, v):
        def ref(x):
            if "$h" in x and type(x["$h"]) is int:
                desc = x.get("$r") if type(x.get("$r")) is str else "object"
                return _Remote(self, {"$h": x["$h"]}, desc[:60])
            raise ValueError("bad reference")

        return _dec(v, ref)

    def request(self, target: _Remote, op: str, args: tuple, kwargs: dict):
        import json

        if self.session is None or target._gen != self.generation:
            raise SolutionGone("the solution is not running")
        msg = {"op": op, "ref": target._ref, "args": [self.encode(a) for a in args],
               "kwargs": {str(k): self.encode(v) for k, v in kwargs.items()}}
        data = (ascii(msg) + "\n").encode()
        self.busy = True
        if not self.session.send(data, timeout=self.job["timeout"] + 1):
            raise SolutionGone("the solution stopped reading (" + self._why() + ")")
        line = self.session.recv_line(self.job["timeout"] * (len(self.job["tests"]) + 2))
        if line is None:
            raise SolutionGone("the solution stopped answering (" + self._why() + ")")
        self.busy = False
        reply = self._parse(line)
        error = reply.get("error") if isinstance(reply, dict) else None
        if isinstance(error, list) and len(error) == 2:
            raise _exception(str(error[0])[:60], str(error[1])[:300])
        try:
            if not isinstance(reply, dict):
                raise ValueError("not a reply")
            if reply.get("stop") is True and op == "next":
                return _STOP
            value = self.decode(reply["value"])
            after = reply.get("after") or {}
            for key, state in (after.items() if isinstance(after, dict) else ()):
                orig = args[int(key)] if key.isdigit() and int(key) < len(args) else kwargs.get(key)
                _copy_back(orig, self.decode(state))
            return value
        except Exception as e:  # noqa: BLE001 - whatever a reply holds, it is this one call's failure
            raise SolutionError(f"unreadable reply from the solution: {type(e).__name__}") from None


def _copy_back(orig, new) -> None:
    if type(orig) is list and type(new) is list and orig != new:
        orig[:] = new
    elif type(orig) is dict and type(new) is dict and orig != new:
        orig.clear()
        orig.update(new)
    elif type(orig) is set and type(new) is set and orig != new:
        orig.clear()
        orig.update(new)
    elif type(orig) is bytearray and type(new) is bytes and orig != new:
        orig[:] = new


def _bind_names(rt: _Runtime, ns: dict, module, tests: list) -> None:
    """The solution's top-level names as the tests see them (module docstring). A test that uses
    `math.isclose` without importing math gets the real math, whatever the solution calls `math`."""
    import builtins
    import importlib
    import re
    import sys

    for name, kind in rt.names.items():
        if not (isinstance(name, str) and name.isidentifier()) or hasattr(builtins, name):
            continue
        if not (isinstance(kind, list) and len(kind) == 2):
            continue
        what, extra = kind
        if name in sys.stdlib_module_names and what != "module" and any(
                re.search(rf"\b{name}\s*\.", t) for t in tests):
            what, extra = "module", name
        if what == "module":  # `import math`, `import os.path`: not an alias of the solution's choosing
            if str(extra).split(".")[0] not in sys.stdlib_module_names or name not in (extra, str(extra).split(".")[-1]):
                continue
            try:
                value = importlib.import_module(str(extra))
            except Exception:
                continue
        elif what == "data":
            try:
                value = rt.decode(extra)
            except Exception:  # noqa: BLE001 - e.g. Fraction(1, 0): a bad value binds nothing
                continue
        else:
            value = _Remote(rt, {"$n": name}, name)
        ns[name] = value
        setattr(module, name, value)


def _main() -> None:
    import json
    import os
    import sys

    jobs = os.fdopen(os.dup(0), "rb")
    out = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the tests read nothing
    os.dup2(2, 1)  # the tests' own prints must not mix with the verdicts

    def emit(obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(out, data):]

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(here))
    try:
        from reward_fns import sandbox
    except ImportError:
        import importlib.util

        spec = importlib.util.spec_from_file_location("rlengine_reward_fns_sandbox", os.path.join(here, "sandbox.py"))
        sandbox = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = sandbox
        spec.loader.exec_module(sandbox)

    for line in jobs:  # one runner serves a caller's jobs one after another
        job = json.loads(line)
        try:
            _run_tests(sandbox, job, emit)
        except sandbox.SandboxError as e:  # the sandbox failing is the caller's exception, not a failed test
            emit({"sandbox_error": str(e)})
            emit({"done": True, "isolation": {}, "restarts": 0})
    tmp = os.environ.get("TMPDIR", "")  # the caller's directory for this runner (code.py), empty by now
    if os.path.basename(tmp).startswith("rlengine-runner-"):
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _run_tests(sandbox, job: dict, emit) -> None:
    import signal
    import sys
    import types

    def on_alarm(signum, frame):
        raise _TestTimeout(f"test timed out after {job['timeout']}s")

    rt = _Runtime(sandbox, job)
    err = rt.start()
    if err is not None:
        emit({"load": err})
        rt.stop()
        emit({"done": True, "isolation": rt.isolation, "restarts": 0})
        return
    module = types.ModuleType("solution")
    sys.modules["solution"] = module
    ns: dict = {"__name__": "__tests__"}  # fresh for every job: nothing of one response's tests reaches the next
    _bind_names(rt, ns, module, job["tests"])
    signal.signal(signal.SIGALRM, on_alarm)
    for i, test in enumerate(job["tests"]):
        if rt.session is None:
            if rt.start() is not None:
                emit({"test": i, "ok": False, "msg": "the solution did not load again after the last test"})
                continue
            _bind_names(rt, ns, module, job["tests"])
        ok, msg = False, ""
        signal.setitimer(signal.ITIMER_REAL, job["timeout"])
        try:
            exec(compile(test, f"test_{i}", "exec", optimize=0), ns)  # asserts kept, whatever the flags
            ok = True
        except BaseException as e:  # noqa: BLE001 - SystemExit and the timeout are a failed test too
            msg = type(e).__name__ + (f": {e}" if str(e) else "")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if rt.busy:  # interrupted mid-request: its reply would answer the next one
            rt.busy = False
            rt.stop()
        emit({"test": i, "ok": ok, "msg": msg[:300]})
        if not ok and job["stop_on_fail"]:
            break
    rt.stop()
    emit({"done": True, "isolation": rt.isolation, "restarts": rt.restarts})


exec(_CODEC)  # _enc and _dec, the same source the server runs

if __name__ == "__main__":
    _main()
