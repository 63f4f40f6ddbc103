"""Reward-model training: the Bradley-Terry loss -log σ(r(x, y_c) - r(x, y_r)) on preference pairs,
a scalar head on the policy's backbone (workers/reward_model.py)."""
from __future__ import annotations

import logging
import time

from rlengine.algos.preference import bradley_terry_loss
from rlengine.data import check_preference_rows, load_rows
from rlengine.layout import encode_texts
from rlengine.protocol import Batch
from rlengine.stages import register_stage
from rlengine.stages.base import Timer, Uses, mean_dicts
from rlengine.stages.sft import Supervised

log = logging.getLogger("rlengine")


def pair_batch(tokenizer, rows: list[dict], d, max_length: int = 512) -> Batch:
    """Preference pairs as 2N sequences, chosen and rejected interleaved (rows 2i, 2i+1), so any
    even split keeps pairs together."""
    prompts = [r[d.prompt_key] for r in rows for _ in (0, 1)]
    responses = [r[key] for r in rows for key in (d.chosen_key, d.rejected_key)]
    return Batch(tensors=encode_texts(tokenizer, prompts, responses, max_length))


def load_pairs(cfg) -> tuple[list[dict], list[dict]]:
    d = cfg.data
    train = load_rows(d.train_path, d.train_split, d.config_name)
    test = load_rows(d.test_path, d.test_split, d.test_config_name or d.config_name)
    train, skipped = check_preference_rows(train, d, f"{d.train_path} (data.train_path)")
    test, skipped_test = check_preference_rows(test, d, f"{d.test_path} (data.test_path)")
    if skipped or skipped_test:
        log.warning("data.bad_rows=skip: dropped %d training and %d test preference rows", skipped, skipped_test)
    return train, test


@register_stage
class RewardModel(Supervised):
    name = "rm"
    trainer = "rlengine.workers.reward_model:RewardTrainerWorker"
    headline = ("eval/pairwise_accuracy", "pairwise accuracy")

    @classmethod
    def sequences_per_row(cls, cfg) -> int:
        return 2

    @classmethod
    def uses(cls, cfg) -> Uses:
        return Uses(rollout=False)

    @classmethod
    def summary_keys(cls, cfg) -> list[str]:
        return [cls.headline[0]]

    def load_data(self):
        return load_pairs(self.cfg)

    def heldout_rows(self, test_rows):
        return None

    def step(self, ctl, step: int) -> dict:
        timer = Timer()
        with timer("step"):
            batch = pair_batch(ctl.encoder.tokenizer, ctl.loader.next(), self.cfg.data,
                               self.cfg.reward_model.max_length)
            with timer("update"):
                metrics = mean_dicts(ctl.roles.trainer.call_split("update", batch))
        return {**metrics, **timer.t}

    def evaluate(self, ctl) -> dict:
        """Held-out pairwise accuracy of the reward model being trained: score(chosen) > score(rejected)."""
        t0 = time.perf_counter()
        batch = pair_batch(ctl.encoder.tokenizer, ctl.test_rows, self.cfg.data, self.cfg.reward_model.max_length)
        r_N = ctl.roles.trainer.map_batch("pair_scores", batch)["score"]
        margin = r_N[0::2] - r_N[1::2]
        return {"eval/pairwise_accuracy": float((margin > 0).float().mean()), "eval/margin": float(margin.mean()),
                "eval/n": float(len(margin)), "timing_s/eval": time.perf_counter() - t0}

    @staticmethod
    def update(worker, batch) -> dict:
        worker.engine.train()
        norm = worker.global_sum(float(len(batch) // 2))
        loss_sum, acc = 0.0, []
        for micro in worker.micro_batches(batch, train=True, pairs=True):
            r_B = worker.pair_scores_of(micro)
            loss, m = bradley_terry_loss(r_B[0::2], r_B[1::2], normaliser=norm)
            # A padding pair (a copy) only keeps the ranks' forwards in step: weight 0.
            padding = micro.info.get("padding", False)
            loss = loss * 0.0 if padding else loss
            worker.backward(loss)
            loss_sum += float(loss.detach())
            if not padding:
                acc.append(float(m["accuracy"]))
        worker.optimizer_steps += 1
        return {"rm/loss": loss_sum * worker.world_size, "rm/train_accuracy": sum(acc) / len(acc),
                "actor/grad_norm": worker.grad_norm(), "actor/lr": worker.scheduler.get_last_lr()[0]}
