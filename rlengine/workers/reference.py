"""The reference model: the frozen initial policy, scoring log-probs for the KL term.

Two placements (reference.placement): `ReferenceWorker`, a role of its own, or `TrainerReference`,
a frozen copy inside each trainer rank, partitioned like the policy. Both score with
`reference_log_probs`, so their values agree.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from rlengine import faults
from rlengine.config import RootConfig
from rlengine.layout import micro_batches
from rlengine.modeling import load_causal_lm, response_logprobs, set_threads
from rlengine.plan import Plan, token_budget
from rlengine.protocol import Batch


@torch.no_grad()
def reference_log_probs(model, batch: Batch, micro_batch_size: int, temperature: float, device,
                        max_tokens: int | None = None, agree: Callable[[int], int] | None = None,
                        chunk_tokens: int = 1024) -> Batch:
    """ref_logp_BR of `batch` at the rollout temperature, in micro-batches of `micro_batch_size`
    rows or of `max_tokens` tokens (layout.micro_batches; `agree`: the count over ranks, for a
    partitioned model whose every forward is collective); `chunk_tokens` response positions
    projected to the vocabulary at once (trainer.logits_chunk_tokens)."""
    mbs = micro_batches(batch, micro_batch_size, max_tokens, device, agree=agree)
    return Batch(tensors={"ref_logp": mbs.gather([response_logprobs(model, m, temperature, chunk_tokens=chunk_tokens)
                                                  for m in mbs])})


def _load(cfg: RootConfig, model_path: str):
    m = cfg.model
    return load_causal_lm(model_path, m.dtype, m.attn_implementation, m.trust_remote_code).requires_grad_(False)


class ReferenceWorker:
    def __init__(self, cfg: RootConfig, model_path: str, micro_batch_size: int):
        self.cfg, self.micro_batch_size = cfg, micro_batch_size
        self.device = torch.device("cuda" if cfg.resources.device == "cuda" else "cpu")
        if cfg.resources.device == "cpu":
            set_threads(cfg.trainer.cpu_threads)
        self.model = _load(cfg, model_path).to(self.device).eval()

    def log_probs(self, batch: Batch) -> Batch:
        faults.maybe_kill("reference", batch.info.get("step"))
        temperature = batch.info.get("temperature", self.cfg.rollout.temperature)
        return reference_log_probs(self.model, batch, self.micro_batch_size, temperature, self.device,
                                   token_budget(self.cfg, "reference"),
                                   chunk_tokens=self.cfg.trainer.logits_chunk_tokens)


def eval_ds_config(ds_config: dict) -> dict:
    """The policy's DeepSpeed config without its optimizer settings: same ZeRO stage, persistence
    threshold and precision (DeepSpeed checks the batch sizes even without an optimizer)."""
    return {k: v for k, v in ds_config.items() if k not in ("gradient_clipping", "zero_allow_untested_optimizer")}


class TrainerReference:
    """The reference inside one trainer rank (reference.placement=trainer), built by every rank.

    Under ZeRO-3 it is a DeepSpeed engine without an optimizer, constructed under a live
    HfDeepSpeedConfig so that from_pretrained runs inside zero.Init and this rank materialises only
    its partition; its forward gathers each module's weights as the policy's does, so `log_probs`
    is collective (every rank calls it with the same number of rows). At ZeRO stages 0-2 the
    weights are not partitioned and it is a plain frozen module on the trainer's device.
    """

    def __init__(self, cfg: RootConfig, plan: Plan, model_path: str, ds_config: dict, device):
        self.cfg, self.micro_batch_size, self.device = cfg, plan.micro_batch_size, device
        # Loading must not advance the trainer's RNG: the policy then trains as with a separate reference.
        with torch.random.fork_rng(devices=[]):
            if plan.zero_stage == 3:
                import deepspeed
                from transformers.integrations import HfDeepSpeedConfig

                config = eval_ds_config(ds_config)
                # Kept alive for the rank's lifetime: transformers reads "ZeRO-3 on" through a weak
                # reference to the newest HfDeepSpeedConfig, which this one replaces.
                self._hf_ds = HfDeepSpeedConfig(config)
                self.model, *_ = deepspeed.initialize(model=_load(cfg, model_path), config=config)
            else:
                self.model = _load(cfg, model_path).to(device)
        self.model.eval()

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)

    def log_probs(self, batch: Batch, agree: Callable[[int], int] | None = None) -> Batch:
        """`agree`: the trainer's max over ranks (under ZeRO-3 every rank runs as many forwards)."""
        temperature = batch.info.get("temperature", self.cfg.rollout.temperature)
        return reference_log_probs(self.model, batch, self.micro_batch_size, temperature, self.device,
                                   token_budget(self.cfg, "reference"), agree, self.cfg.trainer.logits_chunk_tokens)
