"""PPO (Ouyang et al. 2022 / Ziegler et al. 2019): per-token rewards, a critic, GAE advantages.

The step is the GRPO family's with the critic's values and GAE in place of a sequence-level
estimator; the policy and critic updates run at once (separate actors, separate optimizers).
"""
from __future__ import annotations

import ray
import torch

from rlengine.algos.advantages import gae, whiten
from rlengine.algos.losses import kl_penalty
from rlengine.stages import register_stage
from rlengine.stages.base import Uses, mean_dicts
from rlengine.stages.rl import SequenceRL


@register_stage
class PPO(SequenceRL):
    name = "ppo"

    @classmethod
    def uses(cls, cfg) -> Uses:
        base = super().uses(cfg)
        return Uses(rollout=True, reference=base.reference, critic=True, reward_model=base.reward_model)

    @classmethod
    def plan(cls, cfg) -> dict:
        on_cpu = cfg.resources.device == "cpu"
        # Policy and critic updates share the cores: half the threads each (config.Plan.update_threads).
        return {**super().plan(cfg), "advantage": None,
                "update_threads": max(1, cfg.trainer.cpu_threads // 2) if on_cpu else None}

    def advantages(self, ctl, batch, timer):
        """The sequence score lands on the last response token; the KL penalty (k1, with the
        controller's coefficient) on every token when kl_in_reward; GAE with the critic's values."""
        with timer("values"):
            batch = batch.union(ctl.roles.critic.map_batch("values", batch))
        a, mask_BR = self.cfg.algorithm, batch["response_mask"]
        rewards_BR = torch.zeros_like(mask_BR)
        last = (batch["response_length"].long() - 1).clamp(min=0)
        rewards_BR[torch.arange(len(batch)), last] = batch["scores"].float()
        if self.plan.use_reference and a.kl_in_reward:
            kl_BR = kl_penalty(self.old_logp(batch), batch["ref_logp"], "k1")
            rewards_BR = rewards_BR - self.kl_ctl.value * kl_BR * mask_BR
        adv_BR, returns_BR = gae(rewards_BR, batch["values"], mask_BR, a.gamma, a.lam)
        if a.whiten_advantages:
            adv_BR = whiten(adv_BR, mask_BR)
        return batch.update(advantages=adv_BR * mask_BR, returns=returns_BR, token_rewards=rewards_BR)

    def train(self, ctl, batch) -> dict:
        critic_refs = ctl.roles.critic.submit_split("update_critic", batch)
        metrics = super().train(ctl, batch)
        metrics.update(mean_dicts(ray.get(critic_refs)))
        return metrics

    def batch_metrics(self, batch, scored) -> dict:
        m = super().batch_metrics(batch, scored)
        mask = batch["response_mask"].bool()
        ret, val = batch["returns"][mask], batch["values"][mask]
        m["critic/vf_explained_var"] = float(1 - (ret - val).var() / ret.var().clamp(min=1e-8))
        m["critic/values_mean"] = float(val.mean())
        m["critic/returns_mean"] = float(ret.mean())
        return m
