"""A stage defined outside the package, in this one module: loaded by `algorithm.plugins`, it
registers itself and runs through job setup, placement, the loop, checkpoints and the summary
with no edit anywhere else (tests/stages/test_toy_stage.py)."""
from __future__ import annotations

from rlengine.modeling import response_logprobs
from rlengine.stages import Stage, Timer, Uses, mean_dicts, register_stage
from rlengine.stages.sft import completion_batch


@register_stage
class Toy(Stage):
    """Teacher forcing on the answers with a loss of its own (squared NLL per sequence), scored by
    the held-out mean NLL of the answers: no engines, no reference."""

    name = "toy"
    headline = ("eval/answer_nll", "answer NLL")

    @classmethod
    def uses(cls, cfg) -> Uses:
        return Uses(rollout=False)

    def step(self, ctl, step: int) -> dict:
        timer = Timer()
        with timer("step"):
            batch = completion_batch(ctl.encoder, ctl.loader.next()).with_info(step=step)
            metrics = mean_dicts(ctl.roles.trainer.call_split("update", batch))
        return {**metrics, **timer.t}

    def evaluate(self, ctl) -> dict:
        batch = completion_batch(ctl.encoder, ctl.test_rows[:32]).with_info(temperature=1.0)
        logp_BR = ctl.roles.trainer.map_batch("log_probs", batch)["old_logp"]
        nll_B = -(logp_BR * batch["response_mask"]).sum(-1)
        return {"eval/answer_nll": float(nll_B.mean()), "eval/n": float(len(nll_B))}

    @staticmethod
    def update(worker, batch) -> dict:
        worker.engine.train()
        n = worker.global_sum(float(len(batch)))
        total = 0.0
        for micro in batch.chunk_by_size(worker.plan.micro_batch_size):
            micro = micro.to(worker.device)
            nll_B = -(response_logprobs(worker.engine, micro) * micro["response_mask"]).sum(-1)
            loss = (nll_B ** 2).sum() / n
            worker.backward(loss)
            total += float(loss.detach())
        worker.optimizer_steps += 1
        return {"toy/loss": worker.global_sum(total), "toy/rank_rows": float(len(batch))}
