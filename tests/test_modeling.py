"""modeling.response_logprobs: the chunked backbone + head path equals the full-logits computation."""
import pytest
import torch

from rlengine import lora, tiny
from rlengine.algos.losses import chunked_logprobs, entropy_from_logits, logprobs_from_logits
from rlengine.config import LoraConfig, ModelConfig
from rlengine.layout import pack_sequences
from rlengine.modeling import forward_logits, load_causal_lm, response_logprobs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TOL = 1e-6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_causal_lm(str(tiny.build_base()), "float32", "sdpa").eval()


def _batch(n: int = 5, seed: int = 0) -> dict:
    """Left-padded prompts of 2..8 tokens, right-padded responses of 1..14 (B*R = n * 14 at most)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 300, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    responses = [torch.randint(3, 300, (int(torch.randint(1, 15, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    return pack_sequences(prompts, responses, None, pad_id=0)


def _old(model, batch, temperature=1.0):
    """The full-logits computation response_logprobs replaced: logits over every column, sliced."""
    P = batch["input_ids"].shape[1] - batch["responses"].shape[1]
    logits_BRV = forward_logits(model, batch)[:, P - 1:-1].float() / temperature
    return logprobs_from_logits(logits_BRV, batch["responses"]), entropy_from_logits(logits_BRV)


def _valid(batch):
    return batch["attention_mask"][:, -batch["responses"].shape[1]:].bool()


def _max_diff(a, b, mask):
    return float((a - b)[mask].abs().max())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_equals_full_logits(model, temperature, chunk):
    batch = _batch()
    valid = _valid(batch)
    assert not valid.all() and valid.sum() % 7 != 0  # padding on both sides; 7 divides neither B*R nor N
    with torch.no_grad():
        old_logp, old_ent = _old(model, batch, temperature)
        logp, ent = response_logprobs(model, batch, temperature, with_entropy=True, chunk_tokens=chunk)
        only = response_logprobs(model, batch, temperature, chunk_tokens=chunk)
    assert logp.shape == ent.shape == batch["responses"].shape and logp.dtype == torch.float32
    assert _max_diff(logp, old_logp, valid) <= TOL and _max_diff(ent, old_ent, valid) <= TOL
    assert torch.equal(only, logp)
    assert (logp[~valid] == 0).all() and (ent[~valid] == 0).all()  # padding positions are 0


def test_fallback_keeps_only_the_response_columns(model, monkeypatch):
    """A compiled engine runs the full forward, with logits_to_keep = R + 1."""
    batch = _batch()
    R = batch["responses"].shape[1]
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    monkeypatch.setattr(model, "is_compiled", True, raising=False)
    try:
        with torch.no_grad():
            logp, ent = response_logprobs(model, batch, 0.7, with_entropy=True, chunk_tokens=7)
    finally:
        hook.remove()
    assert seen == [R + 1]
    old_logp, old_ent = _old(model, batch, 0.7)
    assert _max_diff(logp, old_logp, _valid(batch)) <= TOL and _max_diff(ent, old_ent, _valid(batch)) <= TOL


def test_head_runs_in_chunks_over_real_tokens_only(model):
    batch = _batch()
    rows = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        with torch.no_grad():
            response_logprobs(model, batch, chunk_tokens=7)
    finally:
        hook.remove()
    n = int(_valid(batch).sum())
    assert rows == [7] * (n // 7) + [n % 7]


def _peft(model):
    cfg = ModelConfig(path="tiny:base", lora=LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"]))
    import copy

    torch.manual_seed(1)
    peft = lora.wrap(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return peft


def test_peft_model_with_and_without_adapter(model):
    peft = _peft(model)
    batch, valid = _batch(), _valid(_batch())
    with torch.no_grad():
        old_logp, old_ent = _old(peft, batch, 0.7)
        logp, ent = response_logprobs(peft, batch, 0.7, with_entropy=True, chunk_tokens=7)
        with peft.disable_adapter():
            old_base, _ = _old(peft, batch, 0.7)
            base = response_logprobs(peft, batch, 0.7, chunk_tokens=7)
        plain, _ = _old(model, batch, 0.7)
    assert _max_diff(logp, old_logp, valid) <= TOL and _max_diff(ent, old_ent, valid) <= TOL
    assert _max_diff(base, old_base, valid) <= TOL and _max_diff(base, plain, valid) <= TOL
    assert _max_diff(logp, base, valid) > 1e-3  # the adapter was applied


def _grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("entropy_grad", [True, False])
def test_gradients_equal_full_logits(model, entropy_grad):
    """Checkpointed chunks: d/dθ [sum(logp * w) + sum(H * u)] as through the full logits."""
    batch = _batch()
    valid = _valid(batch).float()
    g = torch.Generator().manual_seed(2)
    w, u = torch.randn(valid.shape, generator=g) * valid, torch.randn(valid.shape, generator=g) * valid
    u = u if entropy_grad else torch.zeros_like(u)

    def old():
        logp, ent = _old(model, batch, 0.7)
        return (logp * w).sum() + (ent * u).sum()

    def new():
        logp, ent = response_logprobs(model, batch, 0.7, with_entropy=True, entropy_grad=entropy_grad,
                                      chunk_tokens=7)
        assert ent.requires_grad == entropy_grad and logp.requires_grad
        return (logp * w).sum() + ((ent * u).sum() if entropy_grad else 0.0)

    ref, got = _grads(model, old), _grads(model, new)
    assert set(got) == set(ref)
    _assert_grads_close(got, ref)


def _assert_grads_close(got, ref):
    """Relative error <= 1e-6 over all parameters together, and <= 1e-5 per tensor: a small
    gradient (a k_proj bias) sits closer to fp32 summation-order noise."""
    diff = sum(float((got[n] - ref[n]).norm()) ** 2 for n in ref) ** 0.5
    assert diff <= TOL * sum(float(ref[n].norm()) ** 2 for n in ref) ** 0.5
    for n in ref:
        assert float((got[n] - ref[n]).norm()) <= 1e-5 * float(ref[n].norm()), n


def test_peft_gradients_reach_the_adapters_only(model):
    peft = _peft(model)
    batch = _batch()
    w = _valid(batch).float()
    got = _grads(peft, lambda: (response_logprobs(peft, batch, chunk_tokens=7) * w).sum())
    ref = _grads(peft, lambda: (_old(peft, batch)[0] * w).sum())
    assert set(got) == set(ref) and got and all("lora_" in n for n in got)
    _assert_grads_close(got, ref)


def test_no_grad_entropy_is_detached(model):
    batch = _batch()
    logp, ent = response_logprobs(model, batch, with_entropy=True, entropy_grad=False)
    assert logp.requires_grad and not ent.requires_grad
    with torch.no_grad():
        logp, ent = response_logprobs(model, batch, with_entropy=True)
    assert not logp.requires_grad and not ent.requires_grad


def test_no_response_tokens_still_backpropagates(model):
    """A micro-batch with no real response token (a rank's padding micro-batch) still has a graph,
    so backward runs, with zero gradients."""
    batch = pack_sequences([[5, 6, 7], [8, 9]], [[], []], None, pad_id=0)
    logp = response_logprobs(model, batch)
    assert logp.requires_grad and (logp == 0).all()
    grads = _grads(model, lambda: response_logprobs(model, batch).sum())
    assert grads and all((g == 0).all() for g in grads.values())


def test_chunked_logprobs_calls_project_n_chunks_times():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11)
    h_NH, y_N = torch.randn(10, 8, requires_grad=True), torch.randint(0, 11, (10,))
    calls = []

    def project(x):
        calls.append(x.shape[0])
        return head(x)

    logp, ent = chunked_logprobs(h_NH, y_N, project, temperature=2.0, chunk_tokens=4, with_entropy=True,
                                 n_chunks=5)
    assert calls == [4, 4, 2, 0, 0]
    z = head(h_NH).float() / 2.0
    torch.testing.assert_close(logp, logprobs_from_logits(z, y_N), rtol=0, atol=TOL)
    torch.testing.assert_close(ent, entropy_from_logits(z), rtol=0, atol=TOL)
    (logp.sum() + ent.sum()).backward()
    # Backward recomputed every chunk's logits (in its own order), the empty ones too.
    assert len(calls) == 10 and sorted(calls[5:]) == [0, 0, 2, 4, 4]
    with pytest.raises(ValueError):
        chunked_logprobs(h_NH, y_N, project, chunk_tokens=0)


_ZERO3_RANK = r'''
import os
import torch, deepspeed
from transformers.integrations import HfDeepSpeedConfig
from rlengine import tiny
from rlengine.layout import pack_sequences
from rlengine.modeling import load_causal_lm, response_logprobs
import test_modeling as t

deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 2,
       "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
       "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10**9}
keep = HfDeepSpeedConfig(cfg)  # from_pretrained under zero.Init: every weight partitioned
rank = int(os.environ["RANK"])
batch = t._batch(6 if rank == 0 else 2, seed=rank)  # several head chunks on rank 0, fewer on rank 1
w = t._valid(batch).float()
out = {}
for name, fn in [("old", lambda e: t._old(e, batch, 0.7)),
                 ("new", lambda e: response_logprobs(e, batch, 0.7, with_entropy=True, chunk_tokens=5))]:
    torch.manual_seed(0)
    m = load_causal_lm(str(tiny.build_base()), "float32", "sdpa")
    e, *_ = deepspeed.initialize(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.0), config=cfg)
    with torch.no_grad():
        scored = fn(e)
    logp, ent = fn(e)
    e.backward((logp * w).sum() + (ent * w).sum(), scale_wrt_gas=False)
    grads = {n: deepspeed.utils.safe_get_full_grad(p).clone() for n, p in e.module.named_parameters()}
    out[name] = scored, grads
    e.step()
valid = t._valid(batch)
for a, b in zip(out["old"][0], out["new"][0]):
    assert t._max_diff(a, b, valid) <= 1e-5
t._assert_grads_close(out["new"][1], out["old"][1])
print("ok", rank)
'''


@pytest.mark.slow
def test_zero3_ranks_with_different_token_counts(tmp_path):
    """Two ZeRO-3 ranks (gloo, CPU) through the DeepSpeed engine: rank 0 has more head chunks than
    rank 1, yet both call the head equally often (else the weight gathers would hang), and logp,
    entropy and the reduced gradients equal the full-logits path."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = Path(__file__).resolve().parent
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2", "LOCAL_RANK": "0", "PYTHONPATH": f"{here}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", _ZERO3_RANK], env={**env, "RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert all(f"ok {r}" in log for r, log in enumerate(logs))
