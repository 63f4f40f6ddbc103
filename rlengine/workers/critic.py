"""Critic role (PPO): a value model trained with DeepSpeed like the policy, one rank per actor.

The value model is the policy's backbone (or another checkpoint) with a one-output token head
(`AutoModelForTokenClassification`, num_labels=1), freshly initialised when the checkpoint has none.
"""
from __future__ import annotations

import torch

from rlengine.algos import losses as L
from rlengine.modeling import DTYPES, attn_implementation
from rlengine.protocol import Batch
from rlengine.workers.trainer import TrainerWorker, concurrent_update


def response_values(model, batch) -> torch.Tensor:
    """V(s_t) for every response token t: the value head's output at the position *before* t
    (columns P-1 .. P+R-2), i.e. the state from which token t was sampled. Returns values_BR."""
    P = batch["input_ids"].shape[1] - batch["responses"].shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    return out.logits[:, P - 1:-1, 0].float()


class CriticWorker(TrainerWorker):
    hosts_reference = False
    budget_role = "critic"
    lora_task = "TOKEN_CLS"

    def _load_model(self, path: str):
        from transformers import AutoModelForTokenClassification

        m = self.cfg.model
        return AutoModelForTokenClassification.from_pretrained(
            path, num_labels=1, dtype=DTYPES[m.dtype], attn_implementation=attn_implementation(m.attn_implementation),
            trust_remote_code=m.trust_remote_code, **self._quantized())

    def _lr(self) -> float:
        return self.cfg.critic.lr

    @torch.no_grad()
    def values(self, batch: Batch) -> Batch:
        self.engine.eval()
        mbs = self.micro_batches(batch)
        return Batch(tensors={"values": mbs.gather([response_values(self.engine, m) for m in mbs])})

    @concurrent_update
    def update_critic(self, batch: Batch) -> dict:
        """Clipped value loss against the GAE returns; same epochs/minibatches as the policy."""
        a = self.cfg.algorithm
        self.engine.train()
        per_step = []
        gen = torch.Generator().manual_seed(self.cfg.seed + 7 + self.optimizer_steps)
        for _ in range(a.ppo_epochs):
            perm = torch.randperm(len(batch), generator=gen)
            for mb in batch.index(perm).split(a.minibatches):
                norm = self.normaliser(mb)
                losses, clips = [], []
                for micro in self.micro_batches(mb, train=True):
                    v_BR = response_values(self.engine, micro)
                    # A padding micro-batch (response_mask 0) adds nothing to the loss and no metric.
                    loss, m = L.value_loss_clipped(v_BR, micro["values"], micro["returns"], micro["response_mask"],
                                                   clip_range=a.value_clip, agg_mode=a.loss_agg, normaliser=norm)
                    self.backward(loss)
                    losses.append(float(loss.detach()))
                    if not micro.info.get("padding"):
                        clips.append(float(m["vf_clip_frac"]))
                self.optimizer_steps += 1
                per_step.append({"critic/value_loss": sum(losses) * self.world_size,
                                 "critic/vf_clip_frac": sum(clips) / len(clips),
                                 "critic/grad_norm": self.grad_norm()})
        return {k: sum(s[k] for s in per_step) / len(per_step) for k in per_step[0]}
