"""The reward-function plug-in: files outside the package, async and batched functions, and
functions that raise or hang (they score error_score, are counted, and never stop scoring)."""
import textwrap
import time

import pytest

from rlengine.config import RewardConfig, RewardFnConfig
from rlengine.errors import ConfigError
from rlengine.rewards import RewardManager

ROWS = (["p1", "p2", "p3"], ["12", "abc", "7"], ["12", "3", "8"], [{"level": 1}, {"level": 2}, {"level": 3}])


def _write(tmp_path, body: str):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(body))
    return path


def _manager(*fns, timeout_s=2.0, workers=1):
    return RewardManager(RewardConfig(fns=list(fns), num_workers=workers, timeout_s=timeout_s))


@pytest.fixture
def plugin(tmp_path):
    return _write(tmp_path, '''
        import asyncio, re, signal, time

        def exact(prompt, response, ground_truth, bonus=0.0, **extra):
            return float(response == ground_truth) + bonus * extra["level"]

        async def async_exact(prompt, response, ground_truth, **extra):
            await asyncio.sleep(0.01)
            return {"score": float(response == ground_truth), "why": "async"}

        def batch_len(prompts, responses, ground_truths, extras, scale=1.0):
            return [scale * len(r) for r in responses]

        def two_args(prompts, responses):
            return [0.0] * len(responses)

        def raises(prompt, response, ground_truth, **extra):
            if response == "abc":
                raise RuntimeError("boom")
            return 1.0

        def sleeps(prompt, response, ground_truth, **extra):
            if response == "abc":
                time.sleep(60)
            return 1.0

        def ignores_alarm(prompt, response, ground_truth, **extra):
            if response == "abc":
                signal.signal(signal.SIGALRM, signal.SIG_IGN)
                time.sleep(60)
            return 1.0
        ''')


def test_file_outside_package_with_kwargs_and_extra(plugin):
    m = _manager(RewardFnConfig(fn=f"{plugin}:exact", kwargs={"bonus": 0.5}))
    r = m.score(*ROWS)
    assert r.scores_N.tolist() == [1.0 + 0.5, 0.0 + 1.0, 0.0 + 1.5]
    assert (r.errors, r.timeouts) == (0, 0)
    m.close()


def test_async_and_batched_combined_with_weights(plugin):
    m = _manager(RewardFnConfig(fn=f"{plugin}:async_exact", weight=2.0),
                 RewardFnConfig(fn=f"{plugin}:batch_len", weight=0.5, batched=True, kwargs={"scale": 2.0}))
    r = m.score(*ROWS)
    assert r.per_fn[0].tolist() == [1.0, 0.0, 0.0]
    assert r.per_fn[1].tolist() == [4.0, 6.0, 2.0]
    assert r.scores_N.tolist() == [2.0 + 2.0, 0.0 + 3.0, 0.0 + 1.0]
    m.close()


def test_raising_function_scores_error_and_is_counted(plugin):
    m = _manager(RewardFnConfig(fn=f"{plugin}:raises"))
    r = m.score(*ROWS)
    assert r.scores_N.tolist() == [1.0, 0.0, 1.0] and r.errors == 1 and r.timeouts == 0
    m.close()


def test_hanging_function_times_out_alone(plugin):
    m = _manager(RewardFnConfig(fn=f"{plugin}:sleeps"), timeout_s=1.0)
    t0 = time.time()
    r = m.score(*ROWS)
    assert time.time() - t0 < 10
    assert r.scores_N.tolist() == [1.0, 0.0, 1.0] and r.timeouts == 1 and r.errors == 0
    m.close()


def test_function_that_blocks_the_alarm_hits_the_hard_deadline_and_scoring_recovers(plugin):
    m = _manager(RewardFnConfig(fn=f"{plugin}:ignores_alarm"), timeout_s=1.0)
    t0 = time.time()
    r = m.score(*ROWS)
    assert time.time() - t0 < 20
    assert r.timeouts >= 1 and r.scores_N[1] == 0.0
    again = m.score(["p"], ["12"], ["12"], [{}])  # a fresh pool serves the next batch
    assert again.scores_N.tolist() == [1.0] and again.timeouts == 0
    m.close()


@pytest.mark.parametrize("spec, needle", [
    ("no/such/file.py:f", "no/such/file.py"),
    ("{plugin}:missing", "missing"),
    ("{plugin}:batch_len", "must accept (prompt, response, ground_truth, **extra)"),
])
def test_bad_plugins_fail_at_start_up(plugin, spec, needle):
    with pytest.raises(ConfigError) as e:
        _manager(RewardFnConfig(fn=spec.format(plugin=plugin)))
    assert needle in str(e.value) and e.value.key == "reward.fns[0].fn"


def test_batched_flag_checks_the_batched_signature(plugin):
    with pytest.raises(ConfigError, match="prompts, responses, ground_truths"):
        _manager(RewardFnConfig(fn=f"{plugin}:two_args", batched=True))


def test_worked_example_from_the_readme():
    m = _manager(RewardFnConfig(fn="examples/custom_reward.py:concise_number", kwargs={"max_chars": 6}))
    r = m.score(["q", "q", "q"], ["42", "it is 42", "no"], ["42", "42", "42"], [{}, {}, {}])
    assert r.scores_N.tolist() == pytest.approx([1.0, 0.5 * 2 / 8, 0.0])
    m.close()
