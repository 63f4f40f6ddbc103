"""Supervised fine-tuning: -log p(target | context) on the tokens a row marks as targets.

Two row formats (sft.format): `chat` — conversations, alpaca or prompt/response rows rendered
with the tokenizer's chat template, loss on the assistant turns only (rlengine/chat.py); and
`completion` — data.prompt_key followed by its `completion` (or " " + data.answer_key), no
template: the tiny arithmetic warm start.  `auto` picks per dataset from the first row's keys.
"""
from __future__ import annotations

import logging

from rlengine import chat
from rlengine.algos import losses as L
from rlengine.data import check_rows, load_rows
from rlengine.errors import ConfigError
from rlengine.layout import pack_sequences
from rlengine.protocol import Batch
from rlengine.stages import register_stage
from rlengine.stages.base import Stage, Timer, Uses, mean_dicts

log = logging.getLogger("rlengine")


def completion_batch(encoder, rows: list[dict], completion_key: str = "completion") -> Batch:
    """Prompt + target completion (+ EOS) in the rollout layout; the loss covers the completion."""
    tok = encoder.tokenizer
    prompts = [encoder.encode(r) for r in rows]
    comps = [tok(r.get(completion_key) or (" " + str(r[encoder.answer_key])), add_special_tokens=False).input_ids
             + [tok.eos_token_id] for r in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Batch(tensors=pack_sequences(prompts, comps, None, pad))


def row_format(cfg, row: dict) -> str:
    if cfg.sft.format != "auto":
        return cfg.sft.format
    d = cfg.data
    chat_keys = (d.messages_key, "conversations", "instruction", d.response_key)
    return "chat" if any(k in row for k in chat_keys) else "completion"


class Supervised(Stage):
    """What the offline stages (sft, rm, dpo) share: no sampling, evaluation every
    sft.eval_every_steps unless eval.every_steps says otherwise."""

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.algorithm.kl_coef > 0:
            raise ConfigError("algorithm.kl_coef", f"algorithm.name={cfg.algorithm.name} trains without a KL term")

    def eval_every(self) -> int:
        return self.cfg.eval.every_steps or self.cfg.sft.eval_every_steps


@register_stage
class SFT(Supervised):
    name = "sft"

    @classmethod
    def uses(cls, cfg) -> Uses:
        return Uses(rollout=True)  # greedy generation to evaluate

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if cfg.sft.format not in ("auto", "chat", "completion"):
            raise ConfigError("sft.format", f"{cfg.sft.format!r} is not one of ['auto', 'chat', 'completion']")
        if cfg.sft.packing and cfg.sft.format == "completion":
            raise ConfigError("sft.packing", "packing applies to chat-format rows (sft.format=chat or auto)")

    def load_data(self):
        """Held-out rows are {prompt, answer} for greedy generation in either format."""
        d = self.cfg.data
        train = load_rows(d.train_path, d.train_split, d.config_name)
        test = load_rows(d.test_path, d.test_split, d.test_config_name or d.config_name)
        check_rows(test, (d.prompt_key, d.answer_key), f"{d.test_path} (data.test_path)")
        self.format = row_format(self.cfg, train[0]) if train else "completion"
        if self.format == "chat":
            train, skipped = chat.check_chat_rows(train, d, f"{d.train_path} (data.train_path)")
            if skipped:
                log.warning("data.bad_rows=skip: dropped %d training rows", skipped)
        else:
            check_rows(train, (d.prompt_key, d.answer_key), f"{d.train_path} (data.train_path)")
        return train, test

    def batch(self, encoder, rows: list[dict]) -> tuple[Batch, dict]:
        if self.format == "completion":
            return completion_batch(encoder, rows), {}
        return chat.chat_batch(encoder.tokenizer, rows, self.cfg.data, self.cfg.sft.max_length,
                               packing=self.cfg.sft.packing)

    def step(self, ctl, step: int) -> dict:
        timer = Timer()
        with timer("step"):
            batch, stats = self.batch(ctl.encoder, ctl.loader.next())
            with timer("update"):
                metrics = mean_dicts(ctl.roles.trainer.call_split("update", batch))
        return {**metrics, **stats, **timer.t}

    def should_stop(self, metrics: dict) -> bool:
        target = self.cfg.sft.stop_at_accuracy
        return target is not None and metrics.get(self.headline[0], 0.0) >= target

    @staticmethod
    def update(worker, batch) -> dict:
        """One optimizer step: -log p(target tokens), token-mean over the global batch."""
        from rlengine.modeling import response_logprobs

        worker.engine.train()
        norm = worker.global_sum(float(batch["response_mask"].sum()))
        total = 0.0
        for micro in worker.micro_batches(batch, train=True):  # a padding one has response_mask 0: no loss
            logp_BR = response_logprobs(worker.engine, micro, chunk_tokens=worker.cfg.trainer.logits_chunk_tokens)
            loss = L.sft_loss(logp_BR, micro["response_mask"], agg_mode="token-mean", normaliser=max(norm, 1.0))
            worker.backward(loss)
            total += float(loss.detach())
        worker.optimizer_steps += 1
        return {"sft/loss": worker.global_sum(total), "actor/grad_norm": worker.grad_norm(),
                "actor/lr": worker.scheduler.get_last_lr()[0],
                "sft/tokens": norm}
