"""Code verifier: take the program out of a response and run it against the row's tests in the sandbox.

Ground truth (a dict, or the same as a JSON string):

    {"tests": ["assert add(1, 2) == 3", ...]}                 assert-style, run after the response's code
    {"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}     stdin/stdout cases (competitive programming)

either optionally with "timeout_s" (per test; default 5 s).

Code extraction: the last ```python (or ```py / ```python3) block; else the last fenced block of any
kind; else the whole response. Text up to a closing </think> is ignored when there is anything after
it. A final block whose closing fence is missing (the response was cut off) still counts.

Assert-style tests: ONE sandbox run per response. The response's code is executed as module
`solution` (so an `if __name__ == "__main__":` block with example usage or input() does not run),
then each test in that module's namespace, each under its own timeout (an interval timer), each
reporting pass/fail on a private line tagged with a random nonce. A test that produced no report
(the program exited, crashed, or hit a limit first) counts as failed; so a response that calls
exit(0) at import time passes nothing. Trade-off, chosen for cost (one interpreter per response
instead of one per test): tests share the module's state, and a test that ignores its timer
(e.g. swallows BaseException in a loop) uses up the run's budget for the tests after it. The
in-process report can be forged by code that deliberately reads the harness (it is in the same
process): the sandbox protects the machine, not the score, from a determined adversary.

Stdin/stdout cases: one sandbox run per case (`python main.py < input`), the response's code as
__main__. Output matches when the lines are equal after stripping trailing whitespace from each
line and dropping trailing blank lines. CPU limit = timeout_s per case, wall limit 2x + 1 s.

Score = passed / total, or with all_or_nothing=True 1.0 only when every test passes (and then the
first failure stops the run). Returns {"score", "passed", "total", "reason"}.
"""
from __future__ import annotations

import json
import math
import re
import secrets
import textwrap

try:
    from reward_fns import sandbox as _sandbox
except ImportError:  # loaded by file path from outside the project: use the sandbox beside this file
    import importlib.util
    import sys
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location("rlengine_reward_fns_sandbox", Path(__file__).with_name("sandbox.py"))
    _sandbox = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _sandbox
    _spec.loader.exec_module(_sandbox)

DEFAULT_TIMEOUT_S = 5.0
_PY_LANGS = {"python", "py", "python3", "py3"}
_FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^\n`]*$")


def extract_code(response: str) -> str:
    """The program in a response (see the module docstring)."""
    text = response or ""
    if "</think>" in text:
        tail = text.rsplit("</think>", 1)[1]
        if tail.strip():
            text = tail
    blocks = []  # (language, code)
    fence, lang, lines = None, "", []
    for line in text.split("\n"):
        m = _FENCE_RE.match(line)
        if fence is None:
            if m:
                fence, lang, lines = m.group(1), m.group(2).lower(), []
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2):
            blocks.append((lang, "\n".join(lines)))
            fence = None
        else:
            lines.append(line)
    if fence is not None and lines:  # cut off before the closing fence
        blocks.append((lang, "\n".join(lines)))
    for wanted in (lambda l: l in _PY_LANGS, lambda l: l == "", lambda l: True):
        found = [code for l, code in blocks if wanted(l)]
        if found:
            return textwrap.dedent(found[-1]).strip("\n") + "\n"
    return text.strip("\n") + "\n"


def _parse_ground_truth(ground_truth) -> dict:
    if isinstance(ground_truth, (bytes, bytearray)):
        ground_truth = ground_truth.decode()
    if isinstance(ground_truth, str):
        ground_truth = json.loads(ground_truth)
    if not isinstance(ground_truth, dict):
        raise ValueError(f"code ground truth must be a dict (or JSON of one), got {type(ground_truth).__name__}")
    return ground_truth


def _normalize(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _as_text(x) -> str:
    if isinstance(x, (list, tuple)):  # some datasets store a case as a list of lines
        return "\n".join(str(v) for v in x) + "\n"
    return str(x)


def _limits(timeout_s: float, wall_s: float, memory_mb: int, max_output_bytes: int) -> "_sandbox.Limits":
    return _sandbox.Limits(cpu_s=timeout_s, wall_s=wall_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes)


def _describe_failure(r) -> str:
    if r.timed_out:
        return "wall-clock timeout"
    if r.cpu_exceeded:
        return "CPU time limit"
    if r.truncated:
        return "output limit"
    if r.killed_by_signal:
        return f"killed by signal {r.killed_by_signal}"
    last = [line for line in r.stderr.strip().splitlines() if line.strip()]
    return f"exit {r.returncode}" + (f": {last[-1][:200]}" if last else "")


_HARNESS = '''\
import os as _os, signal as _signal, sys as _sys, types as _types
_NONCE = {nonce!r}
_CODE = {code!r}
_TESTS = {tests!r}
_TIMEOUT = {timeout!r}
_STOP_ON_FAIL = {stop!r}
_REPORT = _os.dup(1)


def _emit(*parts):
    line = "\\n" + " ".join([_NONCE] + [str(p).replace("\\n", " ")[:300] for p in parts]) + "\\n"
    _os.write(_REPORT, line.encode("utf-8", "replace"))


class _SandboxTestTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _SandboxTestTimeout("test timed out after %ss" % _TIMEOUT)


def _timed(source, name, namespace):
    _signal.signal(_signal.SIGALRM, _on_alarm)
    _signal.setitimer(_signal.ITIMER_REAL, _TIMEOUT)
    try:
        exec(compile(source, name, "exec"), namespace)
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)


_solution = _types.ModuleType("solution")
_solution.__file__ = "solution.py"
_sys.modules["solution"] = _solution
try:
    _timed(_CODE, "solution.py", _solution.__dict__)
except BaseException as _e:
    _emit("load", type(_e).__name__ + ": " + str(_e))
    _os._exit(0)
_emit("loaded")
for _i, _test in enumerate(_TESTS):
    try:
        _timed(_test, "test_%d" % _i, _solution.__dict__)
        _emit(_i, "pass")
    except BaseException as _e:
        _emit(_i, "fail", type(_e).__name__ + (": " + str(_e) if str(_e) else ""))
        if _STOP_ON_FAIL:
            break
try:
    _sys.stdout.flush()
finally:
    _os._exit(0)
'''


def _run_asserts(code: str, tests: list[str], timeout_s: float, stop_on_fail: bool, memory_mb: int,
                 max_output_bytes: int) -> tuple[int, str]:
    nonce = secrets.token_hex(16)
    harness = _HARNESS.format(nonce=nonce, code=code, tests=list(tests), timeout=float(timeout_s), stop=stop_on_fail)
    budget = timeout_s * (len(tests) + 1)
    r = _sandbox.run(harness, limits=_limits(budget, budget + 1.0 + 0.1 * len(tests), memory_mb, max_output_bytes))
    results: dict[int, tuple[bool, str]] = {}
    load_error = None
    for line in r.stdout.splitlines():
        at = line.find(nonce + " ")  # the program's own unterminated output may precede it
        if at < 0:
            continue
        parts = line[at + len(nonce) + 1:].split(" ", 2)
        if parts[0] == "load":
            load_error = " ".join(parts[1:])
        elif parts[0].isdigit() and len(parts) >= 2:
            results.setdefault(int(parts[0]), (parts[1] == "pass", parts[2] if len(parts) > 2 else ""))
    passed = sum(ok for ok, _ in results.values())
    if load_error is not None:
        return 0, f"solution failed to load: {load_error}"
    first_fail = next(((i, msg) for i, (ok, msg) in sorted(results.items()) if not ok), None)
    missing = [i for i in range(len(tests)) if i not in results]
    if first_fail is not None:
        reason = f"test {first_fail[0]} failed: {first_fail[1]}"
    elif missing:
        reason = f"test {missing[0]} did not finish ({_describe_failure(r)})"
    else:
        reason = "all tests passed"
    return passed, reason


def _run_io(code: str, inputs: list, outputs: list, timeout_s: float, stop_on_fail: bool, memory_mb: int,
            max_output_bytes: int) -> tuple[int, str]:
    limits = _limits(timeout_s, 2 * timeout_s + 1.0, memory_mb, max_output_bytes)
    passed, reason = 0, None
    for i, (inp, want) in enumerate(zip(inputs, outputs)):
        r = _sandbox.run(code, stdin=_as_text(inp), limits=limits)
        if r.ok and _normalize(r.stdout) == _normalize(_as_text(want)):
            passed += 1
            continue
        if reason is None:
            reason = f"case {i}: " + ("wrong answer" if r.ok else _describe_failure(r))
        if stop_on_fail:
            break
    return passed, reason or "all cases passed"


def compute_score(prompt: str, response: str, ground_truth, all_or_nothing: bool = False,
                  timeout_s: float | None = None, memory_mb: int = 1024, max_output_bytes: int = 1 << 20,
                  **extra) -> dict:
    """Fraction of the row's tests that the response's code passes (see the module docstring).
    `timeout_s` overrides the row's; extra keyword arguments are accepted and ignored."""
    gt = _parse_ground_truth(ground_truth)
    timeout = float(timeout_s if timeout_s is not None else gt.get("timeout_s", DEFAULT_TIMEOUT_S))
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout_s must be a positive number, got {timeout!r}")
    if "tests" in gt:
        tests = gt["tests"]
        tests = [tests] if isinstance(tests, str) else list(tests)
        kind = "asserts"
    elif "inputs" in gt and "outputs" in gt:
        inputs, outputs = list(gt["inputs"]), list(gt["outputs"])
        if len(inputs) != len(outputs):
            raise ValueError(f"ground truth has {len(inputs)} inputs but {len(outputs)} outputs")
        kind = "io"
    else:
        raise ValueError(f"code ground truth needs 'tests' or 'inputs'+'outputs'; keys: {sorted(gt)}")
    total = len(tests) if kind == "asserts" else len(inputs)
    if total == 0:
        raise ValueError("code ground truth has no tests")
    code = extract_code(response)
    if not code.strip():
        return {"score": 0.0, "passed": 0, "total": total, "reason": "no code in the response"}
    if kind == "asserts":
        passed, reason = _run_asserts(code, tests, timeout, all_or_nothing, memory_mb, max_output_bytes)
    else:
        passed, reason = _run_io(code, inputs, outputs, timeout, all_or_nothing, memory_mb, max_output_bytes)
    if all_or_nothing:
        score = 1.0 if passed == total else 0.0
    else:
        score = passed / total
    return {"score": score, "passed": passed, "total": total, "reason": f"{passed}/{total} passed; {reason}"}
