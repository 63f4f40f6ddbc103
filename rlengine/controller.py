"""The single driver: what every stage's step calls (roles, rewards, weight sync, held-out
generation).  It calls roles; it never touches a model.  The steps themselves are the stages'
(rlengine/stages)."""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import ray

from rlengine.algos.losses import masked_mean
from rlengine.config import RootConfig
from rlengine.plan import Plan
from rlengine.data import PromptEncoder, PromptLoader, prompt_seed
from rlengine.evaluate import HeldOut
from rlengine.layout import concat_rollouts
from rlengine.protocol import Batch
from rlengine.rewards import RewardManager
from rlengine.stages import Stage
from rlengine.weight_sync import EngineLost, WeightSync, WeightSyncError
from rlengine.workers.group import WorkerGroup

log = logging.getLogger("rlengine")
ENGINE_MEMORY = ("weights", "kv_cache")  # what a sleeping vLLM engine releases (LLM.wake_up's tags)


def _untimed(name: str):
    return nullcontext()


@dataclass
class Roles:
    trainer: WorkerGroup | None  # None: the stage does not train (Stage.trains)
    rollout: WorkerGroup | None = None
    reference: WorkerGroup | None = None
    critic: WorkerGroup | None = None
    reward_model: WorkerGroup | None = None
    teacher: WorkerGroup | None = None

    def all(self) -> list[WorkerGroup]:
        return [g for g in (self.rollout, self.reward_model, self.teacher, self.reference, self.critic, self.trainer)
                if g]


class Controller:
    def __init__(self, cfg: RootConfig, plan: Plan, stage: Stage, roles: Roles, rewards: RewardManager,
                 encoder: PromptEncoder, loader: PromptLoader, test_rows: list[dict], heldout: list[HeldOut]):
        self.cfg, self.plan, self.stage, self.roles = cfg, plan, stage, roles
        self.rewards, self.encoder, self.loader, self.test_rows = rewards, encoder, loader, test_rows
        self.heldout = heldout
        self.faults = {f"faults/{g.name}_restarts": 0 for g in roles.all() if g.max_restarts}
        r = cfg.rollout
        # Without a trainer the engines serve model.path as loaded: nothing to push.
        self.weight_sync = (WeightSync(roles.trainer, roles.rollout, r.sync_method, r.sync_timeout_s,
                                       r.tensor_parallel_size, plan.lora_sync) if roles.rollout and roles.trainer
                            else None)
        # Reference log-probs: a collective call on the trainer ranks (reference.placement=trainer;
        # a dead rank stops the run like any trainer death), or the restartable reference role.
        self.ref_log_probs = (partial(roles.trainer.map_batch, "ref_log_probs") if plan.reference_in_trainer
                              else partial(self.redo, roles.reference, "log_probs"))
        # Hybrid colocation (plan.sleep_level > 0; never otherwise): outside generation the engines'
        # KV cache is asleep and the trainer's states resident.  `asleep` is what the engines were
        # last told to release; `sleep_stats` counts the group calls (cumulative, in step metrics).
        self.asleep: set[str] = set()
        self.sleep_stats = ({"sleep/sleeps": 0, "sleep/wakes": 0, "sleep/skipped": 0, "sleep/freed_gib": 0.0}
                            if plan.sleep_level else {})
        self.offload_trainer = bool(plan.sleep_level) and cfg.trainer.offload_during_rollout
        self.trainer_offloaded = False

    def step(self, step: int) -> dict:
        return self.stage.step(self, step)

    def evaluate(self) -> dict:
        return self.stage.evaluate(self)

    def state_dict(self) -> dict:
        """Everything of the driver's that the next step depends on (JSON-able)."""
        return {"loader": self.loader.state_dict(), "faults": dict(self.faults), **self.stage.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.stage.load_state_dict(state)
        self.faults.update({k: v for k, v in state.get("faults", {}).items() if k in self.faults})

    def redo(self, group: WorkerGroup, method: str, batch: Batch, *args, join=Batch.concat) -> Batch:
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
                if group is self.roles.rollout and self.weight_sync is not None:
                    self.weight_sync.reset_group()
                    self.sync_weights(batch.info.get("step"))

    def prompts(self, rows: list[dict], step: int) -> Batch:
        prompts = self.encoder.to_batch(rows)
        # One sampling seed per prompt, fixed by (seed, step, index): same data, same samples,
        # however the prompts are split over rollout workers.
        return prompts.update(sample_seed=[prompt_seed(self.cfg.seed, step, i) for i in range(len(rows))]
                              ).with_info(step=step)

    def score(self, batch: Batch):
        """The training reward: the reward functions, plus the reward model's weighted score."""
        scored = self.rewards.score(batch["prompt"], batch["response"], batch["ground_truth"], batch["extra"])
        scores_N = scored.scores_N
        if self.plan.use_reward_model:
            rm_N = self.redo(self.roles.reward_model, "score", batch.select(["prompt", "response"]))["rm_score"]
            scores_N = scores_N + self.cfg.reward_model.weight * rm_N
            batch = batch.update(rm_score=rm_N)
        return batch.update(scores=scores_N, fn_scores=scored.scores_N), scored

    def teacher_scores(self, batch: Batch) -> Batch:
        """The teacher's top-k log-probs of the batch's response tokens (workers/teacher.py)."""
        return self.redo(self.roles.teacher, "score", batch.select(
            [k for k in ("input_ids", "attention_mask", "position_ids", "responses", "segment_ids") if k in batch]))

    @staticmethod
    def drift(batch: Batch) -> float:
        """Trainer and vLLM hold the same weights at sampling time: a gap means the sync or a kernel is off."""
        return float(masked_mean((batch["rollout_logp"] - batch["old_logp"]).abs(), batch["response_mask"]))

    def check_drift(self, drift: float) -> None:
        if drift > self.cfg.rollout.max_logprob_drift:
            raise WeightSyncError(
                f"mean |vLLM logp - trainer logp| = {drift:.4g} exceeds rollout.max_logprob_drift="
                f"{self.cfg.rollout.max_logprob_drift}: the rollout engine is not sampling from the trained weights")

    def sync_weights(self, step: int | None = None) -> dict:
        """Trainer -> every rollout engine (rlengine/weight_sync), verified; a mismatch or a hung
        peer stops the run.  An engine that dies in the transfer is restarted and the push redone.
        Sleeping engines get their weights' memory back first (timed as part of the sync)."""
        if self.weight_sync is None:
            return {}  # no trainer: the engines already hold model.path
        if "weights" in self.asleep:
            self._wake("weights")
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

    def wake_engines(self, step: int | None = None, timer=_untimed) -> None:
        """Before generating, in verl's order: the weights' memory (at level 2, which discarded
        them, filled by a full weight sync), then, once the trainer no longer needs the memory
        (trainer.offload_during_rollout: its states moved to host memory), the KV cache."""
        if not self.asleep:
            return
        with timer("wake"):
            if "weights" in self.asleep:
                if self.plan.sleep_level == 2:
                    self.sync_weights(step)
                else:
                    self._wake("weights")
            if self.offload_trainer:
                self.roles.trainer.call_all("offload_states")
                self.trainer_offloaded = True
            self._wake("kv_cache")

    def sleep_engines(self, timer=_untimed) -> None:
        """After generating: the engines release their GPU memory (plan.sleep_level) for the
        trainer's passes, and an offloaded trainer takes its states back."""
        if not self.plan.sleep_level or self.asleep == set(ENGINE_MEMORY):
            return
        with timer("sleep"):
            reports = self.roles.rollout.call_all("sleep", self.plan.sleep_level)
            self.asleep = set(ENGINE_MEMORY)
            if self.trainer_offloaded:
                self.roles.trainer.call_all("reload_states")
                self.trainer_offloaded = False
        self._count("sleep/sleeps", reports)
        self.sleep_stats["sleep/freed_gib"] = sum(r["freed_gib"] for r in reports) / len(reports)

    def _wake(self, tag: str) -> None:
        reports = self.roles.rollout.call_all("wake_up", [tag])
        self.asleep.discard(tag)
        if tag == "weights" and self.plan.sleep_level == 2:
            # Level 2 discarded them: the next push carries every weight, the path an engine
            # restart takes (with LoRA adapters the base goes again, not the adapter alone).
            self.weight_sync.engines_have_base = False
        self._count("sleep/wakes", reports)

    def _count(self, key: str, reports: list[dict]) -> None:
        self.sleep_stats[key] += 1
        self.sleep_stats["sleep/skipped"] += int(any(r["skipped"] for r in reports))

    def evaluate_generation(self) -> dict:
        """Greedy answers to every held-out set, scored by its declared check (evaluate.HeldOut):
        eval/accuracy for data.test_path, eval/<name>/accuracy for each eval.sets entry."""
        out = {}
        self.wake_engines()
        for held in self.heldout:
            t0 = time.perf_counter()
            prompts = self.encoder.to_batch(held.rows)
            gen = self.redo(self.roles.rollout, "generate", prompts, 1, 0, True, self.plan.eval_max_new_tokens,
                            join=concat_rollouts)
            out.update(held.metrics(gen["prompt"], gen["response"], gen["ground_truth"], gen["extra"],
                                    gen["response_length"]))
            out[f"timing_s/eval{held.suffix}"] = time.perf_counter() - t0
        self.sleep_engines()
        return out
