"""Rollout role: a vLLM engine that samples responses with their log-probs and takes new weights.

The engine runs in the actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0): start-up is a few
seconds instead of ~17, and weights reach the model as tensors, with no serialisation hop.
"""
from __future__ import annotations

import os
import time

import torch

from rlengine import faults
from rlengine.config import RootConfig
from rlengine.data import pack_sequences, prompt_seed
from rlengine.modeling import set_threads
from rlengine.protocol import Batch
from rlengine.weight_sync import checksum, compare_engine, open_shared


def _vllm_env(cfg: RootConfig) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if cfg.resources.device == "cpu":
        set_threads(cfg.rollout.cpu_threads)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.rollout.kv_cache_gib))
        if cfg.rollout.cpu_bind:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cfg.rollout.cpu_bind
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"


def _load_weights(worker, named_tensors):
    """Runs inside the vLLM worker: repack-aware reload (plain load_weights fails on the CPU build)."""
    worker.model_runner.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)


def _engine_sums(worker) -> dict:
    """Runs inside the vLLM worker: float64 sums of every parameter vLLM still holds in readable
    form, with the stacking map (qkv_proj <- q/k/v_proj, ...) needed to compare with HF names.
    The CPU build leaves repacked linear weights as empty tensors; those are skipped here."""
    model = worker.model_runner.model
    sums = {n: float(p.detach().double().sum()) for n, p in model.named_parameters() if p.numel() > 0}
    return {"sums": sums, "packed": dict(getattr(model, "packed_modules_mapping", {}) or {})}


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


class RolloutWorker:
    def __init__(self, cfg: RootConfig, model_path: str, tokenizer_path: str, rank: int = 0):
        _vllm_env(cfg)
        from transformers import AutoTokenizer
        from vllm import LLM

        self.cfg, self.rank = cfg, rank
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        r = cfg.rollout
        self.llm = LLM(model=model_path, tokenizer=tokenizer_path, dtype=cfg.model.dtype, seed=cfg.seed,
                       enforce_eager=r.enforce_eager, max_model_len=r.max_model_len,
                       tensor_parallel_size=r.tensor_parallel_size,
                       gpu_memory_utilization=r.gpu_memory_utilization,
                       logprobs_mode="processed_logprobs", trust_remote_code=cfg.model.trust_remote_code)

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
        ids = prompts["prompt_ids_list"]
        reqs = [{"prompt_token_ids": list(p)} for p in ids]
        seeds = prompts["sample_seed"] if "sample_seed" in prompts else [prompt_seed(seed, -1, i) for i in range(len(ids))]
        params = [self._params(n, None if greedy else int(s), greedy, max_new_tokens) for s in seeds]
        t0 = time.perf_counter()
        outs = self.llm.generate(reqs, params, use_tqdm=False)
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
        return Batch(tensors=batch, meta=meta, info={f"gen_s/rank{self.rank}": gen_s})

    @torch.no_grad()
    def load_weights(self, export: list[dict]) -> dict:
        """Checksum what arrived (in shared memory or as buckets), hand it to vLLM, and compare the
        tensors vLLM keeps readable with it.  {"fallback": True} when the shared-memory file of
        another host or process namespace is not reachable from here: the caller sends buckets."""
        if "shared" in export[0]:
            named = open_shared(export[0]["shared"])
            if named is None:
                return {"fallback": True}
        else:
            named = [nt for b in export for nt in b["tensors"]]
        received = checksum(named, threads=self.cfg.rollout.cpu_threads)
        t0 = time.perf_counter()
        self.llm.collective_rpc(_load_weights, args=(named,))
        self.llm.reset_prefix_cache()
        load_s = time.perf_counter() - t0
        engine = self.llm.collective_rpc(_engine_sums)[0]
        verified, bad = compare_engine(dict(named), engine["sums"], engine["packed"])
        return {"checksums": received, "load_s": load_s, "engine_verified": verified, "engine_bad": bad,
                "shared": "shared" in export[0], "bytes": sum(t.numel() * t.element_size() for _, t in named)}

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None
