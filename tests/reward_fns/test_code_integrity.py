"""Assert-style scores decided outside the solution's reach (code_remote.py): every way of raising
the score without solving the task scores 0, and legitimate solutions of every shape score 1."""
from __future__ import annotations

import json

import pytest

from reward_fns.code import compute_score
from sandbox_support import REPO

# the task: add(a, b); every attack below returns a wrong sum unless it cheats
TESTS = {"tests": ["assert add(1, 2) == 3", "assert add(2, 5) == 7", "assert add(4, 4) == 8"]}
WRONG = "def add(a, b):\n    return 0\n"

ATTACKS = {
    "always-equal object": "class Yes:\n    def __eq__(self, other): return True\n    __hash__ = object.__hash__\n"
                           "def add(a, b):\n    return Yes()\n",
    "int subclass always equal": "class I(int):\n    def __eq__(self, o): return True\n"
                                 "def add(a, b):\n    return I(0)\n",
    "forged report lines": WRONG + "for i in range(25):\n    print(f'{i} pass', flush=True)\n"
                           "import os\nfor fd in range(3, 12):\n    try:\n"
                           "        os.write(fd, b'{\"test\": 0, \"ok\": true, \"msg\": \"\"}\\n')\n"
                           "    except OSError:\n        pass\n",
    "forged verdicts on the reply channel": WRONG + "import os\nfor i in range(25):\n    for fd in range(3, 10):\n"
                                            "        try:\n            os.write(fd, ('{\"test\": %d, \"ok\": true, \"msg\": \"\"}\\n' % i).encode())\n"
                                            "        except OSError:\n            pass\n",
    "patched os.write, exec and compile": WRONG + "import os, builtins\nos.write = lambda fd, b: len(b)\n"
                                           "builtins.exec = lambda *a, **k: None\n"
                                           "builtins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n",
    "tests list emptied through gc": WRONG + "import gc\nfor o in gc.get_objects():\n"
                                     "    if isinstance(o, list) and any('assert' in str(x) for x in o[:5]):\n"
                                     "        o.clear()\n",
    "shadowed builtins": "def len(x):\n    return 3\ndef sorted(x, **k):\n    return [1, 2, 3]\n"
                         "def isinstance(a, b):\n    return True\ndef add(a, b):\n    return 'xyz'\n",
    "expected value read from the caller's frame": "import sys\ndef add(a, b):\n    f = sys._getframe(1)\n"
                                                    "    while f is not None:\n"
                                                    "        for v in list(f.f_locals.values()):\n"
                                                    "            if isinstance(v, str) and '==' in v:\n"
                                                    "                return eval(v.split('==')[1])\n"
                                                    "        f = f.f_back\n    return 0\n",
    "exit at import": "import os\nos._exit(0)\n",
    "raise SystemExit in the call": "def add(a, b):\n    raise SystemExit(0)\n",
    "raises AssertionError-free BaseException": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "assert stripped with optimize": WRONG + "import sys\nsys.flags = None\n",
    "fake math module": "import types\nmath = types.ModuleType('math')\nmath.isclose = lambda *a, **k: True\n"
                        "def add(a, b):\n    return 0\n",
    "fake math class": "class math:\n    isclose = staticmethod(lambda *a, **k: True)\n"
                       "def add(a, b):\n    return 0\n",
    "one object for the answer and the expected value": "_o = object()\ndef add(a, b):\n    return _o\n"
                                                          "def expected(*a):\n    return _o\n",
    "not-equal to everything": "class N:\n    def __ne__(self, o): return True\n    def __eq__(self, o): return False\n"
                               "def add(a, b):\n    return N()\n",
    "reply forged before each request": "import os\ndef add(a, b):\n    for fd in range(3, 10):\n        try:\n"
                                        "            os.write(fd, b'{\"value\": 99, \"after\": {}}\\n')\n"
                                        "        except OSError:\n            pass\n    return 99\n",
    "load reply forged at import": "import os\nforged = '{\"names\": {\"add\": [\"module\", \"operator\"], "
                                   "\"x\": [\"data\", {\"$q\": [1, 0]}]}}'\n"
                                   "for fd in range(3, 10):\n    try:\n        os.write(fd, forged.encode() + bytes([10]))\n"
                                   "    except OSError:\n        pass\ndef add(a, b):\n    return 0\n",
    "recursive data": "def add(a, b):\n    x = []\n    x.append(x)\n    return x\n",
    "deeply nested data": "def add(a, b):\n    x = 0\n    for _ in range(100000):\n        x = [x]\n    return x\n",
    "lone surrogate": "def add(a, b):\n    return '\\ud800'\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_scores_zero(name):
    tests = TESTS
    if name == "one object for the answer and the expected value":
        tests = {"tests": ["assert add(1, 2) == expected(3)", "assert add(2, 5) == expected(7)"]}
    if name == "not-equal to everything":
        tests = {"tests": ["assert add(1, 2) != 4", "assert add(2, 5) != 8"]}
    if name in ("fake math module", "fake math class"):
        tests = {"tests": ["assert math.isclose(add(1, 2), 3)", "assert math.isclose(add(2, 5), 7)"]}
    if name == "shadowed builtins":
        tests = {"tests": ["assert len(add(1, 2)) == 3 and sorted(add(1, 2)) == [1, 2, 3]",
                           "assert isinstance(add(1, 2), int)"]}
    out = compute_score("p", f"```python\n{ATTACKS[name]}```", tests)
    assert out["score"] == 0.0 and out["passed"] == 0, out


def test_scores_stay_in_unit_range_whatever_the_program_writes():
    code = "def add(a, b):\n    return a + b\nimport os\nfor i in range(50):\n" \
           "    os.write(1, b'{\"test\": %d, \"ok\": true}\\n' % i)\n"
    out = compute_score("p", code, TESTS)
    assert out == {"score": 1.0, "passed": 3, "total": 3, "reason": "3/3 passed; all tests passed"}


CONTROLS = {
    "class with methods": ("class Solution:\n    def __init__(self):\n        self.n = 0\n"
                           "    def twoSum(self, nums, target):\n        seen = {}\n"
                           "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                           "                return [seen[target - x], i]\n            seen[x] = i\n",
                           ["assert Solution().twoSum([2, 7, 11, 15], 9) == [0, 1]",
                            "s = Solution()\nassert s.n == 0 and s.twoSum([3, 3], 6) == [0, 1]"]),
    "generator": ("def evens(n):\n    for i in range(n):\n        if i % 2 == 0:\n            yield i\n",
                  ["assert list(evens(7)) == [0, 2, 4, 6]", "assert sum(evens(5)) == 6",
                   "assert [x * 2 for x in evens(3)] == [0, 4]"]),
    "in-place mutation": ("def rev(xs):\n    xs.reverse()\n", ["a = [1, 2, 3]\nrev(a)\nassert a == [3, 2, 1]"]),
    "expected exception": ("def sqrt(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n",
                           ["try:\n    sqrt(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError",
                            "assert abs(sqrt(2) - 1.41421356) < 1e-6"]),
    "module constant and import the test relies on": (
        "import math\nLIMIT = 10\ndef area(r):\n    return math.pi * r * r\n",
        ["assert math.isclose(area(2), 12.566370614359172)", "assert LIMIT == 10"]),
    "from solution import and check(candidate)": (
        "def inc(x):\n    return x + 1\n",
        ["from solution import inc as f\nassert f(1) == 2",
         "def check(candidate):\n    assert candidate(3) == 4\n    assert candidate(-1) == 0\ncheck(inc)"]),
    "containers, tuples, sets, dicts, None, floats": (
        "from collections import Counter, OrderedDict\ndef stats(xs):\n"
        "    return (min(xs), max(xs)), set(xs), Counter(xs), OrderedDict(a=1), None, float('inf')\n",
        ["assert stats([1, 2, 2]) == ((1, 2), {1, 2}, {1: 1, 2: 2}, {'a': 1}, None, float('inf'))"]),
    "fractions, decimals, bytes, complex": (
        "from fractions import Fraction\nfrom decimal import Decimal\n"
        "def third():\n    return Fraction(1, 3), Decimal('0.1'), b'\\x00ab', 1 + 2j\n",
        ["import decimal\nassert third() == (Fraction(1, 3), decimal.Decimal('0.1'), b'\\x00ab', 1 + 2j)"]),
    "recursion, prints and stdin-free input()": (
        "import sys\nsys.setrecursionlimit(10000)\nprint('hello')\n"
        "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n",
        ["assert depth(3000) == 3000"]),
    "threads and a subprocess": (
        "import subprocess, sys, threading\ndef work():\n    out = []\n"
        "    t = threading.Thread(target=lambda: out.append(sum(range(1000))))\n    t.start(); t.join()\n"
        "    p = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True)\n"
        "    return out[0], int(p.stdout)\n",
        ["assert work() == (499500, 42)"]),
    "temporary files and CPU-heavy work": (
        "import os, tempfile\ndef roundtrip(text):\n    with tempfile.TemporaryDirectory() as d:\n"
        "        p = os.path.join(d, 'x.txt')\n        open(p, 'w').write(text)\n"
        "        return open(p).read()\n"
        "def primes(n):\n    return [k for k in range(2, n) if all(k % d for d in range(2, int(k ** 0.5) + 1))]\n",
        ["assert roundtrip('hello') == 'hello'", "assert len(primes(60000)) == 6057"]),
    "state across tests": ("calls = []\ndef log(x):\n    calls.append(x)\n    return len(calls)\n",
                           ["assert log('a') == 1", "assert log('b') == 2"]),
}


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_legitimate_solution_scores_one(name):
    code, tests = CONTROLS[name]
    out = compute_score("p", f"```python\n{code}```", json.dumps({"tests": tests}))
    assert out["score"] == 1.0, out


def test_a_test_that_kills_the_solution_fails_alone():
    code = "import os\ndef f(x):\n    if x < 0:\n        os._exit(3)\n    return x\n"
    out = compute_score("p", code, {"tests": ["assert f(1) == 1", "f(-1)", "assert f(2) == 2"]})
    assert (out["passed"], out["total"]) == (2, 3) and "SolutionGone" in out["reason"]


def test_a_hanging_call_fails_alone_and_the_solution_is_reloaded():
    code = "def f(x):\n    while x < 0:\n        pass\n    return x\n"
    out = compute_score("p", code, {"tests": ["assert f(-1) == 0", "assert f(2) == 2"], "timeout_s": 0.5})
    assert (out["passed"], out["total"]) == (1, 2) and "timed out" in out["reason"]


@pytest.mark.parametrize("response", ["\ud800", "def add(a, b):\n    return a + b  # \ud800\n",
                                      b"\xff\xfe garbage".decode("utf-8", "surrogateescape")])
def test_unencodable_responses_score_zero(response):
    for gt in (TESTS, {"inputs": ["1 2\n"], "outputs": ["3\n"]}):
        out = compute_score("p", response, gt)
        assert out["score"] == 0.0, out


def test_a_response_as_bytes_is_scored():
    assert compute_score("p", b"def add(a, b):\n    return a + b\n", TESTS)["score"] == 1.0
    assert compute_score("p", b"\xff\xfe\x00", TESTS)["score"] == 0.0


@pytest.fixture
def dataset_in_the_checkout():
    """A world-readable dataset file in the project checkout (where training data often lives;
    outside /tmp, which a private tmpfs would hide anyway)."""
    import shutil
    import uuid

    d = REPO / f".test-data-{uuid.uuid4().hex}"
    d.mkdir(mode=0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_io_program_cannot_find_the_expected_output_on_the_host(dataset_in_the_checkout):
    """The expected output sits in a dataset file on the host; the program looks everywhere it could be."""
    secret, tmp_path = "4242424242", dataset_in_the_checkout
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"inputs": ["1\n"], "outputs": [secret + "\n"]}) + "\n")
    data.chmod(0o644)
    code = ("import os, sys\nfound = None\n"
            f"for root in ({str(tmp_path)!r}, {str(REPO)!r}, '/tmp', '/work', '/root', '/home', os.getcwd(), '/'):\n"
            "    for d, _, files in os.walk(root):\n"
            "        for f in files:\n"
            "            try:\n"
            "                t = open(os.path.join(d, f), errors='ignore').read(1 << 20)\n"
            "            except OSError:\n                continue\n"
            "            if '\"outputs\"' in t:\n                found = t.split('\"outputs\": [\"')[1].split('\\\\n')[0]\n"
            "                break\n        if found: break\n    if found: break\n"
            "print(found or 'nothing')\n")
    out = compute_score("p", code, {"inputs": ["1\n"], "outputs": [secret + "\n"], "timeout_s": 5})
    assert out["score"] == 0.0 and "wrong answer" in out["reason"], out


def test_a_daemon_started_by_the_solution_does_not_outlive_the_score():
    import subprocess
    import time
    import uuid

    tag = uuid.uuid4().hex
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', ['/bin/sleep', '300', '{tag}']) if os.path.exists('/bin/sleep') else time.sleep(300)\n"
            "    os._exit(0)\ndef add(a, b):\n    return a + b\n")
    assert compute_score("p", code, TESTS)["score"] == 1.0
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert tag not in ps
