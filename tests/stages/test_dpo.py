"""rlengine/stages/dpo.py: the pair layout, the loss dispatch and the config rules, by hand."""
import math
from types import SimpleNamespace

import pytest
import torch

from rlengine.compose import load_config
from rlengine.data import PromptEncoder
from rlengine.errors import ConfigError
from rlengine.stages.dpo import _loss, pair_sequences


class _Tok:
    """Characters are tokens: 'a' -> 97; eos 1, pad 0."""

    eos_token_id, pad_token_id = 1, 0

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[ord(c) for c in text])


def _encoder():
    return PromptEncoder(_Tok(), "prompt", "answer", False, None, 8)


def test_pairs_interleave_chosen_and_rejected_with_eos_and_cut_at_max_length():
    d = SimpleNamespace(chosen_key="chosen", rejected_key="rejected")
    rows = [{"prompt": "ab", "chosen": "x", "rejected": "yz"}, {"prompt": "c", "chosen": "uvw", "rejected": "q"}]
    b = pair_sequences(_encoder(), rows, d, max_length=4)
    # responses + EOS, cut to max_length - len(prompt) tokens: 2 for "ab", 3 for "c"
    x, y, z, u, v, w, q = map(ord, "xyzuvwq")
    assert b["responses"].tolist() == [[x, 1, 0], [y, z, 0], [u, v, w], [q, 1, 0]]
    assert b["response_mask"].tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]]
    assert b["input_ids"][2].tolist() == [0, ord("c"), u, v, w]
    assert b.info["temperature"] == 1.0 and b.info["pad_id"] == 0


def _cfg(**algo):
    return SimpleNamespace(algorithm=SimpleNamespace(**{"dpo_loss": "sigmoid", "beta": 0.5, "label_smoothing": 0.0,
                                                         "simpo_gamma": 0.0, **algo}))


def test_loss_pairs_rows_2i_and_2i_plus_1_with_the_reference():
    logps = torch.tensor([-1.0, -3.0])  # chosen, rejected
    ref = torch.tensor([-2.0, -2.0])
    loss, m = _loss(_cfg(), logps, ref, torch.tensor([2.0, 4.0]), normaliser=None)
    h = (-1.0 + 2.0) - (-3.0 + 2.0)  # 2
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * h))))
    assert m["rewards/chosen"] == pytest.approx(0.5) and m["rewards/rejected"] == pytest.approx(-0.5)


def test_simpo_uses_lengths_and_no_reference():
    logps = torch.tensor([-1.0, -3.0])
    loss, _ = _loss(_cfg(dpo_loss="simpo", beta=2.0, simpo_gamma=0.5), logps, None, torch.tensor([2.0, 4.0]),
                    normaliser=None)
    z = 2.0 * (-1.0 / 2) - 2.0 * (-3.0 / 4) - 0.5  # 0.0
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-z))))


@pytest.mark.parametrize("overrides, key", [
    (["algorithm.dpo_loss=ipo", "algorithm.label_smoothing=0.1"], "algorithm.label_smoothing"),
    (["algorithm.dpo_loss=nope"], "algorithm.dpo_loss"),
    (["algorithm.beta=0"], "algorithm.beta"),
    (["algorithm.kl_coef=0.1"], "algorithm.kl_coef"),
    (["trainer.micro_batch_size=3"], "trainer.micro_batch_size"),
])
def test_bad_dpo_configs_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config("rm_tiny", ["algorithm.name=dpo", *overrides])
    assert e.value.key == key


def test_dpo_plans_a_reference_except_simpo_and_engines_only_for_generation_sets():
    _, plan = load_config("rm_tiny", ["algorithm.name=dpo"])
    assert plan.use_reference and not plan.use_rollout and plan.samples_per_step == 128
    _, plan = load_config("rm_tiny", ["algorithm.name=dpo", "algorithm.dpo_loss=simpo"])
    assert not plan.use_reference
    _, plan = load_config("rm_tiny", ["algorithm.name=dpo", "+eval.sets=[{name: math, path: tiny:test}]"])
    assert plan.use_rollout
