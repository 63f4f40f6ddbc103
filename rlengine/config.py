"""The schema every recipe is checked against, and the values derived from it.

Recipes (YAML in recipes/) are composed by Hydra over `RootConfig`; OmegaConf
rejects unknown keys and wrong types while composing.  `validate` then checks
the combinations a type system cannot express and returns a `Plan`: every
derived value lives there, so the frozen config is never mutated.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from rlengine.errors import ConfigError
from rlengine.stages import get_stage, stage_names

class _Frozen:
    """Config nodes are immutable once `freeze` has run (after validation).

    Not `dataclass(frozen=True)`: OmegaConf would make such nodes read-only while Hydra composes,
    which refuses the recipe's own values and command-line overrides of list items.
    """

    def __setattr__(self, name, value):
        if self.__dict__.get("_frozen"):
            raise dataclasses.FrozenInstanceError(f"cannot assign to {type(self).__name__}.{name}: "
                                                  "configs are immutable after validation")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if self.__dict__.get("_frozen"):
            raise dataclasses.FrozenInstanceError(f"cannot delete {type(self).__name__}.{name}")
        object.__delattr__(self, name)


def freeze(obj):
    """Recursively freeze a config tree (lists become tuples). Returns obj."""
    if isinstance(obj, _Frozen):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, list):
                value = tuple(freeze(v) for v in value)
            else:
                freeze(value)
            object.__setattr__(obj, f.name, value)
        object.__setattr__(obj, "_frozen", True)
    return obj


@dataclass
class ModelConfig(_Frozen):
    # Hub name, local directory, or `tiny:base` / `tiny:sft` (built by rlengine/tiny.py).
    path: str = "tiny:sft"
    tokenizer_path: Optional[str] = None  # defaults to model.path
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


@dataclass
class DataConfig(_Frozen):
    # jsonl / parquet path, a local HF dataset dir, a hub dataset name, or `tiny:train` / `tiny:test`.
    train_path: str = "tiny:train"
    test_path: str = "tiny:test"
    train_split: str = "train"
    test_split: str = "test"
    # The dataset's configuration (subset) for hub names and local HF datasets with several, e.g.
    # `main` for openai/gsm8k; null: the only one (or the default) there is.
    config_name: Optional[str] = None
    test_config_name: Optional[str] = None  # the held-out dataset's, when it differs; null: config_name
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    prompts_per_step: int = 16
    max_prompt_tokens: int = 64
    chat_template: bool = False
    system_prompt: Optional[str] = None
    shuffle: bool = True
    max_test_rows: Optional[int] = None
    # Preference data (algorithm.name=rm): rows {prompt, chosen, rejected}.
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    bad_rows: str = "error"  # error | skip: a preference or chat row that cannot be used
    # SFT rows (algorithm.name=sft, sft.format): conversations under messages_key (OpenAI
    # `messages`, or ShareGPT `conversations` with from/value), alpaca {instruction, input, output},
    # or {prompt_key, response_key}.
    messages_key: str = "messages"
    response_key: str = "response"


@dataclass
class AlgorithmConfig(_Frozen):
    # A stage (rlengine/stages: sft, rm, dpo, ppo, ...) or a registered advantage estimator (the
    # GRPO family: grpo, dr_grpo, rloo, reinforce_pp, ...).
    name: str = "grpo"
    # Modules or .py files imported first (driver and every actor): users' own stages, advantage
    # estimators and losses register themselves there.
    plugins: List[str] = field(default_factory=list)
    policy_loss: str = "clip"  # a name registered with algos.losses.register_policy_loss: clip | gspo
    group_size: int = 8
    ppo_epochs: int = 1
    minibatches: int = 1  # optimizer steps per ppo epoch
    clip_low: float = 0.2
    clip_high: float = 0.28  # clip-higher (DAPO); equal to clip_low for symmetric PPO-clip
    dual_clip: Optional[float] = None  # dual-clip constant c > 1, or null
    loss_agg: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in_reward: bool = False  # False: KL as a loss term (GRPO); True: per-token penalty in the reward
    entropy_coef: float = 0.0
    reuse_rollout_logprobs: bool = False  # use vLLM's sampling log-probs as the old log-probs
    # PPO (name=ppo): per-token rewards, GAE(gamma, lam) with the critic's values, whitened advantages.
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float = 0.2
    whiten_advantages: bool = True
    kl_ctl: str = "fixed"  # fixed | adaptive (Ziegler et al. 2019): the coefficient of KL in the reward
    kl_target: float = 0.02
    kl_horizon: float = 10000.0
    # DPO (name=dpo): a loss registered with algos.preference.register_preference_loss: sigmoid (DPO;
    # with label_smoothing > 0 the conservative/robust cDPO), ipo, hinge (SLiC), simpo (reference-free).
    dpo_loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5  # SimPO's target reward margin γ
    rpo_alpha: float = 0.0  # weight of an SFT (NLL) term on the chosen response (RPO, Pang et al. 2024)


@dataclass
class RolloutConfig(_Frozen):
    num_workers: int = 1
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    ignore_eos: bool = False
    max_model_len: int = 256
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on the CPU build
    # Intra-op threads of the vLLM engine on CPU. Ray starts actors with OMP_NUM_THREADS=1, which
    # alone made rollout 0.6x standalone vLLM on 2 cores (bench/results/REPORT.md).
    cpu_threads: int = 2
    # vLLM CPU thread binding (VLLM_CPU_OMP_THREADS_BIND), e.g. "0-1"; only read by vLLM's
    # multiprocess executor, not by the in-process engine rlengine runs.
    cpu_bind: Optional[str] = None
    enforce_eager: bool = True
    max_logprob_drift: float = 0.05  # mean |vLLM logp - trainer logp| above this fails the step
    # How new weights reach the engines (rlengine/weight_sync): auto picks per engine, shared memory
    # for one on trainer rank 0's node (3x the object store at 30M parameters), the process-group
    # broadcast (gloo on CPU, NCCL on GPU) for the others; shm | object_store | broadcast | cuda_ipc
    # (colocated GPUs) apply to every engine.
    sync_method: str = "auto"
    # A sync member that does not join, or a transfer that does not finish, fails within this.
    sync_timeout_s: float = 300.0


@dataclass
class TrainerConfig(_Frozen):
    world_size: int = 1
    total_steps: int = 100
    lr: float = 1.0e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine
    max_grad_norm: float = 1.0
    micro_batch_size: int = 64  # sequences per forward/backward per rank
    zero_stage: int = 3
    cpu_threads: int = 2
    # torch.compile the model's forward (inductor; on CPU it needs a C++ compiler).  Fuses the
    # norm/rotary/activation kernels: ~10% off a CPU update at 30M parameters (bench/).  The first
    # step pays the compile (~15-60 s).  Natural-length work compiles dynamic-shape graphs on its
    # first step: two on CPU (inductor splits at micro-batch rows x width > 4096), none after.
    compile: bool = False


@dataclass
class DPOConfig(_Frozen):
    # Reference log-probs of each pair are computed once, by the reference role, and cached for
    # later epochs over the data (the reference is frozen, so they never change).
    precompute_reference: bool = True
    max_length: int = 512  # prompt + response tokens per sequence; longer prompts lose their start


@dataclass
class ReferenceConfig(_Frozen):
    num_workers: int = 1  # actors of the separate reference role
    # separate: a role of its own (num_workers actors, each holding the whole frozen model, on
    # resources.gpus_per_reference). trainer: a frozen copy inside every trainer rank, partitioned
    # by the policy's ZeRO stage: no devices or actors of its own, at the cost of 1/world_size of
    # the model's weights per trainer rank under ZeRO-3 (all of them at stages 0-2).
    placement: str = "separate"  # separate | trainer


@dataclass
class CriticConfig(_Frozen):
    """The value model (PPO): its own DeepSpeed trainer group, trainer.world_size ranks."""

    model_path: Optional[str] = None  # null: the policy's model.path, with a fresh value head
    lr: float = 1.0e-5


@dataclass
class RewardModelConfig(_Frozen):
    """A learned reward model as a Ray actor; its score joins the reward functions with `weight`."""

    path: Optional[str] = None  # a sequence-classification checkpoint (1 label), or tiny:rm
    tokenizer_path: Optional[str] = None  # when it differs from the policy's, responses are re-tokenized
    weight: float = 1.0
    num_workers: int = 1
    max_length: int = 512


@dataclass
class RewardFnConfig(_Frozen):
    fn: str = "reward_fns/math.py:compute_score"
    weight: float = 1.0
    kwargs: Dict[str, Any] = field(default_factory=dict)
    batched: bool = False  # fn(prompts, responses, ground_truths, extras, **kwargs) -> list


@dataclass
class RewardConfig(_Frozen):
    fns: List[RewardFnConfig] = field(default_factory=lambda: [RewardFnConfig()])
    num_workers: int = 1  # processes in the scoring pool
    timeout_s: float = 10.0  # per call (per batch for batched functions)
    error_score: float = 0.0


@dataclass
class EvalSetConfig(_Frozen):
    """A further held-out set of {data.prompt_key, data.answer_key} rows, generated greedily and
    scored like data.test_path; reported as eval/<name>/accuracy."""

    name: str = "heldout"
    path: str = ""
    split: str = "test"
    config_name: Optional[str] = None
    prompt_key: Optional[str] = None  # null: data.prompt_key
    answer_key: Optional[str] = None  # null: data.answer_key
    fn: Optional[str] = None  # null: eval.fn
    threshold: Optional[float] = None  # null: eval.threshold
    max_rows: Optional[int] = None


@dataclass
class EvalConfig(_Frozen):
    before: bool = True
    after: bool = True
    every_steps: int = 0  # 0: only before/after
    max_new_tokens: Optional[int] = None  # defaults to rollout.max_new_tokens
    # The held-out check, declared apart from the reward being optimised: a verifier
    # ('path/to/file.py:function' or 'package.module.function', called like a reward function) whose
    # score >= threshold counts as correct.  null: the task's verifier, reward.fns[0].fn.
    fn: Optional[str] = None
    threshold: float = 1.0
    sets: List[EvalSetConfig] = field(default_factory=list)


@dataclass
class CheckpointConfig(_Frozen):
    every_steps: int = 0  # 0: only the final checkpoint
    keep_last: int = 2
    save_hf: bool = True
    export_hf_to: Optional[str] = None  # also copy the final HF checkpoint here


@dataclass
class FaultConfig(_Frozen):
    # Ray restarts a dead rollout / reference / reward-model actor up to this many times over the
    # run; the step's work is then redone (rollout workers first get the current weights).
    max_restarts: int = 3
    restart_timeout_s: float = 600.0  # waiting for a restarted actor to come back


@dataclass
class TrackingConfig(_Frozen):
    project: str = "rlengine"
    experiment: Optional[str] = None
    wandb: bool = False
    wandb_mode: str = "offline"  # offline | online
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class ResourcesConfig(_Frozen):
    device: str = "cpu"  # cpu | cuda
    gpus_per_trainer: float = 0.0
    gpus_per_rollout: float = 0.0
    gpus_per_reference: float = 0.0
    # Ray CPU units reserved per actor.  Fractions let the whole topology share a 2-core laptop:
    # the phases of a step run one after another, so the actors do not compete for cores, except
    # PPO's policy and critic updates, which run at once: their cpu_threads should add up to the
    # cores (recipes/ppo_tiny.yaml).
    cpus_per_actor: float = 0.25
    # Nodes each role spreads over (default 1: the role's actors are STRICT_PACKed on one node).
    role_nodes: Dict[str, int] = field(default_factory=dict)
    # Extra Ray resources per role's actor, e.g. {trainer: {node_a: 0.1}} to pin a role to nodes
    # that advertise that custom resource.
    role_resources: Dict[str, Dict[str, float]] = field(default_factory=dict)
    # Trainer and rollout share their bundles (devices): rollout worker i sits in trainer rank i's
    # bundle and each takes half of it (the engine keeps its memory while the trainer runs: size
    # rollout.gpu_memory_utilization to leave the trainer room).
    colocate: bool = False


@dataclass
class RayConfig(_Frozen):
    address: Optional[str] = None  # null: start a local cluster; "auto": join the running one
    num_cpus: Optional[int] = None


@dataclass
class SFTConfig(_Frozen):
    # Used by algorithm.name=sft: supervised targets are data.answer_key completions.
    eval_every_steps: int = 0
    stop_at_accuracy: Optional[float] = None
    # auto: per row, conversations / alpaca / prompt+response rendered with the tokenizer's chat
    # template (loss on assistant tokens only); completion: data.prompt_key + its `completion`
    # (or " " + data.answer_key), no template: the tiny arithmetic warm start.
    format: str = "auto"  # auto | chat | completion
    max_length: int = 512  # tokens per rendered row; longer rows are cut (counted in sft/truncated_frac)
    packing: bool = False  # pack short rows into sequences of max_length, attention kept within each row


@dataclass
class RootConfig(_Frozen):
    recipe: str = "grpo_tiny"
    seed: int = 1
    run_dir: Optional[str] = None  # default: outputs/<recipe>/<timestamp>
    # auto: continue from the newest complete checkpoint of run_dir (without run_dir: of the newest
    # unfinished run of this recipe with the same config); never: start fresh; PATH: that
    # checkpoint (or run directory).
    resume: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)


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


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {list(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


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
    if not cfg.resume:
        raise ConfigError("resume", "must be auto, never, or the path of a checkpoint or run directory")
    if not 0 < r.top_p <= 1:
        raise ConfigError("rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    if a.dual_clip is not None and a.dual_clip <= 1:
        raise ConfigError("algorithm.dual_clip", f"the dual-clip constant must be > 1, got {a.dual_clip}")
    if a.policy_loss == "gspo" and a.dual_clip is not None:
        raise ConfigError("algorithm.dual_clip", "policy_loss=gspo clips a sequence-level ratio: dual clip does not apply")
    from rlengine.algos.losses import POLICY_LOSSES

    _choice("algorithm.policy_loss", a.policy_loss, tuple(POLICY_LOSSES))
    if cfg.resources.device == "cpu" and cfg.model.dtype == "float16":
        raise ConfigError("model.dtype", "float16 is not supported on CPU; use float32 or bfloat16")
    if cfg.resources.device == "cuda" and cfg.resources.gpus_per_trainer <= 0:
        raise ConfigError("resources.gpus_per_trainer", "resources.device=cuda needs gpus_per_trainer > 0")
    roles = {"trainer", "rollout", "reference", "critic", "reward_model"}
    for key, table in (("resources.role_nodes", cfg.resources.role_nodes),
                       ("resources.role_resources", cfg.resources.role_resources)):
        for role in table:
            if role not in roles:
                raise ConfigError(f"{key}.{role}", f"unknown role; roles are {sorted(roles)}")
    if cfg.resources.colocate and r.num_workers > t.world_size:
        raise ConfigError("resources.colocate", f"colocating {r.num_workers} rollout workers needs as many trainer "
                                                f"ranks (trainer.world_size={t.world_size})")
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
    if samples % a.minibatches:
        raise ConfigError("algorithm.minibatches",
                          f"{samples} samples per step do not split into {a.minibatches} minibatches")
    minibatch = samples // a.minibatches
    if minibatch % t.world_size:
        raise ConfigError("trainer.world_size",
                          f"a minibatch of {minibatch} samples does not split over {t.world_size} ranks")
    per_rank = minibatch // t.world_size
    if stage.sequences_per_row(cfg) == 2 and not stage.online and (per_rank % 2 or min(t.micro_batch_size, per_rank) % 2):
        raise ConfigError("trainer.micro_batch_size", "preference pairs train as two rows: rows per rank "
                          f"({per_rank}) and trainer.micro_batch_size must be even")
    micro = min(t.micro_batch_size, per_rank)
    if per_rank % micro:
        raise ConfigError("trainer.micro_batch_size",
                          f"{per_rank} samples per rank per minibatch is not a multiple of {micro}")
    use_reference = uses.reference
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
        eval_max_new_tokens=cfg.eval.max_new_tokens or r.max_new_tokens,
        dtype=cfg.model.dtype,
        zero_stage=2 if t.zero_stage == 3 and t.world_size == 1 else t.zero_stage,
        reference_in_trainer=use_reference and cfg.reference.placement == "trainer",
        **fields,
    )


def to_dict(cfg: RootConfig) -> dict:
    return dataclasses.asdict(cfg)
