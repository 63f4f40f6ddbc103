"""The schema every recipe is checked against.

Recipes (YAML in recipes/) are composed by Hydra over `RootConfig`; OmegaConf
rejects unknown keys and wrong types while composing.  `plan.validate` then
checks the combinations a type system cannot express and returns a `Plan`:
every derived value lives there, so the frozen config is never mutated.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


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
class LoraConfig(_Frozen):
    """Low-rank adapters (PEFT): W = W0 + (alpha/r)·B·A on the target modules, W0 frozen.

    r = 0 trains every weight.  With r > 0 only the adapters (and a reward model's or critic's
    head, which is new and so trained in full) are in the optimizer; the reference is the model
    with its adapter disabled (no second copy of the weights).
    """

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    # Module names (a list, or one name) or "all-linear": every linear layer but the output head.
    target_modules: Any = "all-linear"
    use_rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023)
    use_dora: bool = False  # weight-decomposed LoRA (Liu et al. 2024); vLLM cannot serve it: merged sync
    # PEFT's init_lora_weights: default (A Kaiming-uniform, B zero), gaussian, pissa, olora, ...
    init: str = "default"


@dataclass
class ModelConfig(_Frozen):
    # Hub name, local directory, or `tiny:base` / `tiny:sft` (built by rlengine/tiny.py).
    path: str = "tiny:sft"
    tokenizer_path: Optional[str] = None  # defaults to model.path
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    # QLoRA: the frozen base quantized by bitsandbytes (needs model.lora.r > 0): nf4 | fp4 | int8.
    quantization: Optional[str] = None
    double_quant: bool = True  # quantize the 4-bit quantization constants too (QLoRA's double quantization)
    compute_dtype: Optional[str] = None  # the dtype 4-bit layers compute in; null: model.dtype


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
    max_train_rows: Optional[int] = None  # the first N training rows only (a data budget; null: all)
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
    # With model.lora: adapter (only the adapter travels, served by vLLM's LoRA path; the base is
    # pushed once, so a quantized base reaches the engine dequantized) | merged (W0 + BA pushed as
    # full weights: for adapters vLLM cannot serve, e.g. DoRA, chosen automatically then).
    lora_sync: str = "adapter"
    # With resources.colocate: vLLM sleeps while the trainer runs. 1: weights offloaded to host
    # memory, KV cache freed; 2: weights discarded too (reloaded by the next sync); 0: never sleeps.
    # vLLM's CPU build has no sleep mode: the calls are made and skipped (logged once).
    sleep_level: int = 1


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
    # adamw (torch) | adamw_8bit | paged_adamw_8bit (bitsandbytes; paged needs CUDA)
    optimizer: str = "adamw"
    # Token budget of one micro-batch (rows x padded width) for every forward of this role: rows are
    # grouped by length and each micro-batch holds as many as fit.  null: micro_batch_size rows.
    max_tokens_per_micro_batch: Optional[int] = None
    # Response positions projected to the vocabulary at once by a log-prob/entropy pass (the
    # [chunk, V] logits are the pass's largest tensor: 0.3 GB fp32 at V = 151,936 and 512 tokens;
    # bench/results/logprob_memory.md).
    logits_chunk_tokens: int = 512
    # Gradient accumulation dtype of bf16/fp16 runs: float32 (DeepSpeed's data_types.grad_accum_dtype)
    # or null, which follows the model dtype.
    grad_accum_dtype: Optional[str] = "float32"
    # ZeRO-Offload (GPU only; a CPU run already holds everything in host memory).
    offload_optimizer: bool = False
    offload_params: bool = False  # ZeRO-3 only
    # Offload the optimizer states to host memory while colocated vLLM engines generate (GPU, ZeRO-3).
    offload_during_rollout: bool = False
    # null: on for multi-rank GPU runs, off on CPU (gloo gains nothing from overlapping).
    overlap_comm: Optional[bool] = None
    # ZeRO buckets and persistence (elements); null: sized from the model's hidden size h as
    # DeepSpeed/HF recommend (reduce and prefetch h*h and 0.9*h*h, persistence 10*h).
    reduce_bucket_size: Optional[int] = None
    stage3_prefetch_bucket_size: Optional[int] = None
    stage3_param_persistence_threshold: Optional[int] = None
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_max_reuse_distance: int = 1_000_000_000


@dataclass
class DPOConfig(_Frozen):
    # Reference log-probs of each pair are computed once, by the reference role, and cached for
    # later epochs over the data (the reference is frozen, so they never change).
    precompute_reference: bool = True
    max_length: int = 512  # prompt + response tokens per sequence; longer prompts lose their start


@dataclass
class TeacherConfig(_Frozen):
    """The frozen teacher of distillation (algorithm.name=distill | on_policy_distill): per response
    token, its top_k log-probs over the student's vocabulary (teacher and student must share it)."""

    path: Optional[str] = None  # a causal LM: hub name, local directory or tiny:teacher
    tokenizer_path: Optional[str] = None  # null: teacher.path
    # Teacher log-probs kept per token: the top_k most likely ids plus the mass of the rest (one
    # "tail" bucket; algos/distill.py).  0: the full vocabulary (small vocabularies only: it moves
    # V floats per token between actors).
    top_k: int = 64
    num_workers: int = 1
    dtype: Optional[str] = None  # null: model.dtype
    max_tokens_per_micro_batch: Optional[int] = None  # null: trainer.max_tokens_per_micro_batch


@dataclass
class DistillConfig(_Frozen):
    """Knowledge distillation (algos/distill.py).  distill: L = alpha * CE(y, student) +
    (1 - alpha) * T^2 * D(teacher_T, student_T) on data rows; on_policy_distill: D on the
    student's own samples (GKD with lambda = 1), plus reward_coef times a GRPO term."""

    alpha: float = 0.5  # weight of the hard-label cross-entropy (offline distill only)
    temperature: float = 1.0  # T: both distributions softened by it; the divergence scaled by T^2
    divergence: str = "forward_kl"  # a name registered with algos.distill.register_divergence
    beta: float = 0.5  # jsd: mixture M = beta * teacher + (1 - beta) * student (TRL GKD's beta), in (0, 1)
    # on_policy_distill: weight of a policy-gradient term on the reward functions' scores
    # (group-normalised over algorithm.group_size samples per prompt, as GRPO); 0: pure distillation.
    reward_coef: float = 0.0


@dataclass
class SampleConfig(_Frozen):
    """Best-of-K rejection sampling (algorithm.name=best_of_n): K samples per prompt, scored by the
    reward functions (and reward_model.path when set), filtered, written as SFT and preference data."""

    k: int = 16  # samples per prompt
    top_n: int = 1  # kept per prompt, best first
    min_score: Optional[float] = None  # keep only samples scoring at least this
    dedup: bool = True  # identical responses to one prompt count once
    max_response_tokens: Optional[int] = None  # longer samples are dropped (length cap)
    # Samples cut at rollout.max_new_tokens (no end-of-sequence token) are dropped: as SFT targets
    # they would teach the model to stop mid-answer.
    keep_unfinished: bool = False
    # The stage makes one pass over data.train_path in file order, data.prompts_per_step prompts a
    # step (the last step may have fewer): ceil(rows / prompts_per_step) steps; trainer.total_steps
    # is not read.  max_prompts: only the first this many rows (null: every row).
    max_prompts: Optional[int] = None
    # Also write preference pairs (the best kept sample vs the worst sample) when the scores
    # differ by at least pair_margin.
    pairs: bool = True
    pair_margin: float = 0.5
    output_dir: Optional[str] = None  # null: <run_dir>/data


@dataclass
class ReferenceConfig(_Frozen):
    num_workers: int = 1  # actors of the separate reference role
    # separate: a role of its own (num_workers actors, each holding the whole frozen model, on
    # resources.gpus_per_reference). trainer: a frozen copy inside every trainer rank, partitioned
    # by the policy's ZeRO stage: no devices or actors of its own, at the cost of 1/world_size of
    # the model's weights per trainer rank under ZeRO-3 (all of them at stages 0-2).
    placement: str = "separate"  # separate | trainer
    max_tokens_per_micro_batch: Optional[int] = None  # null: trainer.max_tokens_per_micro_batch


@dataclass
class CriticConfig(_Frozen):
    """The value model (PPO): its own DeepSpeed trainer group, trainer.world_size ranks."""

    model_path: Optional[str] = None  # null: the policy's model.path, with a fresh value head
    lr: float = 1.0e-5
    max_tokens_per_micro_batch: Optional[int] = None  # null: trainer.max_tokens_per_micro_batch


@dataclass
class RewardModelConfig(_Frozen):
    """A learned reward model as a Ray actor; its score joins the reward functions with `weight`."""

    path: Optional[str] = None  # a sequence-classification checkpoint (1 label), or tiny:rm
    tokenizer_path: Optional[str] = None  # when it differs from the policy's, responses are re-tokenized
    weight: float = 1.0
    num_workers: int = 1
    max_length: int = 512
    max_tokens_per_micro_batch: Optional[int] = None  # null: trainer.max_tokens_per_micro_batch


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
    gpus_per_teacher: float = 0.0
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
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)


def to_dict(cfg: RootConfig) -> dict:
    return dataclasses.asdict(cfg)
