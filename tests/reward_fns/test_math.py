"""reward_fns/math.py: answer extraction and equivalence, table-driven.

Every expected score below is decided by hand from the rules documented in reward_fns/math.py
(box wins, last box wins, last "answer is" wins unless corrected right after, percent policy, ...).
"""
import threading
import time

import pytest

from reward_fns.math import compute_score, extract_answer, gold_answer, is_equivalent, last_boxed
from tests.reward_fns.math_cases import CASES  # (id, response, ground_truth, expected score)


@pytest.mark.parametrize("response, ground_truth, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_math_case(response, ground_truth, expected):
    out = compute_score("question", response, ground_truth)
    assert set(out) >= {"score", "extracted", "reason"}
    assert isinstance(out["score"], float)
    assert out["score"] == expected, out


def test_case_table_is_large_and_unique():
    assert len(CASES) >= 150
    assert len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- extraction: what and how

@pytest.mark.parametrize("response, answer, how", [
    ("x \\boxed{4} y", "4", "boxed"),
    ("\\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}", "boxed"),
    ("first \\boxed{3}, finally \\boxed{\\dfrac{3}{4}}", "\\dfrac{3}{4}", "boxed"),
    ("\\boxed{}", "", "boxed"),
    ("\\boxed{5", None, "unclosed boxed"),
    ("blah\n#### 9", "9", "####"),
    ("#### 1,234", "1,234", "####"),
    ("The answer is 7.", "7", "answer is"),
    ("The answer is 7, since 3+4=7", "7", "answer is"),
    ("The answer is 12 because 3*4=12", "12", "answer is"),
    ("The answer is $\\frac{1}{2}$, which is half.", "\\frac{1}{2}", "answer is"),
    ("The answer is $1,234.50.", "1,234.50", "answer is"),
    ("The answer is 5... actually 6", "6", "answer is"),
    ("The answer is (1, 2], since f is increasing", "(1, 2]", "answer is"),
    ("The answer is 7. Actually, this makes sense because 3+4=7.", "7", "answer is"),
    ("$\\frac{1}{2}$", "\\frac{1}{2}", "whole response"),
    (" 15", "15", "whole response"),
    ("#### Step 1: add\nso 5", "5", "last number"),
    ("#### The answer is 9", "9", "answer is"),
    ("<think>\\boxed{4}</think>", None, "nothing after </think>"),
    ("<think>r</think><answer> 7 </answer>", "7", "answer tag"),
    ("3 then 12", "12", "last number"),
    ("from 3-5", "5", "last number"),
    ("it fell to -5", "-5", "last number"),
    ("no numbers at all", None, "none"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None)
def test_extract_answer(response, answer, how):
    assert extract_answer(response) == (answer, how)


def test_extract_without_fallback():
    assert extract_answer("3 then 12", fallback_last_number=False) == (None, "none")
    out = compute_score("q", "3 then 12", "12", fallback_last_number=False)
    assert out["score"] == 0.0 and out["extracted"] is None and out["reason"] == "no answer found"
    # the other rules still apply without the fallback
    assert compute_score("q", "\\boxed{12}", "12", fallback_last_number=False)["score"] == 1.0


def test_last_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{2}{3}} c") == "\\frac{2}{3}"
    assert last_boxed("\\fbox{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed 7") == "7"
    assert last_boxed("nothing here") is None
    assert last_boxed("\\boxed{1") is None
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"


def test_gold_answer():
    assert gold_answer("Natalia sold 48/2 = 24 clips in May.\n#### 72") == "72"
    assert gold_answer("so the answer is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer(" 15 ") == "15"
    assert gold_answer(42) == "42"


@pytest.mark.parametrize("a, b, expected", [
    ("1,000", "1000", True), ("0.50", "1/2", True), ("50%", "0.5", True), ("50%", "50", True),
    ("0.5", "50", False), ("2x+2", "2(x+1)", True), ("x=5", "5", True), ("5 cm", "5", True),
    ("\\{1,2,3\\}", "{3,2,1}", True), ("(1,2]", "(1,2)", False), ("", "5", False),
])
def test_is_equivalent(a, b, expected):
    assert is_equivalent(a, b) is expected


# ---------------------------------------------------------------- robustness

def test_reason_diagnostics():
    assert compute_score("q", "\\boxed{5}", "5")["reason"] == "boxed: match"
    assert compute_score("q", "\\boxed{4}", "5")["reason"] == "boxed: mismatch"
    assert compute_score("q", "#### 5", "5")["reason"] == "####: match"
    assert compute_score("q", "The answer is 5.", "5")["reason"] == "answer is: match"
    assert compute_score("q", "it is 5", "5")["reason"] == "last number: match"
    assert compute_score("q", "nothing", "5")["reason"] == "no answer found"
    assert "empty" in compute_score("q", "\\boxed{}", "5")["reason"]
    assert "unclosed" in compute_score("q", "\\boxed{5", "5")["reason"]
    assert compute_score("q", "<think>5</think>", "5")["reason"] == "nothing after </think>"


def test_never_raises_on_odd_input():
    for response, truth in [(None, "5"), (12, "12"), ("\\boxed{5}", object()), ("\\boxed{\\frac{1}{0}}", "1"),
                            ("\\boxed{" + "{" * 500 + "}" * 500 + "}", "1"), ("\\boxed{\\sqrt{}}", "\\sqrt{}"),
                            ("\\boxed{1/0}", "1/0"), ("#### ", "5"), ("\\boxed{5}", "")]:
        out = compute_score("q", response, truth)
        assert out["score"] in (0.0, 1.0) and "reason" in out


def test_internal_error_scores_zero_with_reason(monkeypatch):
    import reward_fns.math as m

    def boom(a, b):
        raise RuntimeError("kaput")

    monkeypatch.setattr(m, "is_equivalent", boom)
    out = m.compute_score("q", "\\boxed{5}", "5")
    assert out["score"] == 0.0 and "kaput" in out["reason"] and out["extracted"] == "5"


def test_too_long_answer_is_refused():
    out = compute_score("q", "\\boxed{" + "1+" * 2000 + "1}", "2001")
    assert out["score"] == 0.0 and "too long" in out["reason"]


def test_huge_garbage_is_fast():
    junk = ("lorem ipsum 3.14 {[( answer is $ \\frac{ #### " * 20000)
    t0 = time.perf_counter()
    for response in [junk, junk + " \\boxed{7}", "answer " * 100000, "9" * 200000, "{" * 200000 + "\\boxed{7}",
                     " " * 200000 + "x", "\\boxed{" * 50000]:
        compute_score("q", response, "7")
    assert time.perf_counter() - t0 < 5.0


def test_plain_numbers_skip_math_verify(monkeypatch):
    import reward_fns.math as m

    def no_mv(*a, **k):
        raise AssertionError("math-verify called for plain numbers")

    monkeypatch.setattr(m, "_mv_equal", no_mv)
    for response, truth, score in [("#### 1,234", "1234", 1.0), ("\\boxed{0.5}", "1/2", 1.0),
                                   ("The answer is 50%.", "0.5", 1.0), ("\\boxed{12 dollars}", "13", 0.0),
                                   ("\\boxed{\\frac{3}{4}}", "0.75", 1.0), ("\\boxed{1.5e3}", "1500", 1.0)]:
        assert m.compute_score("q", response, truth)["score"] == score


def test_plain_numbers_are_fast():
    t0 = time.perf_counter()
    for i in range(2000):
        compute_score("q", f"She has {i} apples.\n#### {i}", str(i))
    assert time.perf_counter() - t0 < 2.0


def test_explosive_input_off_main_thread_does_not_hang():
    # math-verify's timeouts are signal-based and only work on the main thread; off it they are
    # disabled and inputs that make sympy explode are refused up front.
    results = {}

    def work():
        results["tower"] = compute_score("q", "\\boxed{9^{9^{9^{9}}}}", "1")
        results["plain"] = compute_score("q", "\\boxed{2(x+1)}", "2x+2")

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert results["tower"]["score"] == 0.0 and "complex" in results["tower"]["reason"]
    assert results["plain"]["score"] == 1.0


def test_explosive_input_on_main_thread_is_bounded(monkeypatch):
    import reward_fns.math as m

    monkeypatch.setattr(m, "MV_TIMEOUT_S", 1)
    t0 = time.perf_counter()
    out = m.compute_score("q", "\\boxed{9^{9^{9^{9}}}}", "1")
    assert out["score"] == 0.0
    assert time.perf_counter() - t0 < 10


def test_deep_nesting_is_refused_fast():
    t0 = time.perf_counter()
    out = compute_score("q", "\\boxed{" + "{" * 100 + "1" + "}" * 100 + "}", "1")
    assert out["score"] == 0.0 and "nested" in out["reason"]
    assert time.perf_counter() - t0 < 1.0


class _OuterTimeout(Exception):
    pass


@pytest.fixture
def outer_alarm():
    """Arm an ITIMER_REAL alarm like the reward manager's; restore whatever was there (pytest-timeout)."""
    import signal

    fired = []

    def on_alarm(*a):
        fired.append(1)
        raise _OuterTimeout()

    prev_handler = signal.signal(signal.SIGALRM, on_alarm)
    prev_timer = signal.getitimer(signal.ITIMER_REAL)
    t_start = time.monotonic()

    def arm(seconds):
        signal.setitimer(signal.ITIMER_REAL, seconds)

    try:
        yield arm, fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, prev_handler)
        if prev_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(prev_timer[0] - (time.monotonic() - t_start), 1.0))


def test_outer_alarm_left_armed(outer_alarm):
    # Under the reward manager an ITIMER_REAL alarm bounds each call; math-verify's own alarm would
    # cancel it, so it must be re-armed with what is left of it.
    import signal

    arm, fired = outer_alarm
    arm(30.0)
    assert compute_score("q", "\\boxed{2(x+1)}", "2x+2")["score"] == 1.0
    remaining = signal.getitimer(signal.ITIMER_REAL)[0]
    assert 25 < remaining <= 30.0 and not fired


def test_outer_alarm_that_runs_out_still_fires(outer_alarm):
    # A hanging comparison must not swallow the manager's timeout: its alarm still fires and the
    # exception propagates (so the manager counts a timeout), within about the outer budget.
    arm, fired = outer_alarm
    t0 = time.perf_counter()
    arm(1.0)
    with pytest.raises(_OuterTimeout):
        compute_score("q", "\\boxed{9^{9^{9^{9}}}}", "1")
    assert fired and time.perf_counter() - t0 < 5


def test_through_the_reward_manager():
    from rlengine.config import RewardConfig, RewardFnConfig
    from rlengine.rewards import RewardManager

    m = RewardManager(RewardConfig(fns=[RewardFnConfig(fn="reward_fns/math.py:compute_score")], num_workers=1,
                                   timeout_s=10.0))
    try:
        r = m.score(["q"] * 4, ["\\boxed{2(x+1)}", "#### 1,000", "The answer is 7, since 3+4=7", "\\boxed{5}"],
                    ["2x+2", "1000", "7", "6"], [{}] * 4)
    finally:
        m.close()
    assert (r.errors, r.timeouts) == (0, 0)
    assert r.scores_N.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_a_hanging_comparison_is_a_manager_timeout():
    from rlengine.config import RewardConfig, RewardFnConfig
    from rlengine.rewards import RewardManager

    m = RewardManager(RewardConfig(fns=[RewardFnConfig(fn="reward_fns/math.py:compute_score")], num_workers=1,
                                   timeout_s=3.0))
    try:
        m.score(["q"], ["\\boxed{2(x+1)}"], ["2x+2"], [{}])  # warm the worker (imports)
        t0 = time.perf_counter()
        r = m.score(["q"], ["\\boxed{9^{9^{9^{9}}}}"], ["1"], [{}])
        elapsed = time.perf_counter() - t0
    finally:
        m.close()
    assert (r.errors, r.timeouts) == (0, 1)
    assert elapsed < 10
