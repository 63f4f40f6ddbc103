"""Reward-model roles: scoring responses during RL, and training the scalar head (recipe rm_*).

A reward model is `AutoModelForSequenceClassification` with one label; the score of a sequence is
its output at the last non-padding token.  Both roles read text, not the policy's token ids: the
prompt and the decoded response are encoded with the reward model's own tokenizer, so a reward
model with a different vocabulary scores exactly what the policy wrote.
"""
from __future__ import annotations

import torch

from rlengine import faults
from rlengine.algos import losses as L
from rlengine.config import RootConfig
from rlengine.modeling import DTYPES, set_threads
from rlengine.protocol import Batch
from rlengine.workers.trainer import TrainerWorker


def load_reward_model(path: str, cfg: RootConfig):
    from transformers import AutoModelForSequenceClassification

    m = cfg.model
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=DTYPES[m.dtype], attn_implementation=m.attn_implementation,
        trust_remote_code=m.trust_remote_code)
    if model.config.pad_token_id is None:
        raise ValueError(f"{path}: the reward model's config needs pad_token_id to find each sequence's last token")
    return model


def encode_texts(tokenizer, prompts: list[str], responses: list[str], max_length: int) -> dict:
    """Left-padded [prompt + response] in the reward model's vocabulary (no EOS appended: the
    score is read at the last response token)."""
    ids = [tokenizer(p + r, add_special_tokens=False).input_ids[-max_length:] for p, r in zip(prompts, responses)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    L_ = max(map(len, ids))
    input_ids = torch.full((len(ids), L_), pad, dtype=torch.long)
    attn = torch.zeros((len(ids), L_), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, L_ - len(x):] = torch.tensor(x)
        attn[i, L_ - len(x):] = 1
    return {"input_ids": input_ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0)}


def sequence_scores(model, enc: dict) -> torch.Tensor:
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                position_ids=enc["position_ids"], use_cache=False)
    return out.logits[:, 0].float()  # [B]


class RewardModelWorker:
    """Frozen reward model scoring (prompt, response) text during RL."""

    def __init__(self, cfg: RootConfig, path: str, tokenizer_path: str, micro_batch_size: int):
        from transformers import AutoTokenizer

        self.cfg, self.micro_batch_size = cfg, micro_batch_size
        self.device = torch.device("cuda" if cfg.resources.device == "cuda" else "cpu")
        if cfg.resources.device == "cpu":
            set_threads(cfg.trainer.cpu_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        # A checkpoint without a score head gets a fresh one: seeded, so that a restarted actor
        # (or a resumed run) scores exactly as before.
        torch.manual_seed(cfg.seed)
        self.model = load_reward_model(path, cfg).to(self.device).eval()

    @torch.no_grad()
    def score(self, batch: Batch) -> Batch:
        faults.maybe_kill("reward_model", batch.info.get("step"))
        prompts, responses = batch["prompt"], batch["response"]
        out = []
        for i in range(0, len(prompts), self.micro_batch_size):
            enc = encode_texts(self.tokenizer, prompts[i:i + self.micro_batch_size],
                               responses[i:i + self.micro_batch_size], self.cfg.reward_model.max_length)
            out.append(sequence_scores(self.model, {k: v.to(self.device) for k, v in enc.items()}).cpu())
        return Batch(tensors={"rm_score": torch.cat(out)})


class RewardTrainerWorker(TrainerWorker):
    """Trains the scalar head (and backbone) with the Bradley-Terry loss on preference pairs.

    Batches hold pairs interleaved: rows 2i (chosen) and 2i+1 (rejected)."""

    hosts_reference = False

    def _load_model(self, path: str):
        return load_reward_model(path, self.cfg)

    def _pair_scores(self, micro: Batch) -> torch.Tensor:
        return sequence_scores(self.engine, micro)

    def update_rm(self, batch: Batch) -> dict:
        self.engine.train()
        norm = self._global_sum(float(len(batch) // 2))
        loss_sum, acc = 0.0, []
        for micro in batch.chunk_by_size(self.plan.micro_batch_size):
            r_B = self._pair_scores(micro.to(self.device))
            loss, m = L.bradley_terry_loss(r_B[0::2], r_B[1::2], normaliser=norm)
            self._backward(loss)
            loss_sum += float(loss)
            acc.append(float(m["accuracy"]))
        self.optimizer_steps += 1
        return {"rm/loss": loss_sum * self.world_size, "rm/train_accuracy": sum(acc) / len(acc),
                "actor/grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
                "actor/lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def pair_scores(self, batch: Batch) -> Batch:
        self.engine.eval()
        outs = [self._pair_scores(m.to(self.device)).cpu() for m in batch.chunk_by_size(self.plan.micro_batch_size)]
        return Batch(tensors={"score": torch.cat(outs)})
