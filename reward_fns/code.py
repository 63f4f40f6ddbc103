"""Code verifier: take the program out of a response and run it against the row's tests in the sandbox.

Ground truth (a dict, or the same as a JSON string):

    {"tests": ["assert add(1, 2) == 3", ...]}                 assert-style, run after the response's code
    {"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}     stdin/stdout cases (competitive programming)

either optionally with "timeout_s" (per test; default 5 s).

Code extraction: the last ```python (or ```py / ```python3) block; else the last fenced block of any
kind; else the whole response. Text up to a closing </think> is ignored when there is anything after
it. A final block whose closing fence is missing (the response was cut off) still counts.

Assert-style tests: the verdicts are decided where the solution cannot reach (code_remote.py). The
response's code runs in the sandbox as module `solution` (so an `if __name__ == "__main__":` block
with example usage or input() does not run) and only answers requests for values; each test's code
runs in a separate trusted runner process, with the solution's top-level names bound to proxies,
each test under its own timeout. Values come back as plain data and are compared on the trusted
side; objects that are not data stay in the solution as handles compared by identity. A solution
that patches its interpreter, reads its own process, forges output lines or returns an object equal
to everything can only return values: it never sees a test or an expected value. A test that times
out or kills the solution fails alone (the solution is loaded again for the next one); a solution
that exits or fails at import time passes nothing. Tests share the runner's namespace, and the
solution's state, in order. Costs one more interpreter start (the runner) per response.

Stdin/stdout cases: one sandbox run per case (`python main.py < input`), the response's code as
__main__. Output matches when the lines are equal after stripping trailing whitespace from each
line and dropping trailing blank lines. CPU limit = timeout_s per case, wall limit 2x + 1 s.

Score = passed / total, or with all_or_nothing=True 1.0 only when every test passes (and then the
first failure stops the run). Returns {"score", "passed", "total", "reason"}; the score is in [0, 1]
whatever the program writes. Any text or bytes in a response get a score: code that is not UTF-8
text (a lone surrogate) cannot run and scores 0, logged once per process.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

try:
    from reward_fns import sandbox as _sandbox
except ImportError:  # loaded by file path from outside the project: use the sandbox beside this file
    import importlib.util

    _spec = importlib.util.spec_from_file_location("rlengine_reward_fns_sandbox", Path(__file__).with_name("sandbox.py"))
    _sandbox = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _sandbox
    _spec.loader.exec_module(_sandbox)

log = logging.getLogger(__name__)
_warned_unencodable: list = []
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


_RUNNER_FILE = str(Path(__file__).with_name("code_remote.py"))
_RUNNER_SLACK_S = 10.0  # sandbox start-ups, one restart's load
_idle_runners: list = []
_runners_lock = threading.Lock()


def _forget_runners_after_fork() -> None:
    # a forked child (a process pool) must not share its parent's runner pipes
    global _runners_lock
    _idle_runners.clear()
    _runners_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_runners_after_fork)


class _Runner:
    """A test runner process (code_remote.py), reused for one job after another."""

    def __init__(self):
        import tempfile

        # the runner's sandbox directories live here, so that a runner killed mid-run (or ended by a
        # test's os._exit) leaves nothing behind: whoever sees it die removes the lot
        self.tmp = tempfile.mkdtemp(prefix="rlengine-runner-")
        os.chmod(self.tmp, 0o711)
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", _RUNNER_FILE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={"PATH": _sandbox._CHILD_PATH, "LANG": "C.UTF-8", "TMPDIR": self.tmp})
        self.buf = bytearray()

    def run(self, job: dict, timeout: float) -> tuple[list[dict], str | None]:
        """The job's events, and why they stopped early (None when the runner finished the job)."""
        import select

        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            return [], "the test runner is gone"
        events, deadline, fd = [], time.monotonic() + timeout, self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, _, rest = self.buf.partition(b"\n")
                self.buf = bytearray(rest)
                events.append(json.loads(line))
                if events[-1].get("done"):
                    return events, None
            left = deadline - time.monotonic()
            if left <= 0:
                return events, f"the test runner timed out after {timeout:.0f}s"
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 1 << 16)
                if not data:
                    return events, "the test runner stopped (a test ended its process)"
                self.buf += data

    def kill(self) -> None:
        import shutil

        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _run_in_runner(job: dict, timeout: float) -> tuple[list[dict], str | None]:
    with _runners_lock:
        runner = _idle_runners.pop() if _idle_runners else None
    if runner is not None and runner.proc.poll() is not None:
        runner.kill()
        runner = None
    runner = runner or _Runner()
    events, stopped = runner.run(job, timeout)
    if stopped is None:
        with _runners_lock:
            _idle_runners.append(runner)
    else:
        runner.kill()
    return events, stopped


def _run_asserts(code: str, tests: list[str], timeout_s: float, stop_on_fail: bool, memory_mb: int,
                 max_output_bytes: int) -> tuple[int, str]:
    """The tests run in a trusted runner process (code_remote.py), the solution in the sandbox."""
    job = {"code": code, "tests": list(tests), "timeout": float(timeout_s), "stop_on_fail": bool(stop_on_fail),
           "memory_mb": int(memory_mb), "max_output_bytes": int(max_output_bytes)}
    events, stopped = _run_in_runner(job, timeout_s * (len(tests) + 1) * 2 + _RUNNER_SLACK_S)
    results: dict[int, tuple[bool, str]] = {}
    load_error = None
    for ev in events:
        if "load" in ev:
            load_error = ev["load"]
        elif "test" in ev and 0 <= ev["test"] < len(tests):
            results.setdefault(ev["test"], (ev["ok"] is True, str(ev["msg"])))
        elif "sandbox_error" in ev:
            raise _sandbox.SandboxError(ev["sandbox_error"])
    if load_error is not None:
        return 0, f"solution failed to load: {load_error}"
    passed = sum(ok for ok, _ in results.values())
    first_fail = next(((i, msg) for i, (ok, msg) in sorted(results.items()) if not ok), None)
    missing = [i for i in range(len(tests)) if i not in results]
    if first_fail is not None:
        reason = f"test {first_fail[0]} failed: {first_fail[1]}"
    elif missing and not stop_on_fail:
        reason = f"test {missing[0]} did not finish ({stopped or 'the test runner stopped'})"
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
            reason = f"case {i}: " + ("wrong answer" if r.ok else r.failure())
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
    if isinstance(response, (bytes, bytearray)):
        response = bytes(response).decode("utf-8", "surrogateescape")
    code = extract_code(response if isinstance(response, str) else "")
    if not code.strip():
        return {"score": 0.0, "passed": 0, "total": total, "reason": "no code in the response"}
    try:
        code.encode("utf-8")
    except UnicodeEncodeError as e:  # e.g. a lone surrogate: no interpreter takes it as source
        if not _warned_unencodable:
            _warned_unencodable.append(True)
            log.warning("code: a response that is not UTF-8 text scored 0 (%s); further ones are not logged", e)
        return {"score": 0.0, "passed": 0, "total": total, "reason": f"code is not UTF-8 text: {e.reason}"}
    if kind == "asserts":
        passed, reason = _run_asserts(code, tests, timeout, all_or_nothing, memory_mb, max_output_bytes)
    else:
        passed, reason = _run_io(code, inputs, outputs, timeout, all_or_nothing, memory_mb, max_output_bytes)
    if all_or_nothing:
        score = 1.0 if passed == total else 0.0
    else:
        score = passed / total
    return {"score": score, "passed": passed, "total": total, "reason": f"{passed}/{total} passed; {reason}"}
