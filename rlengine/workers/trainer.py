"""Policy training role: one DeepSpeed (ZeRO-3) rank per actor.

The class is plain Python: `TrainerWorker` runs without Ray (a GPU check or a notebook builds it
directly), and `workers.group` wraps it in a Ray actor.  Every public method that touches
parameters is collective under ZeRO-3: the WorkerGroup calls it on all ranks at once.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from contextlib import nullcontext

import torch

from rlengine import faults
from rlengine.checkpoint import capture_rng, restore_rng
from rlengine.algos import losses as L
from rlengine.config import Plan, RootConfig
from rlengine.data import trim_padding
from rlengine.modeling import DTYPES, intra_op_threads, load_causal_lm, response_logprobs, set_threads
from rlengine.protocol import Batch
from rlengine.weight_sync.sender import WeightSender, dtype_name
from rlengine.weight_sync.verify import BUCKET_BYTES, bucketize, checksum
from rlengine.workers.reference import TrainerReference

log = logging.getLogger("rlengine")


def deepspeed_config(cfg: RootConfig, plan: Plan) -> dict:
    t = cfg.trainer
    return {
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.micro_batches_per_minibatch,
        "train_batch_size": plan.micro_batch_size * plan.micro_batches_per_minibatch * t.world_size,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": {
            "stage": plan.zero_stage,
            "overlap_comm": False,
            "contiguous_gradients": True,
            # Tensors smaller than this stay replicated; the tiny model's norms and biases do.
            "stage3_param_persistence_threshold": 10_000,
        },
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _lr_lambda(cfg: RootConfig):
    t = cfg.trainer

    def f(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_schedule == "cosine":
            frac = (step - t.warmup_steps) / max(1, t.total_steps - t.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        return 1.0

    return f


def length_bucketed(mb: Batch, size: int, device: torch.device | str = "cpu", compiled: bool = False) -> list[Batch]:
    """The minibatch's rows sorted by length, in micro-batches of `size` on `device`, each cut to
    its own longest row: short responses stop paying for the long ones' padding.  The number of
    micro-batches (DeepSpeed's accumulation boundary) and the global loss normaliser are unchanged,
    so the update is the same sum of per-token terms.

    For a `compiled` model: each micro-batch's tensors are fresh contiguous copies (dynamo guards
    on a view's row stride and on its storage offset, 0 for the first chunk only), and when the
    widths differ they are marked dynamic from the first micro-batch on (left to itself dynamo
    compiles the first width statically and recompiles on the second).  Each failed guard costs
    a recompile of the model's forward and backward, ~1 min at 30M params on 2 cores.  Fixed-length
    work (one width) keeps its static graph."""
    order = torch.argsort(mb["attention_mask"].sum(-1), stable=True)
    micros = [Batch(tensors={k: v.to(device, memory_format=torch.contiguous_format, copy=True)
                             for k, v in trim_padding(c.tensors).items()}, meta=c.meta, info=c.info)
              for c in mb.index(order).chunk_by_size(size)]
    if compiled and len({m["input_ids"].shape[1] for m in micros}) > 1:
        for m in micros:
            for k in ("input_ids", "attention_mask", "position_ids"):
                if k in m:
                    torch._dynamo.maybe_mark_dynamic(m[k], 1)
    return micros


def concurrent_update(fn):
    """An update that runs beside another role's (policy and critic): Plan.update_threads."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with intra_op_threads(self.plan.update_threads):
            return fn(self, *args, **kwargs)
    return wrapper


class TrainerWorker:
    # The policy trainer holds the reference when reference.placement=trainer; the critic and the
    # reward-model trainer, built on this class, never do.
    hosts_reference = True

    def __init__(self, cfg: RootConfig, plan: Plan, model_path: str, rank: int, world_size: int,
                 master_addr: str, master_port: int):
        self.cfg, self.plan, self.rank, self.world_size = cfg, plan, rank, world_size
        on_gpu = cfg.resources.device == "cuda"
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0" if not on_gpu else os.environ.get("LOCAL_RANK", "0"))
        if not on_gpu:
            set_threads(cfg.trainer.cpu_threads)
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False,
                                   verbose=False)
        torch.manual_seed(cfg.seed)
        self.ds_config = deepspeed_config(cfg, plan)
        # Must stay alive while the model is built: from_pretrained then constructs under zero.Init
        # and every rank materialises only its own partition.
        self._hf_ds = HfDeepSpeedConfig(self.ds_config) if plan.zero_stage == 3 else None
        model = self._load_model(model_path)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        t = cfg.trainer
        optim = torch.optim.AdamW(model.parameters(), lr=self._lr(), betas=(t.adam_beta1, t.adam_beta2),
                                  weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(optim, _lr_lambda(cfg))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optim, lr_scheduler=sched, config=self.ds_config)
        if cfg.trainer.compile:
            self.engine.compile(compile_kwargs={"dynamic": None})
        self.device = self.engine.device
        self.optimizer_steps = 0
        self.sender = WeightSender(self.device, cfg.trainer.cpu_threads)  # used on rank 0
        # Frozen and equal to model_path's weights: not checkpointed, rebuilt from the path on resume.
        self.reference = (TrainerReference(cfg, plan, model_path, self.ds_config, self.device)
                          if plan.reference_in_trainer and self.hosts_reference else None)

    def _load_model(self, path: str):
        """Subclasses (critic, reward-model training) load a different head on the same backbone."""
        m = self.cfg.model
        return load_causal_lm(path, m.dtype, m.attn_implementation, m.trust_remote_code)

    def _lr(self) -> float:
        return self.cfg.trainer.lr

    @property
    def module(self):
        return self.engine.module

    def _global_sum(self, x: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t)
        return float(t.item())

    @torch.no_grad()
    def log_probs(self, batch: Batch, micro_batch_size: int | None = None) -> Batch:
        """Old log-probs [B, R] of this rank's shard (collective: every rank calls it)."""
        faults.maybe_kill("trainer", batch.info.get("step"), self.rank)
        self.engine.eval()
        mb = micro_batch_size or self.plan.micro_batch_size
        outs = [response_logprobs(self.engine, m.to(self.device), self.cfg.rollout.temperature).cpu()
                for m in batch.chunk_by_size(mb)]
        return Batch(tensors={"old_logp": torch.cat(outs)})

    def ref_log_probs(self, batch: Batch) -> Batch:
        """Reference log-probs ref_logp_BR of this rank's shard (reference.placement=trainer; collective)."""
        faults.maybe_kill("trainer", batch.info.get("step"), self.rank)
        return self.reference.log_probs(batch)

    def _normaliser(self, mb: Batch) -> float:
        """The loss normaliser over the *global* minibatch, so that micro-batches and ranks add up."""
        mode = self.cfg.algorithm.loss_agg
        if mode == "token-mean":
            return self._global_sum(float(mb["response_mask"].sum()))
        n_seq = self._global_sum(float(len(mb)))
        if mode == "seq-mean-token-sum-norm":
            return n_seq * self.cfg.rollout.max_new_tokens
        return n_seq

    def _backward(self, loss: torch.Tensor) -> None:
        # The loss is already normalised over the global minibatch: undo DeepSpeed's division by
        # the accumulation steps and by the data-parallel world size (gradients are averaged).
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self.engine.step()

    @concurrent_update
    def update_policy(self, batch: Batch) -> dict:
        """ppo_epochs x minibatches optimizer steps on this rank's shard; returns mean metrics.

        Loss metrics are this rank's share of the global minibatch loss times world_size, so the
        controller's mean over ranks is the global value.
        """
        faults.maybe_kill("trainer", batch.info.get("step"), self.rank)
        a = self.cfg.algorithm
        self.engine.train()
        per_step: list[dict] = []
        drift = [0.0, 0.0]  # sum |rollout_logp - logp| over response tokens, token count (old_logp_in_update)
        gen = torch.Generator().manual_seed(self.cfg.seed + self.optimizer_steps)
        for _ in range(a.ppo_epochs):
            perm = torch.randperm(len(batch), generator=gen)
            for mb in batch.index(perm).split(a.minibatches):
                norm = self._normaliser(mb)
                micro_metrics = [self._micro_step(m, norm, drift) for m in
                                 length_bucketed(mb, self.plan.micro_batch_size, self.device, self.cfg.trainer.compile)]
                self.optimizer_steps += 1
                step = {k: sum(m[k] for m in micro_metrics) / len(micro_metrics) for k in micro_metrics[0]}
                for k in ("actor/pg_loss", "actor/kl_loss"):  # additive over micro-batches and ranks
                    if k in step:
                        step[k] = sum(m[k] for m in micro_metrics) * self.world_size
                step["actor/grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
                per_step.append(step)
        metrics = {k: sum(s[k] for s in per_step) / len(per_step) for k in per_step[0]}
        metrics["actor/lr"] = self.scheduler.get_last_lr()[0]
        if "old_logp" not in batch:
            metrics["sync/logprob_drift"] = self._global_sum(drift[0]) / max(1.0, self._global_sum(drift[1]))
        return metrics

    def _micro_step(self, micro: Batch, norm: float, drift: list[float]) -> dict:
        a = self.cfg.algorithm
        mask_BR = micro["response_mask"]
        logp_BR, ent_BR = response_logprobs(self.engine, micro, self.cfg.rollout.temperature, with_entropy=True)
        adv_BR = micro["advantages"]  # [B, R], zero outside the response mask
        if "old_logp" in micro:
            old_BR = micro["old_logp"]
        else:
            # Single update on fresh samples: every micro-batch's forward precedes the one optimizer
            # step, so this pass *is* the old policy (ratio 1, as a separate pass would give).
            old_BR = logp_BR.detach()
            drift[0] += float(((micro["rollout_logp"] - old_BR).abs() * mask_BR).sum())
            drift[1] += float(mask_BR.sum())
        pg_loss, pg_m = L.policy_loss_clip(logp_BR, old_BR, adv_BR, mask_BR,
                                           clip_low=a.clip_low, clip_high=a.clip_high, dual_clip_c=a.dual_clip,
                                           agg_mode=a.loss_agg, normaliser=norm)
        loss = pg_loss
        out = {"actor/pg_loss": float(pg_loss)}
        if "ref_logp" in micro:
            kl_BR = L.kl_penalty(logp_BR, micro["ref_logp"], a.kl_estimator)
            kl_loss = L.agg_loss(kl_BR, mask_BR, a.loss_agg, normaliser=norm)
            if not a.kl_in_reward:
                loss = loss + a.kl_coef * kl_loss
            out["actor/kl_loss"] = float(kl_loss)
            out["actor/kl"] = float((kl_BR.detach() * mask_BR).sum() / mask_BR.sum().clamp(min=1))
        if a.entropy_coef:
            loss = loss - a.entropy_coef * L.agg_loss(ent_BR, mask_BR, a.loss_agg, normaliser=norm)
        self._backward(loss)
        n = mask_BR.sum().clamp(min=1)
        out["actor/entropy"] = float((ent_BR.detach() * mask_BR).sum() / n)
        out["actor/clip_frac"] = float(pg_m["clip_frac"])
        out["actor/approx_kl"] = float(pg_m["approx_kl"])
        return out

    def update_sft(self, batch: Batch) -> dict:
        """One optimizer step of SFT: -log p(completion | prompt), token-mean over the global batch."""
        self.engine.train()
        norm = self._global_sum(float(batch["response_mask"].sum()))
        total = 0.0
        for micro in batch.chunk_by_size(self.plan.micro_batch_size):
            micro = micro.to(self.device)
            logp_BR = response_logprobs(self.engine, micro)
            loss = L.sft_loss(logp_BR, micro["response_mask"], agg_mode="token-mean", normaliser=norm)
            self._backward(loss)
            total += float(loss)
        self.optimizer_steps += 1
        return {"sft/loss": self._global_sum(total), "actor/grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
                "actor/lr": self.scheduler.get_last_lr()[0]}

    def _gathered(self, params):
        if self.plan.zero_stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _buckets(self, bucket_bytes: int) -> tuple[dict, list[list[str]]]:
        """The parameters by name, and their names grouped into buckets by full (gathered) size."""
        named = list(self.module.named_parameters())
        sizes = [(n, math.prod(self._full_shape(p)) * p.element_size()) for n, p in named]
        return dict(named), bucketize(sizes, bucket_bytes)

    def _full_buckets(self, bucket_bytes: int = BUCKET_BYTES):
        """(names, tensors) of the full parameters, bucket by bucket (collective under ZeRO-3: every
        rank gathers; the tensors are only valid inside the iteration, on rank 0)."""
        params, buckets = self._buckets(bucket_bytes)
        for names in buckets:
            with self._gathered([params[n] for n in names]):
                yield [(n, params[n]) for n in names]

    @staticmethod
    def _full_shape(p) -> tuple:
        return tuple(getattr(p, "ds_shape", p.shape))

    def sync_layout(self, bucket_bytes: int = BUCKET_BYTES) -> list[list[tuple[str, tuple, str]]]:
        """The buckets a sync sends, as (name, full shape, dtype) rows: what receivers allocate."""
        params, buckets = self._buckets(bucket_bytes)
        return [[(n, self._full_shape(params[n]), dtype_name(params[n].dtype)) for n in b] for b in buckets]

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def open_sync_group(self, timeout_s: float) -> tuple[str, int]:
        """Rank 0: the weight-sync group's store on this node; returns (address, port)."""
        host = self.node_ip()
        return host, self.sender.open_group(host, timeout_s)

    def join_sync_group(self, world: int, names: dict[int, str], timeout_s: float) -> None:
        self.sender.join_group(world, names, timeout_s)

    @torch.no_grad()
    def export_weights(self, methods: list[str], bucket_bytes: int = BUCKET_BYTES) -> dict | None:
        """Send the full weights through every transport in `methods` (collective: all ranks
        gather, rank 0 sends).  Rank 0 returns what receivers need (shared-memory handle, Ray
        object buckets, IPC handles) and the checksums of what it sent; other ranks None."""
        if self.rank == 0:
            layout = [(n, self._full_shape(p), p.dtype) for n, p in self.module.named_parameters()]
            self.sender.begin(layout, set(methods))
        try:
            for named in self._full_buckets(bucket_bytes):
                if self.rank == 0:
                    self.sender.bucket(named)
        except BaseException:
            if self.rank == 0:
                self.sender.abort()
            raise
        return self.sender.finish() if self.rank == 0 else None

    @torch.no_grad()
    def gathered_checksums(self) -> dict:
        """Checksums of the full (gathered) weights as this rank sees them (collective)."""
        out = {}
        for n, p in self.module.named_parameters():
            with self._gathered([p]):
                out.update(checksum([(n, p)]))
        return out

    def save_hf(self, path: str, tokenizer_path: str) -> str | None:
        """Export a Hugging Face checkpoint (collective; rank 0 writes)."""
        state = {}
        for named in self._full_buckets():
            if self.rank == 0:
                state.update((n, t.detach().to("cpu", copy=True).contiguous()) for n, t in named)
        if self.rank != 0:
            return None
        from transformers import AutoTokenizer

        tmp = path.rstrip("/") + ".tmp"
        self.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(tmp)
        if os.path.exists(path):
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    def save_checkpoint(self, path: str, tag: str) -> None:
        """Sharded engine state (model, optimizer, scheduler) per rank plus this rank's RNG states
        and step counter, for resume (collective). Rank 0 also writes the HF config next to it, so
        `python -m rlengine.export` can rebuild an HF model from the shards alone."""
        self.engine.save_checkpoint(path, tag=tag, client_state={"optimizer_steps": self.optimizer_steps})
        torch.save({"rng": capture_rng(), "optimizer_steps": self.optimizer_steps},
                   os.path.join(path, tag, f"rank_state_{self.rank}.pt"))
        if self.rank == 0:
            self.module.config.save_pretrained(os.path.join(path, "model_config"))

    def load_checkpoint(self, path: str, tag: str) -> int:
        """Restore what save_checkpoint wrote (collective); returns the optimizer step count."""
        loaded, _ = self.engine.load_checkpoint(path, tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint {tag!r} under {path}")
        state = torch.load(os.path.join(path, tag, f"rank_state_{self.rank}.pt"), weights_only=False)
        restore_rng(state["rng"])
        self.optimizer_steps = state["optimizer_steps"]
        return self.optimizer_steps

    def is_compiled(self) -> bool:
        return bool(getattr(self.engine, "is_compiled", False))

    def shard_info(self, reference: bool = False) -> dict:
        """Per-parameter (local, full) sizes of the policy's (or the in-trainer reference's)
        partition on this rank: shows how ZeRO-3 split the model across ranks."""
        info = {}
        for n, p in (self.reference.module if reference else self.module).named_parameters():
            local = p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
            full = p.ds_numel if hasattr(p, "ds_numel") else p.numel()
            info[n] = (local, full)
        return info

    def dtype(self) -> str:
        return str(DTYPES[self.cfg.model.dtype])
