"""reward_fns/math.py: answer extraction and equivalence, table-driven.

Every expected score below is decided by hand from the rules documented in reward_fns/math.py
(box wins, last box wins, last "answer is" wins unless corrected right after, percent policy, ...).
"""
import functools
import threading
import time

import pytest

from reward_fns.math import compute_score, extract_answer, gold_answer, is_equivalent, last_boxed
from reward_fns.math_extract import boxed_parts, strip_chat_tokens, trailing_list
from reward_fns.math_parts import as_parts, split_top
from tests.reward_fns.math_cases import CASES  # (id, response, ground_truth, expected score)
from tests.reward_fns.math_heldout_cases import HELDOUT_CASES  # a second batch, measured before tuning
from tests.reward_fns.math_peer_cases import PEER_CASES  # (id, source, response, reference, expected)

ALL_PEER_CASES = PEER_CASES + HELDOUT_CASES


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
    # a closing "Final Answer" line after intermediate boxes
    ("area \\boxed{9}; 6 faces. Final Answer: The final answer is $54$. I hope it is correct.", "54", "final answer"),
    ("\\boxed{12}. This is the final answer: I am confident.", "12", "boxed"),
    ("\\boxed{5}. The final answer is boxed above.", "5", "boxed"),
    # LaTeX stated inline is read as LaTeX, before any last number
    ("Therefore $x \\geq 5$ is the solution.", "x \\geq 5", "inline math"),
    ("the ordered pair $(x, y)$ that solves it is $(7, 6)$.", "(7, 6)", "inline math"),
    ("Let $x$ be the apples; then $3x = 36$ gives 12 apples.", "12", "last number"),
    # the fallback reads standalone numbers only, and only from a response that commits to one
    ("The password is AZYUK2A.", None, "none"),
    ("Water is H2O, and it weighs 10kg", "10", "last number"),
    ("I'm not sure; maybe it involves 12 steps.", None, "hedged"),
    ("We cannot determine it from the 3 facts.", None, "hedged"),
    ("I'm not sure at first, but it gives \\boxed{12}.", "12", "boxed"),
    # a sentence that ends in the answer; chat tokens end the response
    ("Final Answer: The largest $n$ is 34.", "34", "answer is"),
    ("The answer is 42<|im_end|>", "42", "answer is"),
    ("$\\frac{1}{2}$<|endoftext|>", "\\frac{1}{2}", "whole response"),
    ("The answers are 9 and 10.", "9 and 10", "answer is"),
    ("The correct option is (D).", "(D)", "answer is"),
    # an approximation after the answer is not the answer
    ("So the probability is $\\dfrac{5}{36}$, which is about 0.139.", "\\dfrac{5}{36}", "inline math"),
    ("Therefore it is 5/36, or about 0.139.", "5/36", "last number"),
    ("This equals $\\sqrt{2}$ (approximately 1.414).", "\\sqrt{2}", "inline math"),
    ("It takes 45 minutes, about 0.75 hours.", "45", "last number"),
    ("There are 3 apples and about 4 pears.", "4", "last number"),
    # a percent sign or a ratio / time stays with the last number
    ("The probability is 0.25 or 25%.", "25%", "last number"),
    ("So the ratio is 3:2.", "3:2", "last number"), ("It starts at 10:30.", "10:30", "last number"),
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


def test_boxed_parts():
    assert boxed_parts("So $x = \\boxed{2}$ and $y = \\boxed{3}$.") == ["2", "3"]
    assert boxed_parts("(a) mean \\boxed{12}.\n(b) median \\boxed{10}.") == ["12", "10"]
    # boxes far apart, or in separate paragraphs, are steps and an answer, not parts of one answer
    assert boxed_parts("\\boxed{200}" + " so far." * 20 + " \\boxed{255}") == ["255"]
    assert boxed_parts("\\boxed{3}\n\nThus \\boxed{12}") == ["12"]
    assert boxed_parts("<think>\\boxed{1}</think> \\boxed{2}") == ["2"]
    assert boxed_parts("\\boxed{\\boxed{9}}") == ["\\boxed{9}"]
    assert boxed_parts("no box") == [] and boxed_parts("\\boxed{1} \\boxed{2") == []


def test_strip_chat_tokens():
    assert strip_chat_tokens("The answer is 42<|im_end|>") == "The answer is 42"
    assert strip_chat_tokens("<|im_start|>assistant\n\\boxed{7}<|im_end|>\n<|endoftext|>") == "\\boxed{7}"
    # what follows an end-of-turn token is a hallucinated next turn, not the answer
    assert strip_chat_tokens("is 5/3. <|im_start|>user Solve... \\boxed{8}") == "is 5/3. "
    assert strip_chat_tokens("x = 5</s>") == "x = 5"
    assert strip_chat_tokens("18<\uff5cend\u2581of\u2581sentence\uff5c>") == "18"
    assert strip_chat_tokens("a <|reserved_1|> b") == "a   b"


def test_split_and_parts():
    assert split_top("19, 46, and 82") == ["19", "46", "82"]
    assert split_top("3 or 5") == ["3", "5"]
    assert split_top("1,000") == ["1,000"]  # a thousands separator, not a list
    assert split_top("(1, 2), [3, 4)") == ["(1, 2)", "[3, 4)"]
    assert split_top("\\begin{pmatrix} 1, 2 \\end{pmatrix}") == ["\\begin{pmatrix} 1, 2 \\end{pmatrix}"]
    assert as_parts("1 \\pm \\sqrt{19}") == ("list", ["1 + \\sqrt{19}", "1 - \\sqrt{19}"])
    assert as_parts("\\{1, 2\\}") == ("set", ["1", "2"])
    assert as_parts("(2, 3)") == ("tuple", ["2", "3"])
    assert as_parts("(1,2) \\cup (3,4)")[0] == "single"
    assert as_parts("(0, 1)") == ("tuple", ["0", "1"]) and as_parts("7")[0] == "single"


def test_trailing_list():
    assert trailing_list("Since $ab = 12$, the numbers are 3 and 4.") == ["3", "4"]
    assert trailing_list("so the solutions are $x=2$ and $x=-5$.") == ["x=2", "x=-5"]
    assert trailing_list("Adding 5 and 7 gives 12.") == [] and trailing_list("x is 3.5.") == []
    # against a multi-part reference the list replaces the last number; against one part it does not
    assert compute_score("q", "Since $ab = 12$, the numbers are 3 and 4.", "3, 4")["score"] == 1.0
    assert compute_score("q", "Since $ab = 12$, the numbers are 3 and 5.", "3, 4")["score"] == 0.0
    assert compute_score("q", "The sequence is 2, 4, 8, 16.", "16")["score"] == 1.0


def test_gold_answer():
    assert gold_answer("Natalia sold 48/2 = 24 clips in May.\n#### 72") == "72"
    assert gold_answer("so the answer is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer(" 15 ") == "15"
    assert gold_answer(42) == "42"
    assert gold_answer("$\\boxed{1}\\boxed{2}$") == "1, 2"  # adjacent boxes: one two-part answer
    assert gold_answer("first $\\boxed{3}$.\n\nSo the total is $\\boxed{12}$.") == "12"


@pytest.mark.parametrize("a, b, expected", [
    ("1,000", "1000", True), ("0.50", "1/2", True), ("50%", "0.5", True), ("50%", "50", True),
    ("0.5", "50", False), ("2x+2", "2(x+1)", True), ("x=5", "5", True), ("5 cm", "5", True),
    ("\\{1,2,3\\}", "{3,2,1}", True), ("(1,2]", "(1,2)", False), ("", "5", False),
    # multi-part: a set unless one side is a tuple; a missing or extra part is wrong
    ("2, 3", "3, 2", True), ("2, 3", "(3, 2)", False), ("x = 2, y = 3", "(2, 3)", True),
    ("1728", "1331 and 1728", False), ("5, 6", "5", False), ("\\pm 2", "\\{-2, 2\\}", True),
    ("1 + \\sqrt{19}, 1 - \\sqrt{19}", "1 \\pm \\sqrt{19}", True),
    ("1000,99", "1000.99", True), ("0,111", "0.111", True), ("-2,1", "1, -2", True),
    # MATH-style thousands, mixed numbers, ordinals
    ("32,\\! 349", "32349", True), ("32, 349", "32349", False), ("14 {, }916", "14916", True),
    ("4 4/9", "40/9", True), ("4 4/9", "4", False), ("7 \\frac{3}{4}", "7.75", True), ("12^{\\text{th}}", "12", True),
    # exact numbers must agree exactly, not to math-verify's 6 decimal places
    ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}", False), ("\\frac{1}{2006!}", "\\frac{1}{2004!}", False),
    ("1 + \\frac{1}{\\mathrm{e}}", "1 - \\frac{1}{\\mathrm{e}}", False), ("2^{-10}", "\\frac{1}{1024}", True),
    ("\\sqrt{50}", "5\\sqrt{2}", True), ("0.866025", "\\frac{\\sqrt{3}}{2}", True),
    ("0.866", "\\frac{\\sqrt{3}}{2}", False),
    # repeating decimals are exact; "i" is the imaginary unit; Python powers; degrees are not radians
    ("0.\\overline{3}", "\\frac{1}{3}", True), ("0.1\\overline{6}", "1/6", True), ("0.\\overline{36}", "4/11", True),
    ("0.\\overline{3}", "0.33", False), ("e^{i\\pi}", "-1", True), ("(1+i)^2", "2i", True), ("3-4i", "3+4i", False),
    ("3s^2", "3*s**2", True), ("2**10", "1024", True), ("\\frac{\\pi}{4}", "45^\\circ", False), ("45^\\circ", "45", True),
    # an answer that is an equation is compared by its last side too; a value does not answer an equation
    ("P = \\frac{3}{8} = 37.5\\%", "\\frac{3}{8}", True), ("f(2) = 5", "5", True), ("0", "a + 3z = 0", False),
    ("y = 3x + 2", "y = 2x + 3", False),
    # a choice letter with its option's text
    ("(A) 3", "A", True), ("B. 7", "B", True), ("(A) 3", "B", False),
])
def test_is_equivalent(a, b, expected):
    assert is_equivalent(a, b) is expected


# ---------------------------------------------------------------- peers' cases: our rate, math-verify's rate

@functools.lru_cache(maxsize=None)
def _peer_verdicts():
    return {c[0]: compute_score("q", c[2], c[3])["score"] == 1.0 for c in ALL_PEER_CASES}


@functools.lru_cache(maxsize=None)
def _math_verify_verdicts():
    """math-verify alone, as the issue measured it: verify(parse("$" + reference + "$"), parse(response))."""
    from math_verify import parse, verify

    def mv(response, reference):
        try:
            return bool(verify(parse("$" + reference + "$"), parse(response)))
        except Exception:
            return False

    return {c[0]: mv(c[2], c[3]) for c in ALL_PEER_CASES}


def test_peer_case_set_is_large_unique_and_sourced():
    assert len(PEER_CASES) >= 240 and len(HELDOUT_CASES) >= 80
    assert len({c[0] for c in ALL_PEER_CASES}) == len(ALL_PEER_CASES)
    assert all(c[1] and isinstance(c[4], bool) for c in ALL_PEER_CASES)
    for cases in (PEER_CASES, HELDOUT_CASES):
        assert sum(1 for c in cases if c[4]) >= len(cases) // 3 and sum(1 for c in cases if not c[4]) >= len(cases) // 6


@pytest.mark.parametrize("cases", [PEER_CASES, HELDOUT_CASES, ALL_PEER_CASES], ids=["first", "held-out", "all"])
def test_peer_cases_rate(cases):
    """At least 97% right on the peers' cases (issue 17), on each batch and on both together."""
    wrong = [c[0] for c in cases if _peer_verdicts()[c[0]] != c[4]]
    assert len(wrong) <= 0.03 * len(cases), wrong


@pytest.mark.parametrize("cases", [PEER_CASES, HELDOUT_CASES, ALL_PEER_CASES], ids=["first", "held-out", "all"])
def test_peer_cases_beat_math_verify_alone(cases):
    ours = sum(_peer_verdicts()[c[0]] == c[4] for c in cases)
    theirs = sum(_math_verify_verdicts()[c[0]] == c[4] for c in cases)
    assert ours > theirs, (ours, theirs, len(cases))


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


@pytest.mark.parametrize("response, gold", [("The total is 32,\\! 349.", "32349"), ("It costs 1{,}000 dollars", "1000"),
                                            ("we get 1\\,000 km", "1000")])
def test_last_number_reads_latex_thousands_in_prose(response, gold):
    assert compute_score("", response, gold)["score"] == 1.0
