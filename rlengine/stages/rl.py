"""Online RL with sequence-level advantages: the GRPO family (grpo, dr_grpo, rloo, reinforce_pp and
any estimator registered with `register_advantage`).

One step: sample group_size responses per prompt from the engines, score them, reference and old
log-probs, advantages, policy update on the trainer ranks, push the weights to the engines.
"""
from __future__ import annotations

import torch

from rlengine.algos import losses as L
from rlengine.algos.advantages import broadcast_to_tokens, get_advantage
from rlengine.errors import ConfigError
from rlengine.layout import concat_rollouts
from rlengine.stages.base import Stage, Timer, Uses, mean_dicts


def _mean(x_BR: torch.Tensor, mask_BR: torch.Tensor) -> float:
    return float(L.masked_mean(x_BR, mask_BR))


class SequenceRL(Stage):
    online = True
    scores_samples = True

    @classmethod
    def sequences_per_row(cls, cfg) -> int:
        return cfg.algorithm.group_size

    @classmethod
    def uses(cls, cfg) -> Uses:
        return Uses(rollout=True, reference=cfg.algorithm.kl_coef > 0, reward_model=cfg.reward_model.path is not None)

    @classmethod
    def check(cls, cfg) -> None:
        a = cfg.algorithm
        if a.name in ("grpo", "dr_grpo", "rloo") and a.group_size < 2:
            raise ConfigError("algorithm.group_size", f"{a.name} normalises rewards within a group of samples per "
                                                      f"prompt; group_size must be >= 2, got {a.group_size}")
        if not cfg.reward.fns and cfg.reward_model.path is None:
            raise ConfigError("reward.fns", "at least one reward function is needed")
        if a.kl_ctl == "adaptive" and a.kl_coef <= 0:
            raise ConfigError("algorithm.kl_ctl", "the adaptive KL controller adapts algorithm.kl_coef, which is 0: "
                                                  "set kl_coef > 0 (its initial value) or kl_ctl=fixed")

    @classmethod
    def plan(cls, cfg) -> dict:
        a = cfg.algorithm
        return {"advantage": a.name,
                # One optimizer step on fresh samples: the update's own forward is the old policy.
                "old_logp_in_update": (a.ppo_epochs == 1 and a.minibatches == 1 and not a.reuse_rollout_logprobs
                                       and not (a.kl_coef > 0 and a.kl_in_reward))}

    def __init__(self, cfg, plan):
        super().__init__(cfg, plan)
        a = cfg.algorithm
        # The KL coefficient in effect, in the reward (kl_in_reward) or in the loss; checkpointed.
        self.kl_ctl = (L.AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon) if a.kl_ctl == "adaptive"
                       else L.FixedKLController(a.kl_coef))

    def state_dict(self) -> dict:
        return {"kl_ctl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])

    def step(self, ctl, step: int) -> dict:
        a, plan, roles, timer = self.cfg.algorithm, self.plan, ctl.roles, Timer()
        with timer("step"):
            prompts = ctl.prompts(ctl.loader.next(), step)
            ctl.wake_engines(step, timer)  # hybrid colocation only: vLLM's memory back, as verl orders it
            with timer("rollout"):
                # Each engine packs its shard to its own widths; concat_rollouts re-pads them to one.
                batch = ctl.redo(roles.rollout, "generate", prompts, a.group_size, join=concat_rollouts)  # [B*G, ...]
                batch = batch.update(group_id=torch.arange(len(prompts)).repeat_interleave(a.group_size)).with_info(
                    step=step, kl_coef=self.kl_ctl.value)
            ctl.sleep_engines(timer)  # hybrid colocation only: the GPUs to the trainer's passes
            with timer("reward"):
                batch, scored = ctl.score(batch)
            if plan.use_reference:
                with timer("ref"):
                    batch = batch.union(ctl.ref_log_probs(batch))
            # reuse_rollout_logprobs: vLLM's sampling log-probs are the old log-probs; no pass.
            if not plan.old_logp_in_update and not a.reuse_rollout_logprobs:
                with timer("old_logp"):
                    batch = batch.union(roles.trainer.map_batch("log_probs", batch))
            drift = ctl.drift(batch) if "old_logp" in batch else None
            batch = self.advantages(ctl, batch, timer)
            with timer("update"):
                train_metrics = self.train(ctl, batch)
            with timer("sync"):
                sync_metrics = ctl.sync_weights(step)
        metrics = self.batch_metrics(batch, scored)
        metrics["sync/logprob_drift"] = drift if drift is not None else train_metrics.pop("sync/logprob_drift")
        ctl.check_drift(metrics["sync/logprob_drift"])
        metrics["actor/kl_coef"] = self.kl_ctl.value
        self.kl_ctl.update(metrics.get("actor/ref_kl", 0.0), len(batch))
        return {**metrics, **train_metrics, **sync_metrics, **timer.t, **ctl.faults, **ctl.sleep_stats,
                "perf/throughput_tokens_per_s": float(batch["attention_mask"].sum()) / timer.t["timing_s/step"]}

    def train(self, ctl, batch) -> dict:
        return mean_dicts(ctl.roles.trainer.call_split("update", batch))

    def old_logp(self, batch) -> torch.Tensor:
        return batch["old_logp"] if "old_logp" in batch else batch["rollout_logp"]

    def advantages(self, ctl, batch, timer):
        with timer("adv"):
            return self._sequence_advantages(batch)

    def _sequence_advantages(self, batch):
        a, mask_BR = self.cfg.algorithm, batch["response_mask"]
        rewards_N = batch["scores"]
        if self.plan.use_reference and a.kl_in_reward:
            # Sequence-level estimators take one scalar per sample: subtract the summed KL penalty.
            kl_BR = L.kl_penalty(self.old_logp(batch), batch["ref_logp"], a.kl_estimator)
            rewards_N = rewards_N - self.kl_ctl.value * (kl_BR * mask_BR).sum(-1)
        fn = get_advantage(self.plan.advantage)
        kwargs = {"mask_NT": mask_BR} if self.plan.advantage == "reinforce_pp" else {}
        adv_N = fn(rewards_N, batch["group_id"], **kwargs)
        return batch.update(advantages=broadcast_to_tokens(adv_N, mask_BR))

    def batch_metrics(self, batch, scored) -> dict:
        mask_BR, scores = batch["response_mask"], batch["scores"]
        m = {"reward/mean": float(scores.mean()), "reward/std": float(scores.std()),
             "reward/errors": scored.errors, "reward/timeouts": scored.timeouts,
             "response_length/mean": float(batch["response_length"].mean()),
             "response_length/max": float(batch["response_length"].max())}
        if "ref_logp" in batch:
            m["actor/ref_kl"] = _mean(self.old_logp(batch) - batch["ref_logp"], mask_BR)
        if "rm_score" in batch:
            m["reward/rm_mean"] = float(batch["rm_score"].mean())
            m["reward/fn_mean"] = float(batch["fn_scores"].mean())
        return m

    @staticmethod
    def update(worker, batch) -> dict:
        """ppo_epochs x minibatches optimizer steps on this rank's shard; returns mean metrics.

        Loss metrics are this rank's share of the global minibatch loss times world_size, so the
        controller's mean over ranks is the global value.  Without trainer-computed old log-probs
        (a single update on fresh samples, or reuse_rollout_logprobs) the first minibatch's forward
        runs on the weights the engines sampled with, and measures their log-prob drift.
        """
        a = worker.cfg.algorithm
        worker.engine.train()
        per_step: list[dict] = []
        drift = [0.0, 0.0]  # sum |rollout_logp - logp| over response tokens, token count
        kl_coef = batch.info.get("kl_coef", a.kl_coef)
        gen = torch.Generator().manual_seed(worker.cfg.seed + worker.optimizer_steps)
        for epoch in range(a.ppo_epochs):
            perm = torch.randperm(len(batch), generator=gen)
            for i, mb in enumerate(batch.index(perm).split(a.minibatches)):
                norm = worker.normaliser(mb)
                measure = "old_logp" not in batch and epoch == 0 and i == 0
                micros = worker.micro_batches(mb, train=True)
                micro_metrics = [_micro_step(worker, m, norm, kl_coef, drift if measure else None) for m in micros]
                # A padding micro-batch (response_mask 0: zero loss and gradient) reports no metrics.
                micro_metrics = [x for x, m in zip(micro_metrics, micros) if not m.info.get("padding")]
                worker.optimizer_steps += 1
                step = {k: sum(m[k] for m in micro_metrics) / len(micro_metrics) for k in micro_metrics[0]}
                for k in ("actor/pg_loss", "actor/kl_loss"):  # additive over micro-batches and ranks
                    if k in step:
                        step[k] = sum(m[k] for m in micro_metrics) * worker.world_size
                step["actor/grad_norm"] = float(worker.engine.get_global_grad_norm() or 0.0)
                per_step.append(step)
        metrics = {k: sum(s[k] for s in per_step) / len(per_step) for k in per_step[0]}
        metrics["actor/lr"] = worker.scheduler.get_last_lr()[0]
        if "old_logp" not in batch:
            metrics["sync/logprob_drift"] = worker.global_sum(drift[0]) / max(1.0, worker.global_sum(drift[1]))
        return metrics


def _micro_step(worker, micro, norm: float, kl_coef: float, drift: list[float] | None) -> dict:
    from rlengine.modeling import response_logprobs

    a = worker.cfg.algorithm
    mask_BR = micro["response_mask"]
    # The entropy is always reported; it carries a gradient only when it is part of the loss.
    logp_BR, ent_BR = response_logprobs(worker.engine, micro, worker.cfg.rollout.temperature, with_entropy=True,
                                        entropy_grad=bool(a.entropy_coef),
                                        chunk_tokens=worker.cfg.trainer.logits_chunk_tokens)
    adv_BR = micro["advantages"]  # [B, R], zero outside the response mask
    if drift is not None:
        drift[0] += float(((micro["rollout_logp"] - logp_BR.detach()).abs() * mask_BR).sum())
        drift[1] += float(mask_BR.sum())
    if "old_logp" in micro:
        old_BR = micro["old_logp"]
    elif a.reuse_rollout_logprobs:
        old_BR = micro["rollout_logp"]
    else:
        # Single update on fresh samples: every micro-batch's forward precedes the one optimizer
        # step, so this pass *is* the old policy (ratio 1, as a separate pass would give).
        old_BR = logp_BR.detach()
    policy_loss = L.get_policy_loss(a.policy_loss)
    pg_loss, pg_m = policy_loss(logp_BR, old_BR, adv_BR, mask_BR, clip_low=a.clip_low, clip_high=a.clip_high,
                                dual_clip_c=a.dual_clip, agg_mode=a.loss_agg, normaliser=norm)
    loss = pg_loss
    out = {"actor/pg_loss": float(pg_loss.detach())}
    if "ref_logp" in micro:
        kl_BR = L.kl_penalty(logp_BR, micro["ref_logp"], a.kl_estimator)
        kl_loss = L.agg_loss(kl_BR, mask_BR, a.loss_agg, normaliser=norm)
        if not a.kl_in_reward:
            loss = loss + kl_coef * kl_loss
        out["actor/kl_loss"] = float(kl_loss.detach())
        out["actor/kl"] = _mean(kl_BR.detach(), mask_BR)
    if a.entropy_coef:
        loss = loss - a.entropy_coef * L.agg_loss(ent_BR, mask_BR, a.loss_agg, normaliser=norm)
    worker.backward(loss)
    out["actor/entropy"] = _mean(ent_BR.detach(), mask_BR)
    out["actor/clip_frac"] = float(pg_m["clip_frac"])
    out["actor/approx_kl"] = float(pg_m["approx_kl"])
    return out
