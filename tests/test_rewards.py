"""rlengine/rewards.py (resolving and running reward functions) and reward_fns/math.py."""
import logging
import time
from pathlib import Path

import pytest

from rlengine.config import RewardConfig, RewardFnConfig
from rlengine.errors import ConfigError
from rlengine.rewards import RewardManager, resolve_fn
from reward_fns.math import compute_score, extract_answer

REPO = Path(__file__).resolve().parent.parent

EXACT = '''
def exact(prompt, response, ground_truth, **extra):
    return 1.0 if response.strip() == str(ground_truth) else 0.0
'''
LENGTH = '''
def length(prompt, response, ground_truth, scale=1.0, bonus_key=None, **extra):
    return {"score": scale * len(response) + (extra[bonus_key] if bonus_key else 0.0), "note": "diag"}
'''
RAISING = '''
def boom(prompt, response, ground_truth, **extra):
    if response == "boom":
        raise RuntimeError("kaboom")
    return 0.25
'''
HANGING = '''
import time

def slow(prompt, response, ground_truth, **extra):
    if response == "hang":
        time.sleep(60)
    return 0.5
'''


def _write(dirpath: Path, name: str, text: str) -> str:
    p = dirpath / name
    p.write_text(text)
    return str(p)


# ---------------------------------------------------------------- resolve_fn

def test_resolve_file_path(tmp_path):
    f = resolve_fn(_write(tmp_path, "r_exact.py", EXACT) + ":exact")
    assert f("p", " 12", "12") == 1.0
    assert f("p", "13", "12") == 0.0


def test_resolve_project_relative_path_from_another_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = resolve_fn("reward_fns/math.py:compute_score")
    assert f("", "#### 42", "42")["score"] == 1.0


def test_resolve_dotted_path():
    f = resolve_fn("reward_fns.math.compute_score")
    assert f is compute_score


def test_resolve_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope" / "r.py")
    with pytest.raises(ConfigError) as ei:
        resolve_fn(missing + ":f", key="reward.fns[1].fn")
    assert ei.value.key == "reward.fns[1].fn"
    assert missing in str(ei.value)
    assert "not found" in str(ei.value)


def test_resolve_missing_function(tmp_path):
    spec = _write(tmp_path, "r_nofn.py", EXACT) + ":exactt"
    with pytest.raises(ConfigError, match="no function 'exactt'") as ei:
        resolve_fn(spec)
    assert ei.value.key == "reward.fns"
    with pytest.raises(ConfigError, match="no function 'nope'"):
        resolve_fn("reward_fns.math.nope")


def test_resolve_non_callable(tmp_path):
    spec = _write(tmp_path, "r_const.py", "score = 3\n") + ":score"
    with pytest.raises(ConfigError, match="no function 'score'"):
        resolve_fn(spec)


def test_resolve_missing_module():
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg_xyz.mod'"):
        resolve_fn("no_such_pkg_xyz.mod.fn")


def test_resolve_wrong_signature(tmp_path):
    spec = _write(tmp_path, "r_sig.py", "def two(prompt, response):\n    return 1.0\n") + ":two"
    with pytest.raises(ConfigError, match=r"must accept \(prompt, response, ground_truth, \*\*extra\)"):
        resolve_fn(spec)
    spec = _write(tmp_path, "r_sig2.py", "def kwonly(*, prompt, response, ground_truth):\n    return 1\n")
    with pytest.raises(ConfigError, match="must accept"):
        resolve_fn(spec + ":kwonly")


def test_resolve_file_that_fails_to_import_fails_the_same_way_every_time(tmp_path):
    # A broken module must not stay cached in sys.modules: the second attempt should report the
    # real problem again, not a misleading "no function".
    spec = _write(tmp_path, "r_broken.py", "x = 1 / 0\n\ndef f(prompt, response, ground_truth):\n    return 1\n")
    with pytest.raises(Exception) as first:
        resolve_fn(spec + ":f")
    with pytest.raises(Exception) as second:
        resolve_fn(spec + ":f")
    assert type(second.value) is type(first.value)
    assert "no function" not in str(second.value)


def test_manager_fails_at_startup_with_the_index(tmp_path):
    ok = _write(tmp_path, "r_ok.py", EXACT) + ":exact"
    with pytest.raises(ConfigError) as ei:
        RewardManager(RewardConfig(fns=[RewardFnConfig(fn=ok), RewardFnConfig(fn=str(tmp_path / "x.py") + ":f")]))
    assert ei.value.key == "reward.fns[1].fn"


# ---------------------------------------------------------------- RewardManager

@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    d = tmp_path_factory.mktemp("rewards")
    cfg = RewardConfig(
        fns=[RewardFnConfig(fn=_write(d, "m_exact.py", EXACT) + ":exact", weight=1.0),
             RewardFnConfig(fn=_write(d, "m_len.py", LENGTH) + ":length", weight=0.5,
                            kwargs={"scale": 2.0, "bonus_key": "bonus"}),
             RewardFnConfig(fn=_write(d, "m_boom.py", RAISING) + ":boom", weight=2.0)],
        num_workers=2, timeout_s=30.0, error_score=-1.0)
    m = RewardManager(cfg)
    yield m
    m.close()


PROMPTS = ["p0", "p1", "p2"]
RESPONSES = ["7", "boom", " 12"]
TRUTHS = ["7", "8", "12"]
EXTRAS = [{"bonus": 0.0}, {"bonus": 1.0}, {"bonus": 10.0}]


@pytest.fixture(scope="module")
def result(manager):
    return manager.score(PROMPTS, RESPONSES, TRUTHS, EXTRAS)


def test_manager_scores_each_fn(manager, result):
    assert len(result.per_fn) == len(manager.cfg.fns)
    # exact match
    assert result.per_fn[0].tolist() == [1.0, 0.0, 1.0]
    # 2 * len(response) + extra["bonus"], from a dict result, kwargs and extras passed through
    assert result.per_fn[1].tolist() == [2.0 * 1 + 0.0, 2.0 * 4 + 1.0, 2.0 * 3 + 10.0]


def test_manager_counts_errors_with_error_score(manager, result):
    assert result.per_fn[2].tolist() == [0.25, -1.0, 0.25]
    assert result.errors == 1
    assert result.timeouts == 0


def test_manager_combines_with_weights(result):
    # 1.0 * exact + 0.5 * length + 2.0 * boom
    expected = [1.0 * 1.0 + 0.5 * 2.0 + 2.0 * 0.25,
                1.0 * 0.0 + 0.5 * 9.0 + 2.0 * -1.0,
                1.0 * 1.0 + 0.5 * 16.0 + 2.0 * 0.25]
    assert result.scores_N.tolist() == expected
    assert result.scores_N.shape == (3,)


def test_manager_error_logged_once(manager, result, caplog):
    with caplog.at_level(logging.WARNING, logger="rlengine.rewards"):
        again = manager.score(["p"], ["boom"], ["1"], [{"bonus": 0.0}])
    assert again.errors == 1
    assert again.scores_N.tolist() == [1.0 * 0.0 + 0.5 * 8.0 + 2.0 * -1.0]
    # already logged (with its traceback) by the first call
    assert not [r for r in caplog.records if "raised" in r.getMessage()]


def test_manager_first_error_is_logged_with_traceback(tmp_path, caplog):
    m = RewardManager(RewardConfig(fns=[RewardFnConfig(fn=_write(tmp_path, "l_boom.py", RAISING) + ":boom")],
                                   num_workers=1, timeout_s=30.0))
    try:
        with caplog.at_level(logging.WARNING, logger="rlengine.rewards"):
            r1 = m.score(["p", "p"], ["boom", "boom"], ["1", "1"], [{}, {}])
            r2 = m.score(["p"], ["boom"], ["1"], [{}])
    finally:
        m.close()
    assert (r1.errors, r2.errors) == (2, 1)
    assert r1.scores_N.tolist() == [0.0, 0.0]  # default error_score
    logged = [r.getMessage() for r in caplog.records if "raised" in r.getMessage()]
    assert len(logged) == 1
    assert "RuntimeError: kaboom" in logged[0]


def test_manager_hanging_fn_times_out_and_recovers(tmp_path):
    m = RewardManager(RewardConfig(fns=[RewardFnConfig(fn=_write(tmp_path, "h_slow.py", HANGING) + ":slow")],
                                   num_workers=1, timeout_s=1.0, error_score=-3.0))
    try:
        t0 = time.monotonic()
        r = m.score(["p"], ["hang"], ["x"], [{}])
        elapsed = time.monotonic() - t0
        assert r.timeouts == 1 and r.errors == 0
        assert r.scores_N.tolist() == [-3.0]
        assert elapsed < 10, f"a hung call took {elapsed:.1f}s with timeout_s=1.0"
        # The next call must score normally on a fresh pool.
        r = m.score(["p"], ["ok"], ["x"], [{}])
        assert r.timeouts == 0
        assert r.scores_N.tolist() == [0.5]
    finally:
        m.close()


# ---------------------------------------------------------------- reward_fns/math.py

@pytest.mark.parametrize("response, truth, score, extracted", [
    ("so the result is \\boxed{\\frac{1}{2}}", "0.5", 1.0, "\\frac{1}{2}"),          # nested braces
    ("first \\boxed{3}, finally \\boxed{\\dfrac{3}{4}}", "3/4", 1.0, "\\dfrac{3}{4}"),  # the last box
    ("\\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^2}", 1.0, "\\frac{a}{b^{2}}"),
    ("She has 40 + 2 apples.\n#### 42", "42", 1.0, "42"),
    ("#### 1,234", "1234", 1.0, "1,234"),
    ("The answer is 7.", "7", 1.0, "7"),
    ("The answer is 7.", "8", 0.0, "7"),
    ("First 3, then 12", "12", 1.0, "12"),                                            # last number
    ("1/2", "0.5", 1.0, "1/2"),
    ("0.5", "1/2", 1.0, "0.5"),
    (" 15", "15", 1.0, "15"),                                                         # tiny task
    (" 51", "15", 0.0, "51"),
    ("no numbers at all", "3", 0.0, None),
])
def test_math_compute_score(response, truth, score, extracted):
    out = compute_score("q", response, truth)
    assert out["score"] == score
    assert out["extracted"] == extracted


def test_math_how_the_answer_was_found():
    assert extract_answer("x \\boxed{4} y") == ("4", "boxed")
    assert extract_answer("blah\n#### 9") == ("9", "####")
    assert extract_answer("The answer is 7.") == ("7", "answer is")
    assert extract_answer("3 then 12") == ("12", "last number")
    assert extract_answer("3 then 12", fallback_last_number=False) == (None, "none")


def test_math_no_fallback_scores_zero():
    out = compute_score("q", "3 then 12", "12", fallback_last_number=False)
    assert out["score"] == 0.0 and out["extracted"] is None


def test_math_int_ground_truth():
    assert compute_score("q", "#### 42", 42)["score"] == 1.0


def test_math_through_the_manager_spec():
    f = resolve_fn("reward_fns/math.py:compute_score")
    assert f("q", "\\boxed{12}", "12")["score"] == 1.0
    assert f("q", "\\boxed{13}", "12")["score"] == 0.0


def test_manager_cold_pool_start_is_not_counted_against_the_timeout(tmp_path):
    # timeout_s is a per-call budget for the reward function; starting the pool's (spawned)
    # worker processes must not eat it, or a fast function on a fresh pool "times out".
    m = RewardManager(RewardConfig(fns=[RewardFnConfig(fn=_write(tmp_path, "c_slow.py", HANGING) + ":slow")],
                                   num_workers=1, timeout_s=1.0, error_score=-3.0))
    try:
        r = m.score(["p"], ["fast"], ["x"], [{}])
    finally:
        m.close()
    assert (r.timeouts, r.errors) == (0, 0)
    assert r.scores_N.tolist() == [0.5]


def test_math_gold_answer_from_gsm8k_and_math_solutions():
    from reward_fns.math import compute_score, gold_answer

    assert gold_answer("Natalia sold 48/2 = 24 clips in May.\n#### 72") == "72"
    assert gold_answer("so the answer is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer(" 15 ") == "15"
    assert compute_score("", "... so she sold 72 clips. #### 72", "She sold 24 in May.\n#### 72")["score"] == 1.0
    assert compute_score("", "#### 71", "She sold 24 in May.\n#### 72")["score"] == 0.0


WARMING = '''
import os
from pathlib import Path

def warmup():
    Path(os.environ["WARM_DIR"], str(os.getpid())).write_text("warm")

def fn(prompt, response, ground_truth, **extra):
    return float(Path(os.environ["WARM_DIR"], str(os.getpid())).exists())
'''


def test_every_pool_worker_runs_the_module_warmup_once_at_start(tmp_path, monkeypatch):
    """A reward module's optional warmup() runs in each scoring process before its first call, so
    one-time initialisation never lands inside a step."""
    warm = tmp_path / "warm"
    warm.mkdir()
    monkeypatch.setenv("WARM_DIR", str(warm))
    m = RewardManager(RewardConfig(fns=[RewardFnConfig(fn=_write(tmp_path, "r_warm.py", WARMING) + ":fn")],
                                   num_workers=2, timeout_s=30.0))
    try:
        res = m.score(["p"] * 8, ["r"] * 8, ["t"] * 8, [{}] * 8)
    finally:
        m.close()
    assert res.per_fn[0].tolist() == [1.0] * 8  # each call's process had already warmed up
    assert len(list(warm.iterdir())) == 2  # one marker per worker
