"""Reward-model roles: scoring responses during RL, and training the scalar head (recipe rm_*).

A reward model is `AutoModelForSequenceClassification` with one label; the score of a sequence is
its output at the last non-padding token.  Both roles read text, not the policy's token ids: the
prompt and the decoded response are encoded with the reward model's own tokenizer, so a reward
model with a different vocabulary scores exactly what the policy wrote.
"""
from __future__ import annotations

import torch

from rlengine import faults
from rlengine.config import RootConfig
from rlengine.modeling import DTYPES, attn_implementation, set_threads
from rlengine.layout import encode_texts, micro_batches
from rlengine.plan import token_budget
from rlengine.protocol import Batch
from rlengine.workers.trainer import TrainerWorker


def load_reward_model(path: str, cfg: RootConfig, **kw):
    from transformers import AutoModelForSequenceClassification

    m = cfg.model
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=DTYPES[m.dtype], attn_implementation=attn_implementation(m.attn_implementation),
        trust_remote_code=m.trust_remote_code, **kw)
    if model.config.pad_token_id is None:
        raise ValueError(f"{path}: the reward model's config needs pad_token_id to find each sequence's last token")
    return model


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
        # Encoded once, in the reward model's vocabulary: its lengths, not the policy's, size the
        # micro-batches (each then trimmed to its own longest text).
        enc = Batch(tensors=encode_texts(self.tokenizer, batch["prompt"], batch["response"],
                                         self.cfg.reward_model.max_length))
        mbs = micro_batches(enc, self.micro_batch_size, token_budget(self.cfg, "reward_model"), self.device)
        return Batch(tensors={"rm_score": mbs.gather([sequence_scores(self.model, m) for m in mbs])})


class RewardTrainerWorker(TrainerWorker):
    """The trainer of recipe rm_*: the scalar head (and backbone) on preference pairs (stages/rm.py),
    batches holding pairs interleaved: rows 2i (chosen) and 2i+1 (rejected)."""

    hosts_reference = False
    lora_task = "SEQ_CLS"

    def _load_model(self, path: str):
        return load_reward_model(path, self.cfg, **self._quantized())

    def pair_scores_of(self, micro: Batch) -> torch.Tensor:
        return sequence_scores(self.engine, micro)

    @torch.no_grad()
    def pair_scores(self, batch: Batch) -> Batch:
        self.engine.eval()
        mbs = self.micro_batches(batch)
        return Batch(tensors={"score": mbs.gather([self.pair_scores_of(m) for m in mbs])})
