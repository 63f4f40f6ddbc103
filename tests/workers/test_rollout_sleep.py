"""Hybrid colocation: vLLM sleeps while the trainer runs (rollout.sleep_level, Plan.sleep_level).

The ordering is pure driver logic, checked here with recording stand-ins for the roles and the
real controller and GRPO step: after generating the engines sleep; before the next generation
the weights wake, the weight sync fills them, then the KV cache wakes; level 2 makes every push
a full one; without colocation nothing of this is called.  The rollout worker's own bookkeeping
runs without vLLM; the real sleep/wake on a GPU is the `-m gpu` test at the end.
"""
import inspect
import logging
from types import SimpleNamespace

import pytest
import torch

from rlengine.compose import load_config
from rlengine.controller import Controller, Roles
from rlengine.layout import pack_sequences
from rlengine.protocol import Batch
from rlengine.stages import get_stage
from rlengine.weight_sync import WeightSync
from rlengine.workers.rollout import RolloutWorker

PROMPTS, GROUP = 4, 2


class Roles_:
    """Recording stand-ins for the trainer and rollout groups.  The rollout one keeps the state
    the real engines keep (what is asleep) and fails a generation or weight load that it forbids."""

    def __init__(self, n_engines: int = 2):
        self.log: list[str] = []
        self.asleep: set[str] = set()
        self.n = n_engines

    def group(self, name: str):
        return _Group(self, name)

    def rollout(self, method: str, batch, args):
        if method == "sleep":
            self.asleep = {"weights", "kv_cache"}
            return {"skipped": 1.0, "freed_gib": 0.0}
        if method == "wake_up":
            self.asleep -= set(args[0])
            return {"skipped": 1.0}
        assert method == "generate" and not self.asleep, f"generate while {self.asleep} asleep"
        n = args[0]
        rows = len(batch) * n
        packed = pack_sequences([[1, 2]] * rows, [[3, 4, 5]] * rows, [[-0.5, -0.25, -1.0]] * rows, 0)
        meta = {"prompt": ["p"] * rows, "response": ["r"] * rows, "ground_truth": ["1"] * rows,
                "extra": [{}] * rows}
        return Batch(tensors=packed, meta=meta, info={"pad_id": 0})

    def trainer(self, method: str, batch, args):
        if method in ("log_probs", "ref_log_probs"):
            key = "old_logp" if method == "log_probs" else "ref_logp"
            return Batch(tensors={key: batch["rollout_logp"].clone()})
        if method == "update":
            return {"actor/pg_loss": 0.0, "sync/logprob_drift": 0.0}
        return None  # offload_states / reload_states


class _Group:
    max_restarts = 0

    def __init__(self, roles: Roles_, name: str):
        self.roles, self.name = roles, name
        self.actors = [object()] * roles.n

    def __len__(self):
        return len(self.actors)

    def _do(self, method, batch, args):
        self.roles.log.append(f"{self.name}.{method}" + (f"({args[0]})" if method in ("sleep", "wake_up") else ""))
        return getattr(self.roles, self.name)(method, batch, args)

    def call_all(self, method, *args):
        return [self._do(method, None, args)] * len(self.actors)  # one record per group call

    def map_batch(self, method, batch, *args, join=Batch.concat, **kw):
        return join([self._do(method, batch, args)])

    def call_split(self, method, batch, *args, **kw):
        return [self._do(method, batch, args)]


class RecordingSync(WeightSync):
    """The driver's real choice of sync kind (LoRA adapter mode: base+adapter until the engines
    hold the base, then the adapter alone); the transfer itself is recorded, not made."""

    def __init__(self, roles: Roles_, trainer, rollout):
        super().__init__(trainer, rollout, lora_sync="adapter")
        self.roles = roles

    def push(self, step):
        assert "weights" not in self.roles.asleep, "weights pushed into a sleeping engine"
        kind = self._kind()
        self.roles.log.append(f"push:{kind}")
        self.engines_have_base = True
        return {"sync/checksum_ok": 1.0, "sync/adapter_only": float(kind == "adapter")}


def _controller(overrides: list[str], colocate: bool = True):
    cfg, plan = load_config("grpo_tiny", ["model.path=tiny:base", "trainer.world_size=2", "rollout.num_workers=2",
                                          "reference.placement=trainer", "algorithm.kl_coef=0.05",
                                          f"data.prompts_per_step={PROMPTS}", f"algorithm.group_size={GROUP}",
                                          f"resources.colocate={str(colocate).lower()}", *overrides])
    fake = Roles_()
    roles = Roles(trainer=fake.group("trainer"), rollout=fake.group("rollout"))
    rows = [{"prompt": "1+1=", "answer": "2"}] * PROMPTS
    loader = SimpleNamespace(next=lambda: rows, state_dict=lambda: {})
    ctl = Controller(cfg, plan, get_stage("grpo")(cfg, plan), roles, None, None, loader, [], [])
    ctl.weight_sync = RecordingSync(fake, roles.trainer, roles.rollout)
    ctl.prompts = lambda rows, step: Batch(tensors={"i": torch.arange(len(rows))},
                                           meta={"prompt_ids_list": [[1, 2]] * len(rows)}).with_info(step=step)
    scored = SimpleNamespace(errors=0, timeouts=0)
    ctl.score = lambda b: (b.update(scores=torch.ones(len(b)), fn_scores=torch.ones(len(b))), scored)
    return ctl, fake


def _steps(ctl, fake, n=2) -> tuple[list[list[str]], list[dict]]:
    """The job's start (engines to sleep once the controller exists), then n steps: each step's calls."""
    ctl.sleep_engines()
    per_step, metrics = [list(fake.log)], []
    for step in range(1, n + 1):
        fake.log.clear()
        metrics.append(ctl.step(step))
        per_step.append(list(fake.log))
    return per_step, metrics


TRAINER_PASSES = ["trainer.ref_log_probs", "trainer.log_probs", "trainer.update"]


def _passes(calls):
    return [c for c in calls if c in TRAINER_PASSES]


def test_level_1_sleeps_after_generation_and_wakes_weights_sync_kv_in_that_order():
    ctl, fake = _controller(["rollout.sleep_level=1"])
    assert ctl.plan.sleep_level == 1
    (start, one, two), metrics = _steps(ctl, fake)
    assert start == ["rollout.sleep(1)"]
    passes = _passes(one)
    assert passes and passes == _passes(two)
    # Step 1: weights and KV cache back (level 1 restores the weights), sample, sleep, trainer
    # passes, then the sync wakes the weights and pushes into them.
    assert one == ["rollout.wake_up(['weights'])", "rollout.wake_up(['kv_cache'])", "rollout.generate",
                   "rollout.sleep(1)", *passes, "rollout.wake_up(['weights'])", "push:base+adapter"]
    # Step 2: the weights are awake since the sync: only the KV cache wakes; the adapter alone travels.
    assert two == ["rollout.wake_up(['kv_cache'])", "rollout.generate", "rollout.sleep(1)", *passes,
                   "rollout.wake_up(['weights'])", "push:adapter"]
    m = metrics[-1]
    assert m["timing_s/sleep"] >= 0 and m["timing_s/wake"] >= 0
    # Cumulative group calls: 3 sleeps, 5 wakes (weights, kv_cache, weights, kv_cache, weights);
    # the stand-in engines skip every call, as vLLM's CPU build does.
    assert (m["sleep/sleeps"], m["sleep/wakes"], m["sleep/skipped"]) == (3, 5, 8)
    assert m["sync/adapter_only"] == 1.0


def test_level_2_discards_the_weights_so_every_push_is_a_full_one():
    ctl, fake = _controller(["rollout.sleep_level=2"])
    (start, one, two), metrics = _steps(ctl, fake)
    assert start == ["rollout.sleep(2)"]
    passes = _passes(one)
    # The discarded weights are filled by a full sync before the KV cache wakes and sampling starts.
    assert one == ["rollout.wake_up(['weights'])", "push:base+adapter", "rollout.wake_up(['kv_cache'])",
                   "rollout.generate", "rollout.sleep(2)", *passes, "rollout.wake_up(['weights'])",
                   "push:base+adapter"]
    assert two == ["rollout.wake_up(['kv_cache'])", "rollout.generate", "rollout.sleep(2)", *passes,
                   "rollout.wake_up(['weights'])", "push:base+adapter"]
    assert metrics[-1]["sync/adapter_only"] == 0.0


def test_trainer_offload_brackets_the_generation():
    ctl, fake = _controller(["rollout.sleep_level=1", "trainer.offload_during_rollout=true"])
    (start, one, two), _ = _steps(ctl, fake)
    assert start == ["rollout.sleep(1)"]  # nothing offloaded yet: nothing to reload
    for calls in (one, two):
        i = calls.index("rollout.generate")
        # Offloaded after the sync's gather and before the KV cache takes the memory; back after
        # the engines sleep and before the first trainer pass.
        assert calls[i - 2:i + 3] == ["trainer.offload_states", "rollout.wake_up(['kv_cache'])", "rollout.generate",
                                      "rollout.sleep(1)", "trainer.reload_states"]
        assert calls.index("trainer.reload_states") < calls.index(_passes(calls)[0])


def test_evaluation_wakes_the_engines_and_puts_them_back_to_sleep():
    ctl, fake = _controller(["rollout.sleep_level=1"])
    ctl.sleep_engines()
    fake.log.clear()
    ctl.encoder = SimpleNamespace(to_batch=lambda rows: Batch(tensors={"i": torch.arange(len(rows))},
                                                              meta={"prompt_ids_list": [[1, 2]] * len(rows)}))
    held = SimpleNamespace(rows=[{}] * 3, suffix="", metrics=lambda *a: {"eval/accuracy": 1.0})
    ctl.heldout = [held, held]
    assert ctl.evaluate_generation()["eval/accuracy"] == 1.0
    assert fake.log == ["rollout.wake_up(['weights'])", "rollout.wake_up(['kv_cache'])", "rollout.generate",
                        "rollout.generate", "rollout.sleep(1)"]


@pytest.mark.parametrize("overrides", [[], ["rollout.sleep_level=0"]])
def test_without_sleep_nothing_sleeps_or_wakes(overrides):
    """Separate engines (and colocated ones at sleep_level 0): the step makes no sleep, wake or
    offload call and reports no sleep metrics."""
    colocate = bool(overrides)
    ctl, fake = _controller([*overrides, "trainer.offload_during_rollout=true"], colocate=colocate)
    assert ctl.plan.sleep_level == 0
    (start, one, two), metrics = _steps(ctl, fake)
    assert start == []
    for calls in (one, two):
        assert not [c for c in calls if "sleep" in c or "wake" in c or "offload" in c or "reload" in c]
        assert calls[0] == "rollout.generate" and calls[-1].startswith("push:")
    assert not [k for k in metrics[-1] if k.startswith("sleep/") or k in ("timing_s/sleep", "timing_s/wake")]


# ---- the rollout worker's own bookkeeping, without vLLM


def _worker(can_sleep: bool, device: str = "cpu"):
    w = RolloutWorker.__new__(RolloutWorker)
    w.cfg = SimpleNamespace(resources=SimpleNamespace(device=device))
    w.rank, w.sleep_level, w.asleep, w.can_sleep, w._skip_logged = 3, 1, set(), can_sleep, False
    calls = []
    w.llm = SimpleNamespace(sleep=lambda level: calls.append(("sleep", level)),
                            wake_up=lambda tags: calls.append(("wake_up", tags)),
                            collective_rpc=lambda fn: [10 * 2**30] if not calls else [14 * 2**30])
    return w, calls


def test_cpu_engine_skips_the_calls_logs_once_and_still_enforces_the_order(caplog):
    w, calls = _worker(can_sleep=False)
    with caplog.at_level(logging.WARNING, logger="rlengine"):
        assert w.sleep(1) == {"skipped": 1.0, "freed_gib": 0.0}
        with pytest.raises(RuntimeError, match="rollout engine 3: generate while its weights and kv_cache are asleep"):
            w._check_awake("generate", ("weights", "kv_cache"))
        assert w.wake_up(["weights"]) == {"skipped": 1.0}
        w._check_awake("load_weights", ("weights",))
        with pytest.raises(RuntimeError, match="kv_cache is asleep"):
            w._check_awake("generate", ("weights", "kv_cache"))
        w.wake_up(["kv_cache"])
        assert w.wake_up(["kv_cache"]) == {"skipped": 0.0}  # awake already: nothing to do
        w.sleep(1)
    assert calls == []
    skipped = [r.getMessage() for r in caplog.records if "vLLM sleep skipped" in r.getMessage()]
    assert len(skipped) == 1 and "not supported on CPU" in skipped[0] and "rollout engine 3" in skipped[0]


def test_gpu_engine_calls_vllm_sleep_and_wakes_only_what_is_asleep():
    w, calls = _worker(can_sleep=True, device="cuda")
    assert w.sleep(2) == {"skipped": 0.0, "freed_gib": 4.0}
    assert w.sleep(2)["freed_gib"] == 0.0  # asleep already
    w.wake_up(["weights"])
    w.wake_up(["weights", "kv_cache"])
    assert calls == [("sleep", 2), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])]
    assert w.asleep == set()


def test_the_vllm_sleep_api_the_worker_relies_on():
    """LLM.sleep(level=...), LLM.wake_up(tags=[...]) with the tags the worker passes, and the
    engine flag; a vLLM upgrade that renames them fails here."""
    from vllm import LLM
    from vllm.config.model import ModelConfig

    from rlengine.workers.rollout import SLEEP_TAGS

    assert "level" in inspect.signature(LLM.sleep).parameters
    assert "tags" in inspect.signature(LLM.wake_up).parameters
    assert set(SLEEP_TAGS) <= set(inspect.getsource(LLM.wake_up).split('"'))
    assert hasattr(ModelConfig, "enable_sleep_mode") or "enable_sleep_mode" in ModelConfig.__dataclass_fields__


# ---- the real thing, on a GPU


@pytest.mark.gpu
def test_sleep_frees_memory_and_wake_generates_the_same_and_level_2_reloads(tmp_path):
    """One tiny engine with sleep mode: sleep(1) frees device memory, and greedy answers after
    waking (weights, then KV cache) equal those before; sleep(2) discards the weights, which a
    full weight load through the worker's own path restores to the same answers."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from transformers import AutoModelForCausalLM

    from rlengine import tiny

    path = tiny.resolve_path("tiny:base")
    cfg, _ = load_config("grpo_tiny", ["model.path=tiny:base", "resources.device=cuda", "resources.gpus_per_trainer=1",
                                       "rollout.gpu_memory_utilization=0.3", "rollout.max_new_tokens=8"])
    w = RolloutWorker(cfg, path, path, sleep_level=2)
    try:
        assert w.can_sleep
        prompts = Batch(tensors={"i": torch.arange(4)}, meta={"prompt_ids_list": [[5, 6, 7], [8, 9], [10], [11, 12]]})
        before = w.generate(prompts, 1, greedy=True)["responses"]

        freed = w.sleep(1)["freed_gib"]
        assert freed > 0.1, f"sleep(1) freed {freed:.3f} GiB"
        with pytest.raises(RuntimeError, match="asleep"):
            w.generate(prompts, 1, greedy=True)
        w.wake_up(["weights"])
        w.wake_up(["kv_cache"])
        assert torch.equal(w.generate(prompts, 1, greedy=True)["responses"], before)

        assert w.sleep(2)["freed_gib"] > 0.1
        w.wake_up(["weights"])
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.model.dtype))
        named = [(n, p.detach().cuda()) for n, p in model.named_parameters()]
        if model.config.tie_word_embeddings and "lm_head.weight" not in dict(named):
            named.append(("lm_head.weight", model.get_input_embeddings().weight.detach().cuda().clone()))
        report = w.load_weights({"method": "object_store", "kind": "full", "step": 0},
                                {"buckets": [{"tensors": named}]})
        assert not report["shard_bad"] and all(not r["bad"] for r in report["ranks"])
        w.wake_up(["kv_cache"])
        assert torch.equal(w.generate(prompts, 1, greedy=True)["responses"], before)
    finally:
        w.shutdown()
