"""Rollout role: a vLLM engine that samples responses with their log-probs and takes new weights.

The engine core runs in the actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0): start-up is a
few seconds instead of ~17.  With tensor_parallel_size 1 the model runs there too, so weights
reach it as tensors with no serialisation hop; with N > 1 vLLM's multiprocess executor starts N
worker processes on the devices of this actor's bundle (the actor itself computes nothing), and
every weight transport reaches each of them (rlengine/weight_sync/receiver.py).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import torch

from rlengine import faults, lora
from rlengine.config import RootConfig
from rlengine.data import prompt_seed
from rlengine.layout import pack_sequences
from rlengine.modeling import set_threads
from rlengine.protocol import Batch
from rlengine.weight_sync import receiver
from rlengine.weight_sync.shm import SharedWeights
from rlengine.weight_sync.verify import check_shards

log = logging.getLogger("rlengine")


def _vllm_env(cfg: RootConfig) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if cfg.resources.device == "cpu":
        set_threads(cfg.rollout.cpu_threads)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.rollout.kv_cache_gib))
        bind = cfg.rollout.cpu_bind or tp_cpu_bind(cfg.rollout.tensor_parallel_size, sorted(os.sched_getaffinity(0)))
        if bind:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"


def tp_cpu_bind(tp: int, cpus: list[int]) -> str | None:
    """The cores of each TP worker on the CPU build ("0|1": rank 0 on core 0, rank 1 on core 1):
    this process's cores split evenly between the ranks, one core at least each."""
    if tp <= 1:
        return None
    per = max(1, len(cpus) // tp)
    groups = [cpus[(r * per) % len(cpus):(r * per) % len(cpus) + per] for r in range(tp)]
    return "|".join(",".join(map(str, g)) for g in groups)


def sampled_logprobs(lp, n_tokens: int) -> list[float]:
    """The sampled token's log-prob at each of `n_tokens` positions, from vLLM's flat logprobs
    (logprobs=0: exactly one entry per position) or its list of per-position dicts."""
    if lp is None or n_tokens == 0:
        return [0.0] * n_tokens
    if hasattr(lp, "start_indices"):  # FlatLogprobs
        out = [lp.logprobs[i] for i in lp.start_indices]
    else:
        out = [next(iter(d.values())).logprob for d in lp]
    if len(out) != n_tokens:
        raise RuntimeError(f"vLLM returned {len(out)} log-probs for {n_tokens} sampled tokens")
    return out


def _free_device_bytes(worker) -> int:
    """Free memory of this vLLM worker's device (run on every TP rank through collective_rpc)."""
    return torch.cuda.mem_get_info()[0]


SLEEP_TAGS = ("weights", "kv_cache")


class RolloutWorker:
    def __init__(self, cfg: RootConfig, model_path: str, tokenizer_path: str, rank: int = 0, sleep_level: int = 0):
        _vllm_env(cfg)
        from transformers import AutoTokenizer
        from vllm import LLM

        self.cfg, self.rank = cfg, rank
        # Hybrid colocation (Plan.sleep_level > 0): the engine sleeps while the trainer uses the GPU.
        # vLLM's CPU build has no sleep mode: there the calls are made, recorded and skipped.
        # `asleep` is the memory this engine was told to release, on every device: generate and
        # load_weights refuse to run while what they need is asleep, so a misordered call fails
        # on CPU runs too.  A restarted engine starts awake and ignores wakes it does not need.
        self.sleep_level, self.asleep = sleep_level, set()
        self.can_sleep = sleep_level > 0 and cfg.resources.device == "cuda"
        self._skip_logged = False
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        r = cfg.rollout
        kw = dict(model=model_path, tokenizer=tokenizer_path, dtype=cfg.model.dtype, seed=cfg.seed,
                  enforce_eager=r.enforce_eager, max_model_len=r.max_model_len,
                  tensor_parallel_size=r.tensor_parallel_size,
                  distributed_executor_backend="mp" if r.tensor_parallel_size > 1 else None,
                  gpu_memory_utilization=r.gpu_memory_utilization,
                  logprobs_mode="processed_logprobs", trust_remote_code=cfg.model.trust_remote_code)
        if self.can_sleep:
            kw["enable_sleep_mode"] = True  # vLLM then allocates weights and KV cache from its cumem pool
        # The trained adapter, a new version after every sync (rollout.lora_sync=adapter).
        self._lora, self._lora_root = None, None
        self.serves_adapters = lora.sync_mode(cfg) == "adapter"
        if self.serves_adapters:
            try:
                self.llm = LLM(**kw, enable_lora=True, max_lora_rank=lora.vllm_max_rank(cfg.model.lora.r),
                               max_loras=1, max_cpu_loras=2)
            except (ValueError, NotImplementedError) as e:
                if "lora" not in str(e).lower():
                    raise
                log.warning("rollout engine %d: vLLM cannot serve adapters for %s (%s): the trainer pushes "
                            "merged weights instead (rollout.lora_sync=merged)", rank, model_path, e)
                self.serves_adapters = False
        if not self.serves_adapters:
            self.llm = LLM(**kw)

    def lora_mode(self) -> str:
        """How this engine takes a LoRA policy: adapter (vLLM's LoRA path) or merged weights."""
        return "adapter" if self.serves_adapters else "merged"

    def _activate_adapter(self, path: str) -> None:
        """Serve the adapter at `path` from now on, as a new version; the previous one is dropped."""
        from vllm.lora.request import LoRARequest

        version = (self._lora.lora_int_id + 1) if self._lora else 1
        req = LoRARequest(f"policy_v{version}", version, path)
        self.llm.llm_engine.add_lora(req)
        if self._lora is not None:
            self.llm.llm_engine.remove_lora(self._lora.lora_int_id)
            shutil.rmtree(self._lora.lora_path, ignore_errors=True)
        self._lora = req

    def _adapter_dir(self) -> str:
        if self._lora_root is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self._lora_root = tempfile.mkdtemp(prefix=f"rlengine-lora-{os.getpid()}-", dir=base)
        version = (self._lora.lora_int_id + 1) if self._lora else 1
        return os.path.join(self._lora_root, f"v{version}")

    def _params(self, n: int, seed: int | None, greedy: bool, max_new_tokens: int | None = None):
        from vllm import SamplingParams

        r = self.cfg.rollout
        # Token ids and the sampled token's log-prob are all a rollout needs: vLLM's per-step
        # incremental detokenisation and per-token Logprob dicts cost ~8% of CPU decode at 30M
        # (standalone vLLM, 32 tokens: 1,945 -> 2,100 tok/s); the text comes from one batch_decode.
        return SamplingParams(
            n=n, max_tokens=max_new_tokens or r.max_new_tokens, seed=seed, logprobs=0,
            temperature=0.0 if greedy else r.temperature, top_p=1.0 if greedy else r.top_p,
            top_k=-1 if greedy else r.top_k, ignore_eos=r.ignore_eos and not greedy,
            detokenize=False, flat_logprobs=True)

    def generate(self, prompts: Batch, n: int, seed: int = 0, greedy: bool = False,
                 max_new_tokens: int | None = None) -> Batch:
        """Sample n responses per prompt. Rows come out prompt-major: row i*n+j is sample j of prompt i.

        Each prompt carries its own sampling seed (meta `sample_seed`, else `data.prompt_seed` of
        seed and i), so results do not depend on how the prompts are split across rollout workers.
        """
        faults.maybe_kill("rollout", prompts.info.get("step"), self.rank)
        self._check_awake("generate", SLEEP_TAGS)
        ids = prompts["prompt_ids_list"]
        reqs = [{"prompt_token_ids": list(p)} for p in ids]
        seeds = prompts["sample_seed"] if "sample_seed" in prompts else [prompt_seed(seed, -1, i) for i in range(len(ids))]
        params = [self._params(n, None if greedy else int(s), greedy, max_new_tokens) for s in seeds]
        t0 = time.perf_counter()
        outs = self.llm.generate(reqs, params, use_tqdm=False, lora_request=self._lora)
        gen_s = time.perf_counter() - t0
        prompt_rows, resp_rows, logp_rows = [], [], []
        for p_ids, out in zip(ids, outs):
            for c in out.outputs:
                prompt_rows.append(list(p_ids))
                resp_rows.append(list(c.token_ids))
                logp_rows.append(sampled_logprobs(c.logprobs, len(c.token_ids)))
        batch = pack_sequences(prompt_rows, resp_rows, logp_rows, self.pad_id)
        texts = self.tokenizer.batch_decode([r for r in resp_rows], skip_special_tokens=True)
        meta = {k: [v for v in vals for _ in range(n)] for k, vals in prompts.meta.items()}
        meta["response"] = texts
        # pad_id: what the controller re-pads with when it joins engines' batches of different widths.
        return Batch(tensors=batch, meta=meta, info={f"gen_s/rank{self.rank}": gen_s, "pad_id": self.pad_id})

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def join_sync(self, host: str, port: int, base_rank: int, world: int, timeout_s: float,
                  layout: list, step: int) -> list[int]:
        """Every TP worker of this engine joins the weight-sync group (ranks base_rank + tp rank)."""
        return self.llm.collective_rpc(receiver.join, timeout=2 * timeout_s, args=(
            host, port, base_rank, world, timeout_s, self.node_ip(), layout, self.rank, step))

    @torch.no_grad()
    def load_weights(self, spec: dict, payload: dict | None = None) -> dict:
        """One sync on every TP rank of this engine: each receives, checksums, loads and reports
        on what it holds; sharded tensors are checked here, over the ranks' shards.
        {"fallback": True} when the trainer's shared memory is not reachable from this host or
        process namespace: the caller sends this engine Ray objects instead."""
        self._check_awake("load_weights", ("weights",))
        spec = {**spec, "engine": self.rank, "payload": payload, "threads": self.cfg.rollout.cpu_threads}
        if spec.get("kind") in ("adapter", "base+adapter"):
            spec["adapter_dir"] = self._adapter_dir()
        if spec["method"] == "shm" and receiver.open_shared(spec["payload"]["shm"]) is None:
            return {"fallback": True}
        if spec["method"] == "object_store" and self.cfg.rollout.tensor_parallel_size > 1:
            spec = self._to_local_shm(spec)  # worker processes cannot take tensors through the RPC
        t0 = time.perf_counter()
        ranks = self.llm.collective_rpc(receiver.receive, timeout=2 * self.cfg.rollout.sync_timeout_s, args=(spec,))
        adapter_dir = next((r["adapter_dir"] for r in ranks if r.get("adapter_dir")), None)
        if adapter_dir:
            self._activate_adapter(adapter_dir)
        self.llm.reset_prefix_cache()
        verified, bad = check_shards([r.pop("shards") for r in ranks])
        return {"ranks": ranks, "shard_verified": verified, "shard_bad": bad, "s": time.perf_counter() - t0}

    def _to_local_shm(self, spec: dict) -> dict:
        named = [nt for b in spec["payload"]["buckets"] for nt in b["tensors"]]
        layout = [(n, tuple(t.shape), t.dtype) for n, t in named]
        if getattr(self, "_shm_layout", None) != layout:
            self._shm, self._shm_layout = SharedWeights(layout), layout
        for n, t in named:
            self._shm.views[n].copy_(t)
        return {**spec, "method": "shm", "payload": {"shm": self._shm.handle()}}

    def sleep(self, level: int) -> dict:
        """Release this engine's device memory for the trainer: level 1 offloads the weights to host
        memory and frees the KV cache; level 2 frees both, so the next weight sync must write every
        weight before the engine is used.  Returns {"skipped": 0|1, "freed_gib": device memory freed}."""
        if self.asleep:
            return {"skipped": 0.0, "freed_gib": 0.0}
        self.asleep = set(SLEEP_TAGS)
        if not self.can_sleep:
            self._log_skip()
            return {"skipped": 1.0, "freed_gib": 0.0}
        before = self.llm.collective_rpc(_free_device_bytes)
        self.llm.sleep(level=level)
        after = self.llm.collective_rpc(_free_device_bytes)
        return {"skipped": 0.0, "freed_gib": sum(a - b for a, b in zip(after, before)) / 2**30}

    def wake_up(self, tags: list[str]) -> dict:
        """Reallocate `tags` ("weights", "kv_cache"), as verl orders it: the weights, then the
        weight sync into them, then the KV cache (the trainer may need that memory until then)."""
        todo = [t for t in tags if t in self.asleep]
        if todo and self.can_sleep:
            self.llm.wake_up(tags=todo)
        elif todo:
            self._log_skip()
        self.asleep -= set(todo)
        return {"skipped": float(bool(todo) and not self.can_sleep)}

    def _check_awake(self, what: str, needs: tuple[str, ...]) -> None:
        asleep = [t for t in needs if t in self.asleep]
        if asleep:
            raise RuntimeError(f"rollout engine {self.rank}: {what} while its {' and '.join(asleep)} "
                               f"{'are' if len(asleep) > 1 else 'is'} asleep: wake_up({asleep}) first")

    def _log_skip(self) -> None:
        if not self._skip_logged:
            self._skip_logged = True
            reason = ("vLLM's sleep mode is not supported on CPU" if self.cfg.resources.device == "cpu"
                      else f"the engine was built without sleep mode (sleep_level={self.sleep_level})")
            # WARNING: Ray forwards an actor's warnings to the driver's console.
            log.warning("vLLM sleep skipped: rollout engine %d: %s (resources.device=%s); sleep and wake_up "
                        "calls are made and skipped, and the engine keeps its memory", self.rank, reason,
                        self.cfg.resources.device)

    def shutdown(self) -> None:
        if getattr(self, "_lora_root", None):
            shutil.rmtree(self._lora_root, ignore_errors=True)
        llm = getattr(self, "llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None
