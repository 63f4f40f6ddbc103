"""The GPU paths of the weight sync (run with `pytest -m gpu` where CUDA is present): CUDA IPC
handles between two processes on one GPU, device-side checksums equal to the same bytes' on any
device, and the sender's buckets on the device."""
import multiprocessing as mp

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")


def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _receiver(handle, q):
    from rlengine.weight_sync.cuda_ipc import open_handle
    from rlengine.weight_sync.verify import tensor_checksum

    t = open_handle(handle, torch.device("cuda", 0))
    q.put((tensor_checksum(t), float(t.double().sum())))


def test_cuda_ipc_maps_the_senders_buffer_and_checksums_match():
    _needs_cuda()
    from rlengine.weight_sync.cuda_ipc import share
    from rlengine.weight_sync.verify import tensor_checksum

    buf = torch.randn(1 << 20, device="cuda", dtype=torch.bfloat16)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_receiver, args=(share(buf), q))
    p.start()
    got, total = q.get(timeout=120)
    p.join(60)
    assert got == tensor_checksum(buf) and got[0] == "dev64"
    assert total == pytest.approx(float(buf.double().sum()))


def test_device_checksum_is_the_same_function_of_the_bytes_everywhere():
    _needs_cuda()
    from rlengine.weight_sync.verify import tensor_checksum

    t = torch.randn(12345, dtype=torch.float32)
    assert tensor_checksum(t.cuda()) == tensor_checksum(t, "dev64")


def test_sender_buckets_on_the_device():
    _needs_cuda()
    from rlengine.weight_sync.sender import WeightSender
    from rlengine.weight_sync.verify import checksum

    named = [("a", torch.randn(64, 32, device="cuda")), ("b", torch.randn(7, device="cuda"))]
    s = WeightSender(torch.device("cuda"))
    s.begin([(n, tuple(t.shape), t.dtype) for n, t in named], {"shm", "cuda_ipc"})
    s.bucket(named)
    out = s.finish()
    assert out["checksums"]["dev64"] == checksum(named)  # computed on the GPU
    assert out["checksums"]["crc32"] == checksum([(n, t.cpu()) for n, t in named])  # the host copy in /dev/shm
    assert len(out["ipc"]) == 1 and "shm" in out


def test_receiver_reads_the_ipc_buckets_the_sender_made():
    _needs_cuda()
    from types import SimpleNamespace

    from rlengine.weight_sync import receiver
    from rlengine.weight_sync.sender import WeightSender
    from rlengine.weight_sync.verify import checksum

    named = [("a", torch.randn(64, 32, device="cuda")), ("h", torch.randn(9, device="cuda").bfloat16())]
    s = WeightSender(torch.device("cuda"))
    s.begin([(n, tuple(t.shape), t.dtype) for n, t in named], {"cuda_ipc"})
    s.bucket(named)
    out = s.finish()
    worker = SimpleNamespace(model_runner=SimpleNamespace(device=torch.device("cuda", 0)))
    got = list(receiver._arrivals(worker, {"method": "cuda_ipc", "payload": out}))
    assert checksum(got) == out["checksums"]["dev64"] == checksum(named)
