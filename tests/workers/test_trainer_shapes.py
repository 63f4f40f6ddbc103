"""What a compiled trainer sees of length-bucketed micro-batches: one compile for every width."""
import torch

from rlengine.layout import pack_sequences
from rlengine.protocol import Batch
from rlengine.layout import length_bucketed


def _micro_batches(compiled: bool):
    g = torch.Generator().manual_seed(0)
    # 12 rows, responses 1..12 tokens: three buckets of 4, each cut to its own width
    responses = [torch.randint(3, 50, (n,), generator=g).tolist() for n in range(1, 13)]
    t = pack_sequences([[5, 6, 7]] * 12, responses, None, pad_id=0)
    return length_bucketed(Batch(tensors=t), 4, compiled=compiled)


def _counted():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()

    @torch.compile(backend=counter, dynamic=None)
    def score(input_ids, attention_mask, position_ids):
        return (input_ids * attention_mask + position_ids).sum(1)

    return counter, score


def _compiles(mark: bool) -> int:
    counter, score = _counted()
    micros = _micro_batches(compiled=mark)
    assert len({m["input_ids"].shape[1] for m in micros}) == 3  # three different widths
    for m in micros:
        score(m["input_ids"], m["attention_mask"], m["position_ids"])
    return counter.frame_count


def test_marked_widths_compile_once():
    assert _compiles(mark=True) == 1
    assert _compiles(mark=False) == 2  # dynamo's default: static first width, then a dynamic recompile


def test_one_width_keeps_a_static_graph():
    counter, score = _counted()
    t = pack_sequences([[5, 6]] * 8, [[7, 8, 9]] * 8, None, pad_id=0)  # fixed-length work
    micros = length_bucketed(Batch(tensors=t), 4, compiled=True)
    for m in micros:
        score(m["input_ids"], m["attention_mask"], m["position_ids"])
    assert counter.frame_count == 1
    wider = torch.ones(4, 7, dtype=torch.long)
    score(wider, wider, wider)
    assert counter.frame_count == 2  # the one width was compiled statically, not marked dynamic
