"""Knowledge distillation from a frozen teacher (the teacher role, rlengine/workers/teacher.py).

distill — offline, on SFT-format rows: the teacher scores each row's target tokens and the student
minimises alpha * CE(y) + (1 - alpha) * T^2 * D(teacher_T || student_T) per target token (Hinton
et al. 2015; D = distill.divergence).

on_policy_distill — the student samples (vLLM), the teacher scores every sampled token, and the
student minimises D on its own samples (GKD, Agarwal et al. 2024, with lambda = 1; reverse KL is
"on-policy distillation", Lu & Thinking Machines 2025), optionally plus distill.reward_coef times a
GRPO policy-gradient term on the reward functions' scores.

Divergences, the top-k tail bucket and the T^2 factor: rlengine/algos/distill.py.
"""
from __future__ import annotations

import torch

from rlengine.algos import losses as L
from rlengine.algos.advantages import broadcast_to_tokens, get_advantage
from rlengine.algos.distill import DIVERGENCES, distill_token_loss
from rlengine.errors import ConfigError
from rlengine.layout import concat_rollouts
from rlengine.stages import register_stage
from rlengine.stages.base import Stage, Timer, Uses, mean_dicts
from rlengine.stages.sft import SFT


def check_distill(cfg) -> None:
    d, t = cfg.distill, cfg.teacher
    if t.path is None:
        raise ConfigError("teacher.path", f"algorithm.name={cfg.algorithm.name} needs a teacher model")
    if d.divergence not in DIVERGENCES:
        raise ConfigError("distill.divergence", f"{d.divergence!r} is not one of {sorted(DIVERGENCES)}")
    if d.divergence == "jsd" and not 0 < d.beta < 1:
        raise ConfigError("distill.beta", f"jsd needs beta in (0, 1) (0 and 1 are forward_kl and reverse_kl), "
                                          f"got {d.beta}")
    if not 0 <= d.alpha <= 1:
        raise ConfigError("distill.alpha", f"must be in [0, 1], got {d.alpha}")
    if d.temperature <= 0:
        raise ConfigError("distill.temperature", f"must be > 0, got {d.temperature}")
    if t.top_k < 0:
        raise ConfigError("teacher.top_k", f"must be >= 0 (0: the full vocabulary), got {t.top_k}")
    if t.num_workers < 1:
        raise ConfigError("teacher.num_workers", f"must be >= 1, got {t.num_workers}")
    if t.dtype is not None and t.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError("teacher.dtype", f"{t.dtype!r} is not one of ['float32', 'bfloat16', 'float16']")
    if t.max_tokens_per_micro_batch is not None and t.max_tokens_per_micro_batch <= 0:
        raise ConfigError("teacher.max_tokens_per_micro_batch", "must be > 0")
    if cfg.resources.device == "cuda" and cfg.resources.gpus_per_teacher <= 0:
        raise ConfigError("resources.gpus_per_teacher", "resources.device=cuda: the teacher actors need "
                                                        "gpus_per_teacher > 0 (a fraction shares a GPU)")


def teacher_metrics(batch) -> dict:
    """What the teacher's scores say, over the response tokens the loss covers."""
    mask_BR = batch["response_mask"]
    logp_BRK = batch["teacher_logp"].float()
    mass_BR = torch.logsumexp(logp_BRK, -1).exp() if "teacher_ids" in batch else torch.ones_like(mask_BR)
    return {"distill/teacher_entropy": float(L.masked_mean(batch["teacher_entropy"], mask_BR)),
            "distill/topk_mass": float(L.masked_mean(mass_BR, mask_BR))}


def distill_update(worker, batch, alpha: float, sample_temperature: float = 1.0, pg_coef: float = 0.0) -> dict:
    """One optimizer step on this rank's shard: token-mean over the global batch of the
    distillation loss (alpha * CE + (1 - alpha) * T^2 * D), plus pg_coef times a policy-gradient
    term on batch["advantages"] (ratio 1: one update on fresh samples).  For sampled rows
    (rollout_logp) it measures the drift between vLLM's and the trainer's log-probs at
    `sample_temperature`."""
    from rlengine.modeling import response_token_map

    d = worker.cfg.distill
    worker.engine.train()
    norm = max(worker.global_sum(float(batch["response_mask"].sum())), 1.0)
    sums = {"distill/loss": 0.0, "distill/kl": 0.0, "distill/ce": 0.0, "actor/pg_loss": 0.0}
    drift = [0.0, 0.0]
    sampled = "rollout_logp" in batch

    def fn(z_nV, labels_n, t_logp_nK, *t_ids_nK):
        loss_n, div_n, nll_n = distill_token_loss(z_nV, labels_n, t_logp_nK, t_ids_nK[0] if t_ids_nK else None,
                                                  divergence=d.divergence, alpha=alpha, temperature=d.temperature,
                                                  beta=d.beta)
        if not sampled:
            return loss_n, div_n.detach(), nll_n.detach()
        # The sampled tokens' log-probs at the sampling temperature: the policy-gradient term and drift.
        logp_n = torch.log_softmax(z_nV / sample_temperature, -1).gather(-1, labels_n.long().unsqueeze(-1)).squeeze(-1)
        return loss_n, div_n.detach(), nll_n.detach(), logp_n

    for micro in worker.micro_batches(batch, train=True):
        mask_BR = micro["response_mask"]
        ids = (micro["teacher_ids"],) if "teacher_ids" in micro else ()
        loss_BR, div_BR, nll_BR, *logp_BR = response_token_map(
            worker.engine, micro, fn, (micro["teacher_logp"], *ids), worker.cfg.trainer.logits_chunk_tokens)
        loss = L.agg_loss(loss_BR, mask_BR, "token-mean", normaliser=norm)
        sums["distill/loss"] += float(loss.detach())
        if pg_coef:
            pg_loss, _ = L.policy_loss_clip(logp_BR[0], logp_BR[0].detach(), micro["advantages"], mask_BR,
                                            agg_mode="token-mean", normaliser=norm)
            loss = loss + pg_coef * pg_loss
            sums["actor/pg_loss"] += float(pg_loss.detach())
        if sampled:
            drift[0] += float(((micro["rollout_logp"] - logp_BR[0].detach()).abs() * mask_BR).sum())
            drift[1] += float(mask_BR.sum())
        sums["distill/kl"] += float((div_BR * mask_BR).sum()) / norm
        sums["distill/ce"] += float((nll_BR * mask_BR).sum()) / norm
        worker.backward(loss)
    worker.optimizer_steps += 1
    out = {k: worker.global_sum(v) for k, v in sums.items() if pg_coef or k != "actor/pg_loss"}
    out.update({"actor/grad_norm": worker.grad_norm(), "actor/lr": worker.scheduler.get_last_lr()[0],
                "distill/tokens": norm})
    if sampled:
        out["sync/logprob_drift"] = worker.global_sum(drift[0]) / max(1.0, worker.global_sum(drift[1]))
    return out


@register_stage
class Distill(SFT):
    """Offline distillation on the rows SFT reads (either format, packing included)."""

    name = "distill"

    @classmethod
    def uses(cls, cfg) -> Uses:
        return Uses(rollout=True, teacher=True)  # rollout: greedy generation to evaluate

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_distill(cfg)

    def step(self, ctl, step: int) -> dict:
        timer = Timer()
        with timer("step"):
            batch, stats = self.batch(ctl.encoder, ctl.loader.next())
            with timer("teacher"):
                batch = batch.union(ctl.teacher_scores(batch.with_info(step=step)))
            with timer("update"):
                metrics = mean_dicts(ctl.roles.trainer.call_split("update", batch))
        return {**metrics, **stats, **teacher_metrics(batch), **timer.t}

    @staticmethod
    def update(worker, batch) -> dict:
        return distill_update(worker, batch, worker.cfg.distill.alpha)


@register_stage
class OnPolicyDistill(Stage):
    """The student samples algorithm.group_size responses per prompt; the teacher scores them."""

    name = "on_policy_distill"
    online = True
    scores_samples = True

    @classmethod
    def sequences_per_row(cls, cfg) -> int:
        return cfg.algorithm.group_size

    @classmethod
    def uses(cls, cfg) -> Uses:
        return Uses(rollout=True, teacher=True, reward_model=cfg.reward_model.path is not None)

    @classmethod
    def check(cls, cfg) -> None:
        check_distill(cfg)
        d, a = cfg.distill, cfg.algorithm
        if a.kl_coef > 0:
            raise ConfigError("algorithm.kl_coef", "on_policy_distill's KL is to the teacher (distill.divergence); "
                                                   "a reference KL does not apply")
        if d.reward_coef < 0:
            raise ConfigError("distill.reward_coef", f"must be >= 0, got {d.reward_coef}")
        if d.reward_coef > 0 and not cfg.reward.fns and cfg.reward_model.path is None:
            raise ConfigError("distill.reward_coef", "a reward term needs reward.fns or reward_model.path")
        if d.reward_coef > 0 and a.group_size < 2:
            raise ConfigError("algorithm.group_size", "the reward term normalises scores within a group of samples "
                                                      f"per prompt: group_size must be >= 2, got {a.group_size}")

    def step(self, ctl, step: int) -> dict:
        a, d, roles, timer = self.cfg.algorithm, self.cfg.distill, ctl.roles, Timer()
        with timer("step"):
            prompts = ctl.prompts(ctl.loader.next(), step)
            ctl.wake_engines(step, timer)
            with timer("rollout"):
                batch = ctl.redo(roles.rollout, "generate", prompts, a.group_size, join=concat_rollouts)  # [B*G, ...]
                batch = batch.update(group_id=torch.arange(len(prompts)).repeat_interleave(a.group_size)
                                     ).with_info(step=step)
            ctl.sleep_engines(timer)
            scored = None
            if self.cfg.reward.fns or ctl.plan.use_reward_model:
                with timer("reward"):
                    batch, scored = ctl.score(batch)
            with timer("teacher"):
                batch = batch.union(ctl.teacher_scores(batch))
            if d.reward_coef > 0:
                adv_N = get_advantage("grpo")(batch["scores"], batch["group_id"])
                batch = batch.update(advantages=broadcast_to_tokens(adv_N, batch["response_mask"]))
            with timer("update"):
                metrics = mean_dicts(roles.trainer.call_split("update", batch))
            with timer("sync"):
                sync_metrics = ctl.sync_weights(step)
        ctl.check_drift(metrics["sync/logprob_drift"])
        mask_BR = batch["response_mask"]
        out = {**metrics, **teacher_metrics(batch), **sync_metrics, **timer.t, **ctl.faults, **ctl.sleep_stats,
               # log q(y) - log p(y) on the sampled tokens: the single-sample estimate of the
               # per-token reverse KL(student || teacher) (both at the sampling temperature when T = 1).
               "distill/reverse_kl_sampled": float(L.masked_mean(batch["rollout_logp"] - batch["teacher_token_logp"],
                                                                 mask_BR)),
               "response_length/mean": float(batch["response_length"].float().mean()),
               "perf/throughput_tokens_per_s": float(batch["attention_mask"].sum()) / timer.t["timing_s/step"]}
        if scored is not None:
            out.update({"reward/mean": float(batch["scores"].mean()), "reward/std": float(batch["scores"].std()),
                        "reward/errors": scored.errors, "reward/timeouts": scored.timeouts})
        return out

    @staticmethod
    def update(worker, batch) -> dict:
        """The distillation loss on the student's samples (no hard labels: alpha does not apply)."""
        c = worker.cfg
        return distill_update(worker, batch, 0.0, c.rollout.temperature, c.distill.reward_coef)
