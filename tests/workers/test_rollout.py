import pytest

from rlengine.workers.rollout import sampled_logprobs


def test_sampled_logprobs_from_flat_and_list_forms():
    from vllm.logprobs import FlatLogprobs, Logprob

    per_position = [{7: Logprob(-0.5, rank=1)}, {3: Logprob(-1.25, rank=2)}, {9: Logprob(-2.0, rank=1)}]
    flat = FlatLogprobs()
    for d in per_position:
        flat.append(d)
    assert sampled_logprobs(flat, 3) == [-0.5, -1.25, -2.0]
    assert sampled_logprobs(per_position, 3) == [-0.5, -1.25, -2.0]
    assert sampled_logprobs(None, 2) == [0.0, 0.0]


def test_sampled_logprobs_length_mismatch_is_an_error():
    with pytest.raises(RuntimeError, match="2 log-probs for 3 sampled tokens"):
        sampled_logprobs([{1: type("L", (), {"logprob": -1.0})()}] * 2, 3)
