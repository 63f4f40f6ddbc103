"""Reference role: the frozen initial policy, scoring log-probs for the KL term."""
from __future__ import annotations

import torch

from rlengine import faults
from rlengine.config import RootConfig
from rlengine.modeling import load_causal_lm, response_logprobs, set_threads
from rlengine.protocol import Batch


class ReferenceWorker:
    def __init__(self, cfg: RootConfig, model_path: str, micro_batch_size: int):
        self.cfg, self.micro_batch_size = cfg, micro_batch_size
        self.device = torch.device("cuda" if cfg.resources.device == "cuda" else "cpu")
        if cfg.resources.device == "cpu":
            set_threads(cfg.trainer.cpu_threads)
        self.model = load_causal_lm(model_path, cfg.model.dtype, cfg.model.attn_implementation,
                                    cfg.model.trust_remote_code).to(self.device).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def log_probs(self, batch: Batch) -> Batch:
        faults.maybe_kill("reference", batch.info.get("step"))
        outs = [response_logprobs(self.model, m.to(self.device), self.cfg.rollout.temperature).cpu()
                for m in batch.chunk_by_size(self.micro_batch_size)]
        return Batch(tensors={"ref_logp": torch.cat(outs)})
