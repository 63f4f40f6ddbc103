"""The single driver: one RL step, top to bottom. It calls roles; it never touches a model."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import ray
import torch

from rlengine.algos.advantages import broadcast_to_tokens, gae, get_advantage, whiten
from rlengine.algos.losses import AdaptiveKLController, FixedKLController, kl_penalty
from rlengine.config import Plan, RootConfig
from rlengine.data import PromptEncoder, PromptLoader, concat_rollouts, pair_batch, prompt_seed, sft_batch
from rlengine.protocol import Batch
from rlengine.rewards import RewardManager
from rlengine.weight_sync import EngineLost, WeightSync, WeightSyncError
from rlengine.workers.group import WorkerGroup

log = logging.getLogger("rlengine")


@dataclass
class Roles:
    trainer: WorkerGroup
    rollout: WorkerGroup | None = None
    reference: WorkerGroup | None = None
    critic: WorkerGroup | None = None
    reward_model: WorkerGroup | None = None

    def all(self) -> list[WorkerGroup]:
        return [g for g in (self.rollout, self.reward_model, self.reference, self.critic, self.trainer) if g]


class Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.t[f"timing_s/{name}"] = self.t.get(f"timing_s/{name}", 0.0) + time.perf_counter() - t0


def _mean_dicts(ds: list[dict]) -> dict:
    keys = {k for d in ds for k in d}
    return {k: sum(d[k] for d in ds if k in d) / sum(1 for d in ds if k in d) for k in keys}


def _masked_mean(x_BR: torch.Tensor, mask_BR: torch.Tensor) -> float:
    return float((x_BR * mask_BR).sum() / mask_BR.sum().clamp(min=1))


class Controller:
    def __init__(self, cfg: RootConfig, plan: Plan, roles: Roles, rewards: RewardManager,
                 encoder: PromptEncoder, loader: PromptLoader, test_rows: list[dict]):
        self.cfg, self.plan, self.roles = cfg, plan, roles
        self.rewards, self.encoder, self.loader, self.test_rows = rewards, encoder, loader, test_rows
        a = cfg.algorithm
        # The coefficient of the per-token KL penalty in the reward (PPO); state is checkpointed.
        self.kl_ctl = (AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon) if a.kl_ctl == "adaptive"
                       else FixedKLController(a.kl_coef))
        self.faults = {f"faults/{g.name}_restarts": 0 for g in roles.all() if g.max_restarts}
        r = cfg.rollout
        self.weight_sync = (WeightSync(roles.trainer, roles.rollout, r.sync_method, r.sync_timeout_s,
                                       r.tensor_parallel_size) if roles.rollout else None)
        # Reference log-probs: a collective call on the trainer ranks (reference.placement=trainer;
        # a dead rank stops the run like any trainer death), or the restartable reference role.
        self._ref_log_probs = (partial(roles.trainer.map_batch, "ref_log_probs") if plan.reference_in_trainer
                               else partial(self._redo, roles.reference, "log_probs"))

    def state_dict(self) -> dict:
        """Everything of the driver's that the next step depends on (JSON-able)."""
        return {"loader": self.loader.state_dict(), "kl_ctl": self.kl_ctl.state_dict(), "faults": dict(self.faults)}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.faults.update({k: v for k, v in state.get("faults", {}).items() if k in self.faults})

    def _redo(self, group: WorkerGroup, method: str, batch: Batch, *args, join=Batch.concat) -> Batch:
        """group.map_batch, redone when one of the group's actors dies and Ray restarts it.

        Rollout, reference and reward-model actors are restartable: their work is a function of
        the batch (and, for rollout, of the weights, which are pushed again before redoing it;
        per-prompt seeds make the redone samples the same). Trainer and critic ranks are not:
        their death propagates and stops the run, which then resumes from its last checkpoint.
        """
        while True:
            try:
                return group.map_batch(method, batch, *args, join=join)
            except ray.exceptions.RayActorError as e:
                key = f"faults/{group.name}_restarts"
                if not group.max_restarts or self.faults[key] >= group.max_restarts:
                    raise
                self.faults[key] += 1
                log.warning("a %s actor died during %s (%s); waiting for Ray to restart it (restart %d of at most %d)",
                            group.name, method, type(e).__name__, self.faults[key], group.max_restarts)
                group.wait_ready(self.cfg.fault.restart_timeout_s)
                if group is self.roles.rollout:
                    self.weight_sync.reset_group()
                    self.sync_weights(batch.info.get("step"))

    def rl_step(self, step: int) -> dict:
        a, timer, roles = self.cfg.algorithm, Timer(), self.roles
        with timer("step"):
            prompts = self._prompts(self.loader.next(), step)
            with timer("rollout"):
                # Each engine packs its shard to its own widths; concat_rollouts re-pads them to one.
                batch = self._redo(roles.rollout, "generate", prompts, a.group_size, join=concat_rollouts)  # [B*G, ...]
                batch = batch.update(group_id=torch.arange(len(prompts)).repeat_interleave(a.group_size)).with_info(
                    step=step)
            with timer("reward"):
                batch, scored = self._score(batch)
            if self.plan.use_reference:
                with timer("ref"):
                    batch = batch.union(self._ref_log_probs(batch))
            if not self.plan.old_logp_in_update:
                with timer("old_logp"):
                    batch = batch.union(self.roles.trainer.map_batch("log_probs", batch))
            drift = self._drift(batch) if "old_logp" in batch else None
            if self.plan.use_critic:
                with timer("values"):
                    batch = batch.union(self.roles.critic.map_batch("values", batch))
            with timer("adv"):
                batch = self._gae(batch) if self.plan.use_critic else self._advantages(batch)
            with timer("update"):
                # Policy and critic are separate actors with separate optimizers: update them at once.
                critic_refs = self.roles.critic.submit_split("update_critic", batch) if self.plan.use_critic else []
                train_metrics = _mean_dicts(self.roles.trainer.call_split("update_policy", batch))
                if critic_refs:
                    train_metrics.update(_mean_dicts(ray.get(critic_refs)))
            with timer("sync"):
                sync_metrics = self.sync_weights(step)
        metrics = self._batch_metrics(batch, scored)
        metrics["sync/logprob_drift"] = drift if drift is not None else train_metrics.pop("sync/logprob_drift")
        self._check_drift(metrics["sync/logprob_drift"])
        self.kl_ctl.update(metrics.get("actor/ref_kl", 0.0), len(batch))
        return {**metrics, **train_metrics, **sync_metrics, **timer.t, **self.faults, "actor/kl_coef": self.kl_ctl.value,
                "perf/throughput_tokens_per_s": float(batch["attention_mask"].sum()) / timer.t["timing_s/step"]}

    def rm_step(self, step: int) -> dict:
        timer = Timer()
        with timer("step"):
            batch = pair_batch(self.encoder.tokenizer, self.loader.next(), self.cfg.data,
                               self.cfg.reward_model.max_length)
            with timer("update"):
                metrics = _mean_dicts(self.roles.trainer.call_split("update_rm", batch))
        return {**metrics, **timer.t}

    def evaluate_pairs(self) -> dict:
        """Held-out pairwise accuracy of the reward model being trained: score(chosen) > score(rejected)."""
        t0 = time.perf_counter()
        batch = pair_batch(self.encoder.tokenizer, self.test_rows, self.cfg.data, self.cfg.reward_model.max_length)
        r_N = self.roles.trainer.map_batch("pair_scores", batch)["score"]
        margin = r_N[0::2] - r_N[1::2]
        return {"eval/pairwise_accuracy": float((margin > 0).float().mean()), "eval/margin": float(margin.mean()),
                "eval/n": float(len(margin)), "timing_s/eval": time.perf_counter() - t0}

    def _score(self, batch: Batch):
        scored = self.rewards.score(batch["prompt"], batch["response"], batch["ground_truth"], batch["extra"])
        scores_N = scored.scores_N
        if self.plan.use_reward_model:
            rm_N = self._redo(self.roles.reward_model, "score", batch.select(["prompt", "response"]))["rm_score"]
            scores_N = scores_N + self.cfg.reward_model.weight * rm_N
            batch = batch.update(rm_score=rm_N)
        return batch.update(scores=scores_N, fn_scores=scored.scores_N), scored

    def _gae(self, batch: Batch) -> Batch:
        """PPO: the sequence score lands on the last response token; the KL penalty (k1, with the
        controller's coefficient) on every token when kl_in_reward; GAE with the critic's values."""
        a, mask_BR = self.cfg.algorithm, batch["response_mask"]
        rewards_BR = torch.zeros_like(mask_BR)
        last = (batch["response_length"].long() - 1).clamp(min=0)
        rewards_BR[torch.arange(len(batch)), last] = batch["scores"].float()
        if self.plan.use_reference and a.kl_in_reward:
            rewards_BR = rewards_BR - self.kl_ctl.value * kl_penalty(batch["old_logp"], batch["ref_logp"], "k1") * mask_BR
        adv_BR, returns_BR = gae(rewards_BR, batch["values"], mask_BR, a.gamma, a.lam)
        if a.whiten_advantages:
            adv_BR = whiten(adv_BR, mask_BR)
        batch = batch.update(advantages=adv_BR * mask_BR, returns=returns_BR, token_rewards=rewards_BR)
        return batch.update(old_logp=batch["rollout_logp"]) if a.reuse_rollout_logprobs else batch

    def sft_step(self, step: int) -> dict:
        timer = Timer()
        with timer("step"):
            batch = sft_batch(self.encoder, self.loader.next())
            with timer("update"):
                metrics = _mean_dicts(self.roles.trainer.call_split("update_sft", batch))
        return {**metrics, **timer.t}

    def _prompts(self, rows: list[dict], step: int) -> Batch:
        prompts = self.encoder.to_batch(rows)
        # One sampling seed per prompt, fixed by (seed, step, index): same data, same samples,
        # however the prompts are split over rollout workers.
        return prompts.update(sample_seed=[prompt_seed(self.cfg.seed, step, i) for i in range(len(rows))]
                              ).with_info(step=step)

    def _advantages(self, batch: Batch) -> Batch:
        a, mask_BR = self.cfg.algorithm, batch["response_mask"]
        rewards_N = batch["scores"]
        if self.plan.use_reference and a.kl_in_reward:
            # Sequence-level estimators take one scalar per sample: subtract the summed KL penalty.
            kl_BR = kl_penalty(batch["old_logp"], batch["ref_logp"], a.kl_estimator)
            rewards_N = rewards_N - a.kl_coef * (kl_BR * mask_BR).sum(-1)
        fn = get_advantage(self.plan.advantage)
        kwargs = {"mask_NT": mask_BR} if self.plan.advantage == "reinforce_pp" else {}
        adv_N = fn(rewards_N, batch["group_id"], **kwargs)
        batch = batch.update(advantages=broadcast_to_tokens(adv_N, mask_BR))
        return batch.update(old_logp=batch["rollout_logp"]) if a.reuse_rollout_logprobs else batch

    def _batch_metrics(self, batch: Batch, scored) -> dict:
        mask_BR = batch["response_mask"]
        scores = batch["scores"]
        m = {
            "reward/mean": float(scores.mean()), "reward/std": float(scores.std()),
            "reward/errors": scored.errors, "reward/timeouts": scored.timeouts,
            "response_length/mean": float(batch["response_length"].mean()),
            "response_length/max": float(batch["response_length"].max()),
        }
        if "ref_logp" in batch and "old_logp" in batch:
            m["actor/ref_kl"] = _masked_mean(batch["old_logp"] - batch["ref_logp"], mask_BR)
        if "rm_score" in batch:
            m["reward/rm_mean"] = float(batch["rm_score"].mean())
            m["reward/fn_mean"] = float(batch["fn_scores"].mean())
        if "returns" in batch:
            ret, val = batch["returns"][mask_BR.bool()], batch["values"][mask_BR.bool()]
            m["critic/vf_explained_var"] = float(1 - (ret - val).var() / ret.var().clamp(min=1e-8))
            m["critic/values_mean"] = float(val.mean())
            m["critic/returns_mean"] = float(ret.mean())
        return m

    @staticmethod
    def _drift(batch: Batch) -> float:
        """Trainer and vLLM hold the same weights at sampling time: a gap means the sync or a kernel is off."""
        return _masked_mean((batch["rollout_logp"] - batch["old_logp"]).abs(), batch["response_mask"])

    def _check_drift(self, drift: float) -> None:
        if drift > self.cfg.rollout.max_logprob_drift:
            raise WeightSyncError(
                f"mean |vLLM logp - trainer logp| = {drift:.4g} exceeds rollout.max_logprob_drift="
                f"{self.cfg.rollout.max_logprob_drift}: the rollout engine is not sampling from the trained weights")

    def sync_weights(self, step: int | None = None) -> dict:
        """Trainer -> every rollout engine (rlengine/weight_sync), verified; a mismatch or a hung
        peer stops the run.  An engine that dies in the transfer is restarted and the push redone."""
        while True:
            try:
                return self.weight_sync.push(step)
            except EngineLost as e:
                key = "faults/rollout_restarts"
                if not self.roles.rollout.max_restarts or self.faults[key] >= self.roles.rollout.max_restarts:
                    raise e.cause from None
                self.faults[key] += 1
                log.warning("%s; waiting for Ray to restart it (restart %d of at most %d), then syncing again",
                            e, self.faults[key], self.roles.rollout.max_restarts)
                self.roles.rollout.wait_ready(self.cfg.fault.restart_timeout_s)

    def evaluate(self) -> dict:
        """Greedy accuracy on the held-out split: the first reward function's score >= 1 counts as correct."""
        t0 = time.perf_counter()
        prompts = self.encoder.to_batch(self.test_rows)
        out = self._redo(self.roles.rollout, "generate", prompts, 1, 0, True, self.plan.eval_max_new_tokens,
                         join=concat_rollouts)
        scored = self.rewards.score(out["prompt"], out["response"], out["ground_truth"], out["extra"])
        first = scored.per_fn[0]
        return {"eval/accuracy": float((first >= 1.0 - 1e-6).float().mean()),
                "eval/reward_mean": float(scored.scores_N.mean()),
                "eval/response_length": float(out["response_length"].mean()),
                "eval/n": float(len(out)), "timing_s/eval": time.perf_counter() - t0}
