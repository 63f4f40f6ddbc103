"""The values derived from a validated config (`Plan`) and the checks that derive them (`validate`):
the cross-field rules a type system cannot express, and each stage's own (rlengine/stages)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from rlengine.config import RootConfig
from rlengine.errors import ConfigError
from rlengine.stages import get_stage, stage_names


@dataclass(frozen=True)
class Plan:
    """Values derived from a validated config; computed once, never written back."""

    samples_per_step: int  # prompts_per_step * the stage's sequences per row (group_size, 2 for pairs)
    minibatch_size: int  # samples per optimizer step
    micro_batches_per_minibatch: int  # per rank (DeepSpeed gradient accumulation steps)
    micro_batch_size: int  # per rank
    use_rollout: bool  # vLLM engines: the stage samples, or generates to evaluate
    use_reference: bool  # reference log-probs are computed (KL, or DPO's reference)
    use_critic: bool
    use_reward_model: bool
    advantage: Optional[str]
    eval_max_new_tokens: int
    dtype: str
    # One optimizer step on fresh samples (ppo_epochs = minibatches = 1): the old log-probs are the
    # update's own forward pass (ratio 1), so the separate old-log-prob pass is skipped and the
    # trainer reports the vLLM-vs-trainer drift from that pass.
    old_logp_in_update: bool = False
    # The ZeRO stage DeepSpeed runs.  One rank has nothing to partition: stage 3's per-module
    # gather hooks then only cost time (~10% of a CPU update, bench/), so it runs stage 2, which
    # keeps the same sharded checkpoint format and optimizer.
    zero_stage: int = 3
    # The reference log-probs come from the trainer ranks (reference.placement=trainer), not from
    # a reference role; False whenever use_reference is.
    reference_in_trainer: bool = False
    # Intra-op threads of the policy and critic updates, which run at the same time (PPO on CPU):
    # half of trainer.cpu_threads each, so together they use what one role uses alone.  At 2 + 2
    # threads on 2 cores, libgomp's spinning barriers waited on descheduled partners and the update
    # took 4.5-6.0 s a step instead of ~1 s (ppo_tiny, AMD EPYC).  None: the role's own setting.
    update_threads: Optional[int] = None
    # model.lora.r > 0: adapters train, the reference is the policy with its adapter disabled
    # (reference_in_trainer, no reference role), and the engines get `lora_sync`'s tensors:
    # "adapter" (vLLM's LoRA path) or "merged" (full weights); None without LoRA.
    lora: bool = False
    lora_sync: Optional[str] = None
    # The stage trains (Stage.trains): a trainer role of trainer.world_size ranks.  False (sampling
    # stages): no trainer, no weight sync; the micro-batch fields then size the scoring roles only.
    use_trainer: bool = True
    # A teacher role scores tokens (distillation): teacher.num_workers actors on resources.gpus_per_teacher.
    use_teacher: bool = False
    # vLLM's sleep level between rollouts (rollout.sleep_level when colocated with the trainer, else 0).
    sleep_level: int = 0


def token_budget(cfg: RootConfig, role: str) -> Optional[int]:
    """The token budget (rows x padded width) of one micro-batch of `role`'s forwards: its own
    max_tokens_per_micro_batch, else the trainer's; None: trainer.micro_batch_size rows.
    Roles: trainer (the policy and any trainer built on it), reference, critic, reward_model, teacher."""
    own = None if role == "trainer" else getattr(cfg, role).max_tokens_per_micro_batch
    return own if own is not None else cfg.trainer.max_tokens_per_micro_batch


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {list(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_memory_keys(cfg: RootConfig) -> None:
    t = cfg.trainer
    for key, value in (("trainer.max_tokens_per_micro_batch", t.max_tokens_per_micro_batch),
                       ("reference.max_tokens_per_micro_batch", cfg.reference.max_tokens_per_micro_batch),
                       ("critic.max_tokens_per_micro_batch", cfg.critic.max_tokens_per_micro_batch),
                       ("reward_model.max_tokens_per_micro_batch", cfg.reward_model.max_tokens_per_micro_batch),
                       ("trainer.reduce_bucket_size", t.reduce_bucket_size),
                       ("trainer.stage3_prefetch_bucket_size", t.stage3_prefetch_bucket_size)):
        if value is not None:
            _positive(key, value)
    if t.stage3_param_persistence_threshold is not None:
        _positive("trainer.stage3_param_persistence_threshold", t.stage3_param_persistence_threshold, allow_zero=True)
    _positive("trainer.logits_chunk_tokens", t.logits_chunk_tokens)
    _positive("trainer.stage3_max_live_parameters", t.stage3_max_live_parameters)
    _positive("trainer.stage3_max_reuse_distance", t.stage3_max_reuse_distance, allow_zero=True)
    _choice("trainer.grad_accum_dtype", t.grad_accum_dtype, (None, "float32", "bfloat16", "float16"))
    _choice("rollout.sleep_level", cfg.rollout.sleep_level, (0, 1, 2))
    _choice("model.attn_implementation", cfg.model.attn_implementation,
            ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"))
    if t.offload_params and t.zero_stage != 3:
        raise ConfigError("trainer.offload_params",
                          f"parameter offload is ZeRO-3's (trainer.zero_stage={t.zero_stage})")
    if (t.offload_optimizer or t.offload_params) and t.zero_stage == 0:
        raise ConfigError("trainer.offload_optimizer", "ZeRO-Offload needs trainer.zero_stage >= 1")


def _batch_sizes(cfg: RootConfig, stage, samples: int) -> tuple[int, int, int]:
    """(samples per minibatch, per rank per minibatch, per micro-batch), checked to split evenly.
    A stage that does not train takes no optimizer steps: one minibatch of every sample, and
    micro-batches (of the reward model's forwards) of trainer.micro_batch_size rows."""
    a, t = cfg.algorithm, cfg.trainer
    if not stage.trains:
        return samples, samples, min(t.micro_batch_size, samples)
    if samples % a.minibatches:
        raise ConfigError("algorithm.minibatches",
                          f"{samples} samples per step do not split into {a.minibatches} minibatches")
    minibatch = samples // a.minibatches
    if minibatch % t.world_size:
        raise ConfigError("trainer.world_size",
                          f"a minibatch of {minibatch} samples does not split over {t.world_size} ranks")
    per_rank = minibatch // t.world_size
    pairs = stage.sequences_per_row(cfg) == 2 and not stage.online  # micro-batches must keep pairs whole
    if pairs and (per_rank % 2 or min(t.micro_batch_size, per_rank) % 2):
        raise ConfigError("trainer.micro_batch_size", "preference pairs train as two rows: rows per rank "
                          f"({per_rank}) and trainer.micro_batch_size must be even")
    micro = min(t.micro_batch_size, per_rank)
    if per_rank % micro:
        raise ConfigError("trainer.micro_batch_size",
                          f"{per_rank} samples per rank per minibatch is not a multiple of {micro}")
    return minibatch, per_rank, micro


def validate(cfg: RootConfig) -> Plan:
    """Check cross-field rules; raise ConfigError naming the key. Returns the derived Plan."""
    a, t, r, d = cfg.algorithm, cfg.trainer, cfg.rollout, cfg.data
    from rlengine.stages import load_plugins

    try:
        load_plugins(a.plugins)
    except (ImportError, OSError, SyntaxError) as e:
        raise ConfigError("algorithm.plugins", f"{type(e).__name__}: {e}") from None
    _choice("algorithm.name", a.name, tuple(stage_names()))
    stage = get_stage(a.name)
    uses = stage.uses(cfg)
    _choice("model.dtype", cfg.model.dtype, ("float32", "bfloat16", "float16"))
    _choice("algorithm.loss_agg", a.loss_agg,
            ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"))
    _choice("algorithm.kl_estimator", a.kl_estimator, ("k1", "k2", "k3"))
    _choice("resources.device", cfg.resources.device, ("cpu", "cuda"))
    _choice("trainer.zero_stage", t.zero_stage, (0, 1, 2, 3))
    _choice("trainer.lr_schedule", t.lr_schedule, ("constant", "cosine"))
    _choice("tracking.wandb_mode", cfg.tracking.wandb_mode, ("offline", "online"))
    _choice("algorithm.kl_ctl", a.kl_ctl, ("fixed", "adaptive"))
    _choice("data.bad_rows", d.bad_rows, ("error", "skip"))
    _choice("reference.placement", cfg.reference.placement, ("separate", "trainer"))
    _choice("rollout.sync_method", r.sync_method, ("auto", "shm", "object_store", "broadcast", "cuda_ipc"))
    if r.sync_method == "cuda_ipc" and not (cfg.resources.device == "cuda" and cfg.resources.colocate):
        raise ConfigError("rollout.sync_method", "cuda_ipc shares GPU memory between colocated processes: it needs "
                                                 "resources.device=cuda and resources.colocate=true")
    _positive("rollout.sync_timeout_s", r.sync_timeout_s)
    _positive("rollout.tensor_parallel_size", r.tensor_parallel_size)
    if not uses.critic and cfg.critic.model_path is not None:
        raise ConfigError("critic.model_path", f"algorithm.name={a.name} does not use a critic (only ppo does)")
    if not uses.teacher and cfg.teacher.path is not None:
        raise ConfigError("teacher.path", f"algorithm.name={a.name} has no teacher (distill and on_policy_distill do)")
    if not stage.scores_samples and cfg.reward_model.path is not None:
        raise ConfigError("reward_model.path", f"algorithm.name={a.name} does not score samples with a reward model")
    if not 0 <= a.lam <= 1 or not 0 <= a.gamma <= 1:
        raise ConfigError("algorithm.lam" if not 0 <= a.lam <= 1 else "algorithm.gamma", "must be in [0, 1]")
    for key, value in (("trainer.world_size", t.world_size), ("trainer.total_steps", t.total_steps),
                       ("trainer.lr", t.lr), ("trainer.micro_batch_size", t.micro_batch_size),
                       ("data.prompts_per_step", d.prompts_per_step), ("rollout.max_new_tokens", r.max_new_tokens),
                       ("rollout.num_workers", r.num_workers), ("algorithm.ppo_epochs", a.ppo_epochs),
                       ("algorithm.minibatches", a.minibatches), ("algorithm.group_size", a.group_size)):
        _positive(key, value)
    for key, value in (("rollout.temperature", r.temperature), ("algorithm.kl_coef", a.kl_coef),
                       ("checkpoint.every_steps", cfg.checkpoint.every_steps),
                       ("trainer.warmup_steps", t.warmup_steps), ("fault.max_restarts", cfg.fault.max_restarts),
                       ("checkpoint.keep_last", cfg.checkpoint.keep_last)):
        _positive(key, value, allow_zero=True)
    for key, value in (("data.max_train_rows", d.max_train_rows), ("data.max_test_rows", d.max_test_rows)):
        if value is not None:
            _positive(key, value)
    if not cfg.resume:
        raise ConfigError("resume", "must be auto, never, or the path of a checkpoint or run directory")
    if not 0 < r.top_p <= 1:
        raise ConfigError("rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    if a.dual_clip is not None and a.dual_clip <= 1:
        raise ConfigError("algorithm.dual_clip", f"the dual-clip constant must be > 1, got {a.dual_clip}")
    if a.policy_loss == "gspo" and a.dual_clip is not None:
        raise ConfigError("algorithm.dual_clip",
                          "policy_loss=gspo clips a sequence-level ratio: dual clip does not apply")
    from rlengine.algos.losses import POLICY_LOSSES

    _choice("algorithm.policy_loss", a.policy_loss, tuple(POLICY_LOSSES))
    if cfg.resources.device == "cpu" and cfg.model.dtype == "float16":
        raise ConfigError("model.dtype", "float16 is not supported on CPU; use float32 or bfloat16")
    if cfg.resources.device == "cuda" and cfg.resources.gpus_per_trainer <= 0 and stage.trains:
        raise ConfigError("resources.gpus_per_trainer", "resources.device=cuda needs gpus_per_trainer > 0")
    roles = {"trainer", "rollout", "reference", "critic", "reward_model", "teacher"}
    for key, table in (("resources.role_nodes", cfg.resources.role_nodes),
                       ("resources.role_resources", cfg.resources.role_resources)):
        for role in table:
            if role not in roles:
                raise ConfigError(f"{key}.{role}", f"unknown role; roles are {sorted(roles)}")
    if cfg.resources.colocate and r.num_workers > t.world_size:
        raise ConfigError("resources.colocate", f"colocating {r.num_workers} rollout workers needs as many trainer "
                                                f"ranks (trainer.world_size={t.world_size})")
    _check_memory_keys(cfg)
    from rlengine import lora

    lora.check_config(cfg)
    stage.check(cfg)
    generates = stage.headline[0] == "eval/accuracy" and (cfg.eval.before or cfg.eval.after)
    if generates and cfg.eval.fn is None and not cfg.reward.fns:
        raise ConfigError("eval.fn", "no reward function to borrow as the held-out check: set eval.fn")
    for i, es in enumerate(cfg.eval.sets):
        if not es.path:
            raise ConfigError(f"eval.sets[{i}].path", "an evaluation set needs a path")
        if es.fn is None and cfg.eval.fn is None and not cfg.reward.fns:
            raise ConfigError(f"eval.sets[{i}].fn", "no verifier: set eval.sets[i].fn or eval.fn")
    for i, fn in enumerate(cfg.reward.fns):
        if ":" not in fn.fn and "." not in fn.fn:
            raise ConfigError(f"reward.fns[{i}].fn",
                              f"{fn.fn!r} is neither 'path/to/file.py:function' nor 'package.module.function'")

    samples = d.prompts_per_step * stage.sequences_per_row(cfg)
    minibatch, per_rank, micro = _batch_sizes(cfg, stage, samples)
    use_reference = uses.reference
    use_lora = lora.enabled(cfg.model)
    fields = {"advantage": None, "old_logp_in_update": False, "update_threads": None, **stage.plan(cfg)}
    return Plan(
        samples_per_step=samples,
        minibatch_size=minibatch,
        micro_batches_per_minibatch=per_rank // micro,
        micro_batch_size=micro,
        use_rollout=uses.rollout,
        use_reference=use_reference,
        use_critic=uses.critic,
        use_reward_model=uses.reward_model,
        use_teacher=uses.teacher,
        eval_max_new_tokens=cfg.eval.max_new_tokens or r.max_new_tokens,
        dtype=cfg.model.dtype,
        zero_stage=2 if t.zero_stage == 3 and t.world_size == 1 else t.zero_stage,
        reference_in_trainer=use_reference and (cfg.reference.placement == "trainer" or use_lora),
        lora=use_lora,
        lora_sync=lora.sync_mode(cfg),
        sleep_level=r.sleep_level if cfg.resources.colocate and uses.rollout else 0,
        use_trainer=stage.trains,
        **fields,
    )


if __name__ == "__main__":
    from rlengine.memory import main

    main()
