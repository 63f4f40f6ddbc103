"""Code verifier: extraction, assert-style tests, stdin/stdout cases, scoring modes."""
from __future__ import annotations

import json
import time

import pytest

from reward_fns.code import compute_score, extract_code

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = {"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add(0, 0) == 0",
                       "assert add(-1, 1) == 0"]}
SUM_IO = {"inputs": ["1 2\n", "3 4\n", "10 -3\n"], "outputs": ["3\n", "7\n", "7\n"]}
SUM_PROG = "a, b = map(int, input().split())\nprint(a + b)\n"


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code}```\nIt adds the numbers."


# ------------------------------------------------------------------------------------------------
# Extraction
# ------------------------------------------------------------------------------------------------

def test_extract_last_python_block():
    resp = "First try:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\n```\nRun it with:\n```bash\npython a.py\n```"
    assert extract_code(resp) == "x = 2\n"


def test_extract_py_alias_plain_fence_and_other_languages():
    assert extract_code("```py\nprint(1)\n```") == "print(1)\n"
    assert extract_code("text\n```\nprint(2)\n```\nmore") == "print(2)\n"
    assert extract_code("```\nprint(2)\n```\n```text\nsample output\n```") == "print(2)\n"  # untagged before text
    assert extract_code("```cpp\nint main() {}\n```") == "int main() {}\n"  # nothing better: it will fail to run


def test_extract_whole_response_without_fence():
    assert extract_code("print('no fence')\n") == "print('no fence')\n"


def test_extract_unterminated_block_and_indented_fence():
    assert extract_code("Solution:\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code("1. code:\n   ```python\n   def f():\n       return 1\n   ```\n") == "def f():\n    return 1\n"


def test_extract_ignores_reasoning_before_think_close():
    resp = "<think>\n```python\nwrong = True\n```\n</think>\nFinal:\n```python\nright = True\n```"
    assert extract_code(resp) == "right = True\n"
    assert extract_code("<think>\n```python\nonly = 1\n```\n</think>\n") == "only = 1\n"  # nothing after it


def test_extract_keeps_backticks_inside_code():
    code = 's = "```"\nprint(s)\n'
    assert extract_code(f"```python\n{code}```") == code


# ------------------------------------------------------------------------------------------------
# Assert-style tests
# ------------------------------------------------------------------------------------------------

def test_assert_tests_fraction_and_reason():
    out = compute_score("p", fenced(ADD), ADD_TESTS)
    assert out["score"] == 0.75 and (out["passed"], out["total"]) == (3, 4)
    assert "test 1 failed: AssertionError" in out["reason"]


def test_ground_truth_as_json_string_and_extra_kwargs():
    out = compute_score("p", fenced(ADD), json.dumps(ADD_TESTS), data_source="mbpp", index=7)
    assert out["score"] == 0.75


def test_all_or_nothing():
    assert compute_score("p", fenced(ADD), ADD_TESTS, all_or_nothing=True)["score"] == 0.0
    good = {"tests": ADD_TESTS["tests"][:1] + ADD_TESTS["tests"][2:]}
    assert compute_score("p", fenced(ADD), good, all_or_nothing=True) == {
        "score": 1.0, "passed": 3, "total": 3, "reason": "3/3 passed; all tests passed"}


def test_main_block_of_the_response_does_not_run():
    code = ADD + "if __name__ == '__main__':\n    print(add(int(input()), 1))\n"
    assert compute_score("p", fenced(code), ADD_TESTS)["passed"] == 3


def test_early_exit_passes_nothing():
    for exit_call in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "exit()"):
        out = compute_score("p", fenced(ADD + exit_call + "\n"), ADD_TESTS)
        assert out["score"] == 0.0, (exit_call, out)


def test_exit_inside_a_test_fails_only_that_test():
    tests = {"tests": ["assert add(1, 2) == 3", "import sys; sys.exit(0)", "assert add(1, 1) == 2"]}
    out = compute_score("p", fenced(ADD), tests)
    assert out["passed"] == 2 and "SystemExit" in out["reason"]


def test_forged_report_lines_do_not_count():
    code = ADD + "print('0 pass\\n1 pass\\n2 pass\\n3 pass')\nimport sys\nsys.stdout.flush()\n"
    assert compute_score("p", fenced(code), ADD_TESTS)["passed"] == 3


def test_unterminated_output_before_a_report():
    code = ADD + "import sys\nsys.stdout.write('no newline')\nsys.stdout.flush()\n"
    assert compute_score("p", fenced(code), ADD_TESTS)["passed"] == 3


def test_hanging_test_times_out_alone():
    tests = {"tests": ["assert add(1, 2) == 3", "while True:\n    pass", "assert add(1, 1) == 2"], "timeout_s": 0.5}
    t0 = time.monotonic()
    out = compute_score("p", fenced(ADD), tests)
    assert out["passed"] == 2 and "timed out" in out["reason"] and time.monotonic() - t0 < 4


def test_solution_that_fails_to_load():
    out = compute_score("p", fenced("def add(a, b):\n    return a +\n"), ADD_TESTS)
    assert out["score"] == 0.0 and "SyntaxError" in out["reason"]
    out = compute_score("p", fenced("import numpy_that_does_not_exist\n"), ADD_TESTS)
    assert out["score"] == 0.0 and "ModuleNotFoundError" in out["reason"]


def test_program_crash_counts_unreported_tests_as_failed():
    tests = {"tests": ["assert add(1, 2) == 3", "import os; os._exit(1)", "assert add(1, 1) == 2"]}
    out = compute_score("p", fenced(ADD), tests)
    assert out["passed"] == 1 and "did not finish" in out["reason"]


def test_single_test_string():
    assert compute_score("p", fenced(ADD), {"tests": "assert add(1, 2) == 3\nassert add(1, 1) == 2"})["score"] == 1.0


def test_no_code():
    assert compute_score("p", "", ADD_TESTS)["reason"] == "no code in the response"


@pytest.mark.parametrize("gt", [{"expected": 1}, {"inputs": ["1"], "outputs": []}, {"tests": []}, "[1, 2]"])
def test_bad_ground_truth_raises(gt):
    with pytest.raises(ValueError):
        compute_score("p", fenced(ADD), gt)


# ------------------------------------------------------------------------------------------------
# stdin/stdout cases
# ------------------------------------------------------------------------------------------------

def test_io_all_pass():
    out = compute_score("p", fenced(SUM_PROG), SUM_IO)
    assert (out["score"], out["passed"], out["total"]) == (1.0, 3, 3)


def test_io_whitespace_rules():
    prog = "a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\nprint()\n"
    assert compute_score("p", fenced(prog), SUM_IO)["score"] == 1.0  # trailing spaces and blank lines ignored
    prog = "a, b = map(int, input().split())\nprint(' ' + str(a + b))\n"
    assert compute_score("p", fenced(prog), SUM_IO)["score"] == 0.0  # leading spaces are not


def test_io_outputs_as_line_lists():
    gt = {"inputs": [["1 2"], ["3 4"]], "outputs": [["3"], ["7"]]}
    assert compute_score("p", fenced(SUM_PROG), gt)["score"] == 1.0


def test_io_wrong_answer_and_runtime_error():
    prog = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 1 // 0)\n"
    out = compute_score("p", fenced(prog), SUM_IO)
    assert out["passed"] == 2 and "case 2: exit 1: ZeroDivisionError" in out["reason"]
    out = compute_score("p", fenced("print(3)\n"), SUM_IO)
    assert out["passed"] == 1 and "case 1: wrong answer" in out["reason"]


def test_io_timeout_is_honoured():
    gt = dict(SUM_IO, timeout_s=1)
    prog = "a, b = map(int, input().split())\nif a == 3:\n    while True:\n        pass\nprint(a + b)\n"
    t0 = time.monotonic()
    out = compute_score("p", fenced(prog), gt)
    assert out["passed"] == 2 and "case 1: CPU time limit" in out["reason"] and time.monotonic() - t0 < 5


def test_io_all_or_nothing_stops_at_first_failure():
    prog = "import time\na, b = map(int, input().split())\ntime.sleep(2 if a == 10 else 0)\nprint(0)\n"
    t0 = time.monotonic()
    out = compute_score("p", fenced(prog), SUM_IO, all_or_nothing=True)
    assert out["score"] == 0.0 and out["passed"] == 0 and time.monotonic() - t0 < 1.5  # case 2 never ran


def test_io_response_cannot_read_the_expected_outputs():
    # the expected outputs never enter the sandbox: only the case's input does
    prog = "import os\nprint(sorted(os.listdir('.')), sorted(os.listdir('/tmp')))\n"
    out = compute_score("p", fenced(prog), {"inputs": ["x"], "outputs": ["3"]})
    assert out["passed"] == 0


def test_loaded_through_the_reward_manager_by_path():
    from rlengine.rewards import resolve_fn

    fn = resolve_fn("reward_fns/code.py:compute_score")
    assert fn("p", fenced(SUM_PROG), json.dumps(SUM_IO))["score"] == 1.0
