"""Direct preference optimisation and its variants on {prompt, chosen, rejected} rows: the policy on
the trainer ranks, reference log-probs from the reference role (or the trainer ranks), computed
once per row and cached (dpo.precompute_reference); the loss is algos.preference's
`algorithm.dpo_loss`, plus `rpo_alpha` x the chosen response's NLL (RPO, Pang et al. 2024).

A pair trains as two sequences in the rollout layout, chosen and rejected interleaved (rows 2i,
2i+1), so an even split over ranks and micro-batches keeps pairs together.  Log-probs are the
model's own (temperature 1), summed over the response.
"""
from __future__ import annotations

import torch

from rlengine.algos.preference import get_preference_loss
from rlengine.errors import ConfigError
from rlengine.layout import pack_sequences
from rlengine.protocol import Batch
from rlengine.stages import register_stage
from rlengine.stages.base import Timer, Uses, mean_dicts
from rlengine.stages.rm import load_pairs
from rlengine.stages.sft import Supervised

SMOOTHED = ("sigmoid", "simpo")  # the losses label_smoothing applies to


def pair_sequences(encoder, rows: list[dict], d, max_length: int) -> Batch:
    """[prompt | response + EOS] for chosen and rejected of every row, interleaved.  The prompt is
    rendered as the rollout renders it (data.chat_template, data.system_prompt), so the policy
    learns to answer the prompts it will be asked; a pair longer than max_length loses the end of
    its responses."""
    tok = encoder.tokenizer
    prompts, responses = [], []
    for r in rows:
        p = encoder.encode(r)
        for key in (d.chosen_key, d.rejected_key):
            ids = tok(r[key], add_special_tokens=False).input_ids + [tok.eos_token_id]
            prompts.append(p)
            responses.append(ids[:max(1, max_length - len(p))])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Batch(tensors=pack_sequences(prompts, responses, None, pad), info={"pad_id": pad, "temperature": 1.0})


def sequence_logps(logp_BR: torch.Tensor, mask_BR: torch.Tensor) -> torch.Tensor:
    return (logp_BR * mask_BR).sum(-1)  # [B]


@register_stage
class DPO(Supervised):
    name = "dpo"
    headline = ("eval/rewards/accuracies", "pairwise reward accuracy")

    @classmethod
    def sequences_per_row(cls, cfg) -> int:
        return 2

    @classmethod
    def uses(cls, cfg) -> Uses:
        # Engines only to answer the generation sets; SimPO has no reference.
        return Uses(rollout=bool(cfg.eval.sets), reference=cfg.algorithm.dpo_loss != "simpo")

    @classmethod
    def check(cls, cfg) -> None:
        a = cfg.algorithm
        from rlengine.algos.preference import PREFERENCE_LOSSES

        if a.dpo_loss not in PREFERENCE_LOSSES:
            raise ConfigError("algorithm.dpo_loss", f"{a.dpo_loss!r} is not one of {sorted(PREFERENCE_LOSSES)}")
        if a.beta <= 0:
            raise ConfigError("algorithm.beta", f"must be > 0, got {a.beta}")
        if not 0 <= a.label_smoothing < 0.5:
            raise ConfigError("algorithm.label_smoothing", f"must be in [0, 0.5), got {a.label_smoothing}")
        if a.label_smoothing and a.dpo_loss not in SMOOTHED:
            raise ConfigError("algorithm.label_smoothing", f"applies to {list(SMOOTHED)}, not dpo_loss={a.dpo_loss}")
        if a.rpo_alpha < 0:
            raise ConfigError("algorithm.rpo_alpha", f"must be >= 0, got {a.rpo_alpha}")
        if a.kl_coef > 0:
            raise ConfigError("algorithm.kl_coef", "DPO's KL to the reference is in its loss (algorithm.beta)")

    @classmethod
    def summary_keys(cls, cfg) -> list[str]:
        return [cls.headline[0], *(f"eval/{s.name}/accuracy" for s in cfg.eval.sets)]

    def __init__(self, cfg, plan):
        super().__init__(cfg, plan)
        self._ref: dict[str, tuple[float, float]] = {}  # row source -> (ref chosen, ref rejected)
        self.reference_rows = 0  # rows whose reference log-probs the last call computed

    def load_data(self):
        return load_pairs(self.cfg)

    def heldout_rows(self, test_rows):
        return None  # scored as pairs; generation sets come from eval.sets

    def _pairs(self, ctl, rows: list[dict], step: int | None = None) -> Batch:
        batch = pair_sequences(ctl.encoder, rows, self.cfg.data, self.cfg.dpo.max_length).with_info(step=step)
        if not self.plan.use_reference:
            self.reference_rows = 0
            return batch
        keys = [r.get("_source") or repr(sorted(r.items())) for r in rows]
        cache = self.cfg.dpo.precompute_reference
        missing = [i for i, k in enumerate(keys) if not cache or k not in self._ref]
        self.reference_rows = len(missing)
        if missing:
            idx = torch.tensor([j for i in missing for j in (2 * i, 2 * i + 1)])
            sub = batch.index(idx)
            ref_N = sequence_logps(ctl.ref_log_probs(sub)["ref_logp"], sub["response_mask"])
            for n, i in enumerate(missing):
                self._ref[keys[i]] = (float(ref_N[2 * n]), float(ref_N[2 * n + 1]))
        ref = torch.tensor([v for k in keys for v in self._ref[k]], dtype=torch.float32)
        if not cache:
            self._ref.clear()
        return batch.update(ref_logps=ref)

    def step(self, ctl, step: int) -> dict:
        timer = Timer()
        with timer("step"):
            with timer("ref"):
                batch = self._pairs(ctl, ctl.loader.next(), step)
            with timer("update"):
                metrics = mean_dicts(ctl.roles.trainer.call_split("update", batch))
        return {**metrics, **timer.t, "dpo/reference_rows": float(self.reference_rows)}

    def evaluate(self, ctl) -> dict:
        """The loss's implicit rewards on held-out pairs (eval/rewards/accuracies, margins, ...),
        and greedy answers to every eval.sets entry."""
        import time

        t0 = time.perf_counter()
        batch = self._pairs(ctl, ctl.test_rows)
        mask = batch["response_mask"]
        logps = sequence_logps(ctl.roles.trainer.map_batch("log_probs", batch)["old_logp"], mask)
        ref = batch["ref_logps"] if "ref_logps" in batch else torch.zeros_like(logps)
        loss, m = _loss(self.cfg, logps, ref, mask.sum(-1), normaliser=None)
        out = {f"eval/{k}": v for k, v in m.items()}
        out.update({"eval/dpo_loss": float(loss), "eval/n": float(len(ctl.test_rows)),
                    "timing_s/eval_pairs": time.perf_counter() - t0})
        if ctl.heldout:
            ctl.sync_weights()
            out.update(ctl.evaluate_generation())
        return out

    @staticmethod
    def update(worker, batch) -> dict:
        from rlengine.modeling import response_logprobs

        a = worker.cfg.algorithm
        worker.engine.train()
        pairs = worker.global_sum(float(len(batch) // 2))
        chosen_tokens = worker.global_sum(float(batch["response_mask"][0::2].sum()))
        total, nll_total, parts = 0.0, 0.0, []
        for micro in worker.micro_batches(batch, train=True, pairs=True):
            # A padding pair (a copy, response_mask 0) only keeps the ranks' forwards in step: weight 0.
            weight = 0.0 if micro.info.get("padding") else 1.0
            mask_BR = micro["response_mask"]
            logp_BR = response_logprobs(worker.engine, micro, 1.0, chunk_tokens=worker.cfg.trainer.logits_chunk_tokens)
            loss, m = _loss(worker.cfg, sequence_logps(logp_BR, mask_BR), micro["ref_logps"].to(worker.device)
                            if "ref_logps" in micro else None, mask_BR.sum(-1), normaliser=pairs)
            if a.rpo_alpha:
                nll = -(logp_BR[0::2] * mask_BR[0::2]).sum() / max(chosen_tokens, 1.0)
                loss = loss + a.rpo_alpha * nll
                nll_total += float(nll.detach())
            loss = loss * weight
            worker.backward(loss)
            total += float(loss.detach())
            if weight:
                parts.append((len(micro) // 2, m))
        worker.optimizer_steps += 1
        n = sum(k for k, _ in parts)
        metrics = {key: sum(k * m[key] for k, m in parts) / n for key in parts[0][1]}
        if a.rpo_alpha:
            metrics["dpo/nll_loss"] = worker.global_sum(nll_total)
        return {**metrics, "dpo/loss": worker.global_sum(total), "actor/grad_norm": worker.grad_norm(),
                "actor/lr": worker.scheduler.get_last_lr()[0]}


def _loss(cfg, logps_N: torch.Tensor, ref_N: torch.Tensor | None, lengths_N: torch.Tensor, normaliser):
    """algorithm.dpo_loss on interleaved sequences (chosen 2i, rejected 2i+1)."""
    a = cfg.algorithm
    fn = get_preference_loss(a.dpo_loss)
    kw = {"beta": a.beta}
    if a.label_smoothing:
        kw["label_smoothing"] = a.label_smoothing
    if a.dpo_loss == "simpo":
        kw.update(gamma=a.simpo_gamma, chosen_lengths_B=lengths_N[0::2], rejected_lengths_B=lengths_N[1::2])
        ref_c = ref_r = None
    else:
        ref_c, ref_r = ref_N[0::2], ref_N[1::2]
    return fn(logps_N[0::2], logps_N[1::2], ref_c, ref_r, normaliser=normaliser, **kw)
