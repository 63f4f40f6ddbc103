"""Policy training role: one DeepSpeed (ZeRO-3) rank per actor.

The class is plain Python: `TrainerWorker` runs without Ray (a GPU check or a notebook builds it
directly), and `workers.group` wraps it in a Ray actor.  Every public method that touches
parameters is collective under ZeRO-3: the WorkerGroup calls it on all ranks at once.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
from contextlib import nullcontext

import torch

from rlengine import faults, lora
from rlengine.checkpoint import capture_rng, restore_rng
from rlengine.config import RootConfig
from rlengine.plan import Plan, token_budget
from rlengine.modeling import intra_op_threads, load_causal_lm, response_logprobs, set_threads
from rlengine.layout import MicroBatches, micro_batches
from rlengine.protocol import Batch
from rlengine.stages import get_stage, load_plugins
from rlengine.weight_sync.sender import WeightSender, dtype_name
from rlengine.weight_sync.verify import BUCKET_BYTES, bucketize, checksum
from rlengine.workers.reference import TrainerReference, reference_log_probs
from rlengine.zero import deepspeed_config

log = logging.getLogger("rlengine")


def _hidden_size(path: str, trust_remote_code: bool) -> int | None:
    """The model's hidden size from its config alone (sizes the ZeRO buckets before the weights load)."""
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    c = getattr(c, "text_config", None) or c
    return getattr(c, "hidden_size", None)


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
    # PEFT task type of this role's model: SEQ_CLS / TOKEN_CLS also train the new score head in full.
    lora_task = "CAUSAL_LM"
    # Whose token budget this worker's forwards use (plan.token_budget).
    budget_role = "trainer"
    # Backward calls since the last optimizer step, and how many this minibatch has (None: the plan's).
    _backwards = 0
    _accumulation: int | None = None

    def __init__(self, cfg: RootConfig, plan: Plan, model_path: str, rank: int, world_size: int,
                 master_addr: str, master_port: int):
        self.cfg, self.plan, self.rank, self.world_size = cfg, plan, rank, world_size
        load_plugins(cfg.algorithm.plugins)
        self.stage = get_stage(cfg.algorithm.name)
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
        self.ds_config = deepspeed_config(cfg, plan, _hidden_size(model_path, cfg.model.trust_remote_code))
        # Must stay alive while the model is built: from_pretrained then constructs under zero.Init
        # and every rank materialises only its own partition.
        self._hf_ds = HfDeepSpeedConfig(self.ds_config) if plan.zero_stage == 3 else None
        model = self._load_model(model_path)
        if plan.lora:
            model = lora.wrap(model, cfg.model, self.lora_task)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if plan.lora:
                model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need a grad input
        model.config.use_cache = False
        optim = self._optimizer([p for p in model.parameters() if p.requires_grad])
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
                          if plan.reference_in_trainer and self.hosts_reference and not plan.lora else None)
        self._check_offload()

    def _load_model(self, path: str):
        """Subclasses (critic, reward-model training) load a different head on the same backbone."""
        m = self.cfg.model
        return load_causal_lm(path, m.dtype, m.attn_implementation, m.trust_remote_code, **self._quantized())

    def _quantized(self) -> dict:
        return lora.load_kwargs(self.cfg.model, "cuda" if self.cfg.resources.device == "cuda" else "cpu")

    def _optimizer(self, params: list):
        """Only trainable parameters (with LoRA: the adapters and any new head) get optimizer state."""
        t = self.cfg.trainer
        kw = dict(lr=self._lr(), betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay)
        if t.optimizer == "adamw":
            return (self._offload_stage() == 3 and _fused_adam(params, kw)) or torch.optim.AdamW(params, **kw)
        import bitsandbytes as bnb

        return (bnb.optim.PagedAdamW8bit if t.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit)(params, **kw)

    def _lr(self) -> float:
        return self.cfg.trainer.lr

    @property
    def module(self):
        return self.engine.module

    def global_sum(self, x: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t)
        return float(t.item())

    def global_max(self, x: int) -> int:
        import torch.distributed as dist

        t = torch.tensor([x], dtype=torch.int64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def micro_batches(self, batch: Batch, train: bool = False, pairs: bool = False, role: str | None = None,
                      size: int | None = None) -> MicroBatches:
        """This rank's `batch` in micro-batches under `role`'s token budget (plan.token_budget;
        default this worker's budget_role), as many on every rank (collective).  `train`: the
        minibatch of one optimizer step; `backward` then puts the accumulation boundary on the
        last of them.  `pairs`: rows 2i, 2i+1 stay in one micro-batch."""
        mbs = micro_batches(batch, size or self.plan.micro_batch_size, token_budget(self.cfg, role or self.budget_role),
                            self.device, self.cfg.trainer.compile, pairs, agree=self.global_max)
        if train:
            self._accumulation = len(mbs)
        return mbs

    @torch.no_grad()
    def log_probs(self, batch: Batch, micro_batch_size: int | None = None) -> Batch:
        """Old log-probs [B, R] of this rank's shard (collective: every rank calls it), at the
        rollout temperature unless the batch says otherwise (info["temperature"])."""
        faults.maybe_kill("trainer", batch.info.get("step"), self.rank)
        self.engine.eval()
        temperature = batch.info.get("temperature", self.cfg.rollout.temperature)
        mbs = self.micro_batches(batch, size=micro_batch_size)
        chunk = self.cfg.trainer.logits_chunk_tokens
        return Batch(tensors={"old_logp": mbs.gather([response_logprobs(self.engine, m, temperature, chunk_tokens=chunk)
                                                      for m in mbs])})

    def ref_log_probs(self, batch: Batch) -> Batch:
        """Reference log-probs ref_logp_BR of this rank's shard (reference.placement=trainer, or the
        policy with its adapter disabled under LoRA; collective)."""
        faults.maybe_kill("trainer", batch.info.get("step"), self.rank)
        if self.reference is not None:
            return self.reference.log_probs(batch, agree=self.global_max)
        self.engine.eval()
        temperature = batch.info.get("temperature", self.cfg.rollout.temperature)
        with self.module.disable_adapter():
            return reference_log_probs(self.engine, batch, self.plan.micro_batch_size, temperature, self.device,
                                       token_budget(self.cfg, "reference"), self.global_max,
                                       self.cfg.trainer.logits_chunk_tokens)

    def normaliser(self, mb: Batch) -> float:
        """The loss normaliser over the *global* minibatch, so that micro-batches and ranks add up."""
        mode = self.cfg.algorithm.loss_agg
        if mode == "token-mean":
            return self.global_sum(float(mb["response_mask"].sum()))
        n_seq = self.global_sum(float(len(mb)))
        if mode == "seq-mean-token-sum-norm":
            return n_seq * self.cfg.rollout.max_new_tokens
        return n_seq

    def backward(self, loss: torch.Tensor, last: bool | None = None) -> None:
        """Accumulate one micro-batch's gradients; the optimizer steps after the `last` one.

        last None: the minibatch has the micro-batches `micro_batches(train=True)` made, else
        plan.micro_batches_per_minibatch.  DeepSpeed's own boundary counts step() calls modulo
        its gradient_accumulation_steps, which a token budget's varying count would misplace, so
        the boundary is set on every call: step() then runs the optimizer (and the LR scheduler)
        exactly once, on the last micro-batch."""
        self._backwards += 1
        if last is None:
            last = self._backwards >= (self._accumulation or self.plan.micro_batches_per_minibatch)
        self.engine.set_gradient_accumulation_boundary(bool(last))
        # The loss is already normalised over the global minibatch: undo DeepSpeed's division by
        # the accumulation steps and by the data-parallel world size (gradients are averaged).
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self.engine.step()
        if last:
            self._backwards, self._accumulation = 0, None

    def update(self, batch: Batch) -> dict:
        """One step's update on this rank's shard, as the job's stage defines it (collective)."""
        faults.maybe_kill("trainer", batch.info.get("step"), self.rank)
        with intra_op_threads(self.plan.update_threads):
            return self.stage.update(self, batch)

    def grad_norm(self) -> float:
        return float(self.engine.get_global_grad_norm() or 0.0)

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

    def sync_layout(self, kind: str = "full", bucket_bytes: int = BUCKET_BYTES) -> list[list[tuple[str, tuple, str]]]:
        """The groups a sync of `kind` sends, as (name, full shape, dtype) rows: what receivers
        allocate.  Kinds: full (every parameter; no LoRA), merged (W0 + BA as HF weights), base
        (the frozen base, dequantized), adapter (PEFT's adapter tensors), base+adapter."""
        if kind == "full":
            params, buckets = self._buckets(bucket_bytes)
            return [[(n, self._full_shape(params[n]), dtype_name(params[n].dtype)) for n in b] for b in buckets]
        groups = []
        if kind != "adapter":
            groups += [[(n, s, dtype_name(d)) for n, s, d in g]
                       for g in lora.merged_layout(self.module, self._dtype, with_adapter=kind == "merged")]
        if kind in ("adapter", "base+adapter"):
            params = dict(self.module.named_parameters())
            groups.append([(lora.saved_name(n), self._full_shape(params[n]), dtype_name(params[n].dtype))
                           for n in lora.adapter_names(self.module)])
        return groups

    @property
    def _dtype(self) -> torch.dtype:
        from rlengine.modeling import DTYPES

        return DTYPES[self.cfg.model.dtype]

    def _sync_groups(self, kind: str, bucket_bytes: int = BUCKET_BYTES):
        """The tensors of sync_layout(kind), group by group (collective under ZeRO-3; valid only
        inside the iteration, on rank 0)."""
        if kind == "full":
            yield from self._full_buckets(bucket_bytes)
            return
        if kind != "adapter":
            yield from lora.merged_tensors(self.module, self._dtype, kind == "merged", self._gathered)
        if kind in ("adapter", "base+adapter"):
            params = dict(self.module.named_parameters())
            names = lora.adapter_names(self.module)
            with self._gathered([params[n] for n in names]):
                yield [(lora.saved_name(n), params[n]) for n in names]

    def adapter_config(self) -> dict:
        """adapter_config.json of this trainer's adapter (what vLLM's LoRA loader reads)."""
        return lora.adapter_config(self.module)

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
    def export_weights(self, methods: list[str], bucket_bytes: int = BUCKET_BYTES, kind: str = "full") -> dict | None:
        """Send sync_layout(kind)'s tensors through every transport in `methods` (collective: all
        ranks gather, rank 0 sends).  Rank 0 returns what receivers need (shared-memory handle,
        Ray object buckets, IPC handles) and the checksums of what it sent; other ranks None."""
        if self.rank == 0:
            layout = [(n, s, getattr(torch, d)) for g in self.sync_layout(kind, bucket_bytes) for n, s, d in g]
            self.sender.begin(layout, set(methods))
        try:
            for named in self._sync_groups(kind, bucket_bytes):
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

    @torch.no_grad()
    def save_hf(self, path: str, tokenizer_path: str) -> str | None:
        """Export a Hugging Face checkpoint (collective; rank 0 writes).  With LoRA: the merged
        model (W0 + BA), and the adapter in PEFT's format under `adapter/`."""
        state, adapter = {}, {}
        for named in self._sync_groups("merged" if self.plan.lora else "full"):
            if self.rank == 0:
                state.update((n, t.detach().to("cpu", copy=True).contiguous()) for n, t in named)
        if self.plan.lora:
            for named in self._sync_groups("adapter"):
                if self.rank == 0:
                    adapter.update((n, t.detach().to("cpu", copy=True).contiguous()) for n, t in named)
        if self.rank != 0:
            return None
        from transformers import AutoTokenizer

        tmp = path.rstrip("/") + ".tmp"
        if self.plan.lora:
            lora.write_merged(tmp, state, lora.inner_model(self.module))
            lora.write_adapter(os.path.join(tmp, "adapter"), adapter, self.adapter_config())
        else:
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
        # With LoRA the frozen base is not saved: it is rebuilt from model.path (and re-quantized) on resume.
        self.engine.save_checkpoint(path, tag=tag, client_state={"optimizer_steps": self.optimizer_steps},
                                    exclude_frozen_parameters=self.plan.lora)
        torch.save({"rng": capture_rng(), "optimizer_steps": self.optimizer_steps},
                   os.path.join(path, tag, f"rank_state_{self.rank}.pt"))
        if self.rank == 0:
            lora.hf_config(self.module).save_pretrained(os.path.join(path, "model_config"))
            if self.plan.lora:
                with open(os.path.join(path, "model_config", "adapter_config.json"), "w") as f:
                    json.dump(self.adapter_config(), f, indent=2)

    def load_checkpoint(self, path: str, tag: str) -> int:
        """Restore what save_checkpoint wrote (collective); returns the optimizer step count."""
        loaded, _ = self.engine.load_checkpoint(path, tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True, load_module_strict=not self.plan.lora)
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

    # Hybrid colocation, trainer.offload_during_rollout: the policy's states leave the GPU while
    # the colocated vLLM engines generate (the controller calls these two around the rollout).

    def _offload_stage(self) -> int | None:
        """The ZeRO stage whose states move (None: no offload).  Only the policy trainer, on a GPU,
        with sleeping engines; on CPU the states already live in host memory."""
        t, on_gpu = self.cfg.trainer, self.cfg.resources.device == "cuda"
        use = t.offload_during_rollout and self.plan.sleep_level > 0 and self.hosts_reference and on_gpu
        return self.plan.zero_stage if use else None

    def _check_offload(self) -> None:
        self._offloaded, self._offload_logged = False, False
        stage, t = self._offload_stage(), self.cfg.trainer
        if stage is None:
            return
        if stage == 0 or t.offload_params or not hasattr(self.engine.optimizer, "offload_states"):
            from rlengine.errors import ConfigError

            raise ConfigError("trainer.offload_during_rollout", "DeepSpeed moves a ZeRO optimizer's states "
                              f"(stage 1-3, without offload_params); this run has ZeRO stage {stage}"
                              f"{' with offload_params' if t.offload_params else ''}")

    def offload_states(self) -> None:
        """Move this rank's DeepSpeed states (parameters, gradients, optimizer) to host memory."""
        if self._offload_stage() is None:
            if self.cfg.trainer.offload_during_rollout and not self._offload_logged:
                self._offload_logged = True
                log.warning("trainer offload skipped: rank %d: trainer.offload_during_rollout needs "
                            "resources.device=cuda (on CPU the states already live in host memory)", self.rank)
            return
        from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as S

        include = None
        if self.plan.zero_stage == 3 and type(self.optimizer.optimizer).__name__ != "FusedAdam":
            # ZeRO-3 moves Adam states and fp32 master weights only for its FusedAdam.
            include = [S.lp_params, S.lp_grads, S.contiguous_grad_buffer]
            if not self._offload_logged:
                self._offload_logged = True
                log.warning("trainer rank %d: the optimizer states stay on the GPU during rollout (ZeRO-3 "
                            "offloads them only for DeepSpeed's FusedAdam)", self.rank)
        self.engine.offload_states(include=include)
        self._offloaded = True

    def reload_states(self) -> None:
        """Bring back what offload_states moved (before the trainer's next pass)."""
        if self._offloaded:
            self.engine.reload_states()
            self._offloaded = False


def _fused_adam(params: list, kw: dict):
    """DeepSpeed's FusedAdam in AdamW mode (the same update as torch's AdamW), the optimizer whose
    states ZeRO-3 can offload; None where its CUDA kernel cannot be built here."""
    try:
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(params, adam_w_mode=True, **kw)
    except Exception as e:  # noqa: BLE001 - the JIT build fails in many ways (no nvcc, headers)
        log.warning("DeepSpeed's FusedAdam is unavailable (%s: %s): torch AdamW is used, and its states stay "
                    "on the GPU during rollout", type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return None
