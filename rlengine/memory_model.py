"""The memory planner's arithmetic: bytes per role from a model's shape and a `Scenario` (no torch,
no config objects; rlengine/memory.py builds the Scenario from a recipe and prints the plan).

Every figure is per process (one trainer rank, one vLLM engine rank, ...), in bytes, by kind.
P is a parameter count, T the trainable ones, N the trainer world size, b the model dtype's bytes.

Model states of a trainer rank (DeepSpeed; "partitioned" means divided by N at that ZeRO stage):
  parameters   frozen + trainable weights at b (4-bit base: 0.5 B + its quantization constants);
               partitioned at ZeRO-3
  master       fp32 copy of T, 4 B: DeepSpeed's bf16/fp16 modes and every ZeRO stage >= 1 (the ZeRO
               optimizer clones its flat fp32 partition even from fp32 weights); partitioned at >= 1
  gradients    T at the accumulation dtype (trainer.grad_accum_dtype: fp32 4 B; null: b); >= 2
  optimizer    AdamW m, v: 8 B per T (adamw_8bit: 2 B + block constants); partitioned at >= 1
So a bf16 run is "AMP": 2 + 4 + 4 + 8 = 18 B/param.  `precision="pure_bf16"` models bf16 master
weights, gradients and optimizer states (DeepSpeed's bf16_master_weights_and_grads +
bf16_optimizer_states, which rlengine does not set): 2 + 2 + 4 = 8 B/param.
offload_optimizer moves master, gradient partition and optimizer to host; offload_params the
ZeRO-3 parameter partition.

Working memory of a training micro-batch of t tokens (width = prompt + response tokens):
  activations  t * per-token bytes: without checkpointing L * A, with it L * h * b + A, where
               A = b * (4h + 2q + 2kv + 4i) (+ 8h: the fp32 upcasts of two RMSNorms when b < 4;
               + heads * width * b for eager attention) is what one decoder layer saves for backward
  logits       min(logits_chunk_tokens, response tokens) * V * 4 * 3 (fp32 logits, log-softmax and
               its gradient)
  zero3_gather the gathered module (the largest of a layer and the embedding/head) + the prefetch
               bucket, at b (ZeRO-3 over N > 1)
  reduce_bucket  reduce_bucket_size elements at the gradient dtype (x2 with overlap_comm)
  step         the optimizer step's temporaries: AdamW's sqrt(v) (4 B per T in the partition) and,
               at ZeRO <= 2, the flat gradient copy the ZeRO optimizer hands it (4 B)
On a GPU the step runs after the backward has freed the activations: peak = states + max(backward,
step).  On CPU glibc keeps the freed blocks of the activations and of autograd's per-parameter
gradients (4 B per T, copied into DeepSpeed's partition then freed) in its heap, and the step's
large temporaries are mapped on top of them: peak = states + activations + grads + step
(measured: bench/results/plan_memory.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# A trainer (reference, critic, reward-model) process on a GPU: CUDA context with cuBLAS/NCCL
# workspaces (~0.5 GiB) and the caching allocator's fragmentation.
GPU_PROCESS_OVERHEAD = 1 * GiB
# What a sleeping vLLM engine keeps on its GPU: its CUDA context and communicator buffers.
VLLM_ASLEEP = GiB // 2
# vLLM's non-KV memory beside the weights inside its gpu_memory_utilization budget: the profiling
# forward's activations, the sampler and non-torch allocations.
VLLM_RESERVE = 1 * GiB
# Host RSS of a trainer actor before any weight: torch + transformers + deepspeed + rlengine imported
# (477 MiB measured, bench/plan_memory.py), DeepSpeed initialised with gloo (~66 MiB), ray (~30 MiB).
CPU_PROCESS_BASELINE = int(0.55 * GiB)
# A vLLM CPU engine process before weights and KV cache: vllm imported (~0.4 GiB) plus its engine.
CPU_VLLM_BASELINE = 1 * GiB
# The driver (Ray client, reward pool) and Ray's own daemons on the head node.
CPU_DRIVER = 1 * GiB
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a decoder-only transformer (Llama / Qwen2 / Mistral family)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    dtype: Optional[str] = None  # the checkpoint's torch_dtype
    max_positions: int = 0
    name: str = ""

    @classmethod
    def from_hf_config(cls, c, name: str = "") -> "ModelShape":
        c = getattr(c, "text_config", None) or c
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        bias = getattr(c, "attention_bias", None)
        model_type = getattr(c, "model_type", "")
        dtype = getattr(c, "dtype", None) or getattr(c, "torch_dtype", None)
        return cls(hidden=c.hidden_size, intermediate=c.intermediate_size, layers=c.num_hidden_layers, heads=heads,
                   kv_heads=getattr(c, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   vocab=c.vocab_size, tied=bool(getattr(c, "tie_word_embeddings", False)),
                   # Qwen2 hard-codes biases on q/k/v and none on o; Llama/Qwen3 follow attention_bias.
                   qkv_bias=bool(bias) if bias is not None else model_type == "qwen2", o_bias=bool(bias),
                   mlp_bias=bool(getattr(c, "mlp_bias", False)), qk_norm=model_type.startswith("qwen3"),
                   dtype=str(dtype).replace("torch.", "") if dtype else None,
                   max_positions=getattr(c, "max_position_embeddings", 0) or 0, name=name)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """(name, in, out, bias) of one decoder layer's linear modules."""
        h, i = self.hidden, self.intermediate
        return [("q_proj", h, self.q_dim, self.qkv_bias), ("k_proj", h, self.kv_dim, self.qkv_bias),
                ("v_proj", h, self.kv_dim, self.qkv_bias), ("o_proj", self.q_dim, h, self.o_bias),
                ("gate_proj", h, i, self.mlp_bias), ("up_proj", h, i, self.mlp_bias),
                ("down_proj", i, h, self.mlp_bias)]

    def counts(self, head: str = "lm") -> dict[str, int]:
        """Parameters by group.  head: lm (the causal LM), value (token classification, 1 output with
        bias: the critic), score (sequence classification, 1 output, no bias: the reward model)."""
        h, L = self.hidden, self.layers
        lin = self.linears()
        out = {"embed": self.vocab * h,
               "linear": L * sum(a * b for _, a, b, _ in lin),
               "bias": L * sum(b for _, _, b, has in lin if has),
               "norm": L * (2 * h + (2 * self.head_dim if self.qk_norm else 0)) + h}
        if head == "lm":
            out["head"] = 0 if self.tied else self.vocab * h
        else:
            out["head"] = h + (1 if head == "value" else 0)
        return out

    def n_params(self, head: str = "lm") -> int:
        return sum(self.counts(head).values())

    def layer_params(self) -> int:
        return sum(a * b + (b if has else 0) for _, a, b, has in self.linears()) + 2 * self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> int:
        """K and V of one token over all layers on one tensor-parallel rank (KV heads split over TP,
        replicated when there are fewer heads than ranks)."""
        return 2 * self.layers * max(1, self.kv_heads // tp) * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class Scenario:
    """Everything the arithmetic reads: a recipe's memory-relevant settings, flattened (memory.scenario)."""

    device: str = "cpu"  # cpu | cuda
    dtype: str = "float32"
    precision: str = "auto"  # auto (what rlengine runs: fp32, or AMP for bf16/fp16) | pure_bf16
    grad_accum_dtype: Optional[str] = "float32"
    world_size: int = 1
    zero_stage: int = 2  # the stage DeepSpeed runs (Plan.zero_stage)
    micro_rows: int = 1
    width: int = 1  # padded tokens per row
    response_tokens: int = 1  # of the width, the response (the log-prob positions)
    token_budget: Optional[int] = None
    logits_chunk: int = 1024
    gradient_checkpointing: bool = False
    attn: str = "sdpa"
    optimizer: str = "adamw"
    lora_r: int = 0
    lora_targets: tuple = ("all-linear",)
    use_dora: bool = False
    quantization: Optional[str] = None  # nf4 | fp4 | int8
    double_quant: bool = True
    compute_dtype: Optional[str] = None
    offload_optimizer: bool = False
    offload_params: bool = False
    offload_during_rollout: bool = False
    overlap_comm: Optional[bool] = None  # null: on for multi-rank GPU runs (rlengine.zero)
    reduce_bucket: int = 1_000_000
    prefetch_bucket: int = 1_000_000
    max_live_parameters: int = 1_000_000_000
    colocate: bool = False
    use_trainer: bool = True  # False: a stage that does not train (Plan.use_trainer): no trainer ranks
    use_rollout: bool = True
    sleep_level: int = 0
    tp: int = 1
    engines: int = 1
    gpu_memory_utilization: float = 0.5
    kv_cache_gib: float = 1.0
    max_model_len: int = 256
    use_reference: bool = False
    reference_in_trainer: bool = False
    reference_workers: int = 1
    use_critic: bool = False
    use_reward_model: bool = False
    reward_workers: int = 1
    reward_width: int = 512
    use_teacher: bool = False
    teacher_workers: int = 1
    teacher_top_k: int = 64  # 0: the full vocabulary per token (its [tokens, V] fp32 output dominates)
    gpus: dict = field(default_factory=dict)  # role -> GPUs per actor (resources.gpus_per_*)
    minibatch: int = 1  # samples per optimizer step over all ranks (Plan.minibatch_size)
    micro_batch_size: int = 1  # trainer.micro_batch_size: the rows cap of a micro-batch per rank
    configured_stage: int = 3  # trainer.zero_stage (one rank runs stage 2 instead: Plan.zero_stage)

    @property
    def b(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def tokens(self) -> int:
        """Tokens of one training micro-batch: the token budget, else rows x width."""
        return self.token_budget or self.micro_rows * self.width

    @property
    def rows(self) -> int:
        return max(1, self.tokens // self.width)

    @property
    def overlap(self) -> bool:
        return self.overlap_comm if self.overlap_comm is not None else self.device == "cuda" and self.world_size > 1

    def resized(self, world_size: int) -> "Scenario":
        """The same recipe over `world_size` trainer ranks: micro-batch rows and ZeRO stage as
        plan.validate would derive them."""
        per_rank = max(1, self.minibatch // world_size)
        stage = 2 if self.configured_stage == 3 and world_size == 1 else self.configured_stage
        return replace(self, world_size=world_size, micro_rows=min(self.micro_batch_size, per_rank), zero_stage=stage)


def adapter_params(shape: ModelShape, s: Scenario) -> int:
    """LoRA A (r x in) and B (out x r) of every targeted linear (DoRA adds a magnitude per output)."""
    if s.lora_r <= 0:
        return 0
    targets = set(s.lora_targets)
    mods = [(a, b) for name, a, b, _ in shape.linears() if "all-linear" in targets or name in targets]
    total = shape.layers * sum(s.lora_r * (a + b) + (b if s.use_dora else 0) for a, b in mods)
    if "lm_head" in targets:
        total += s.lora_r * (shape.hidden + shape.vocab)
    if "embed_tokens" in targets:
        total += s.lora_r * (shape.hidden + shape.vocab)
    return total


def quantized_bytes(shape: ModelShape, s: Scenario) -> int:
    """Stored bytes of the quantized linear weights (bitsandbytes; lm_head and embeddings stay at b).
    4-bit: 0.5 B + an fp32 absmax per 64 weights, or with double quantization an 8-bit absmax per 64
    and an fp32 one per 256 of those.  int8: 1 B + an fp32 scale per output row."""
    n = shape.counts()["linear"]
    if s.quantization == "int8":
        return n + 4 * shape.layers * sum(b for _, _, b, _ in shape.linears())
    consts = (1 / 64 + 4 / (64 * 256)) if s.double_quant else 4 / 64
    return math.ceil(n * (0.5 + consts))


def _grad_bytes(s: Scenario) -> int:
    if s.precision == "pure_bf16":
        return 2
    return DTYPE_BYTES[s.grad_accum_dtype] if s.grad_accum_dtype and s.b < 4 else s.b


def trainer_states(shape: ModelShape, s: Scenario, head: str = "lm", trainable_head: bool = False) -> tuple[dict, dict]:
    """(device bytes, host bytes) of one trainer rank's model states, by kind (see the module doc).

    head/trainable_head: the critic's value head (trained in full, also under LoRA)."""
    c = shape.counts(head)
    total = sum(c.values())
    N, z, b = s.world_size, s.zero_stage, s.b
    if s.lora_r > 0:
        trainable = adapter_params(shape, s) + (c["head"] if trainable_head else 0)
        base = quantized_bytes(shape, s) + b * (total - c["linear"]) if s.quantization else b * total
        weights = base + b * trainable
    else:
        trainable, weights = total, b * total
    div1, div2, div3 = (N if z >= 1 else 1), (N if z >= 2 else 1), (N if z >= 3 else 1)
    pure = s.precision == "pure_bf16"
    master = 0 if pure or (b == 4 and z == 0) else 4 * trainable // div1
    if s.optimizer == "adamw":
        optim = (4 if pure else 8) * trainable // div1
    else:  # bitsandbytes 8-bit AdamW: a byte per moment plus an fp32 constant per 256-element block
        optim = math.ceil(trainable * (2 + 8 / 256)) // div1
    dev = {"parameters": weights // div3, "master": master, "gradients": _grad_bytes(s) * trainable // div2,
           "optimizer": optim}
    host: dict = {}
    if s.device == "cuda" and s.offload_optimizer and z >= 1:
        for k in ("master", "gradients", "optimizer"):
            host[k] = dev.pop(k)
    if s.device == "cuda" and s.offload_params and z == 3:
        host["parameters"] = dev.pop("parameters")
    return dev, host


def trainable_params(shape: ModelShape, s: Scenario, head: str = "lm", trainable_head: bool = False) -> int:
    c = shape.counts(head)
    if s.lora_r > 0:
        return adapter_params(shape, s) + (c["head"] if trainable_head else 0)
    return sum(c.values())


def layer_activation_bytes(shape: ModelShape, s: Scenario, per_token_width: int) -> int:
    """A: bytes one decoder layer saves for backward per token (module doc)."""
    b = DTYPE_BYTES[s.compute_dtype or s.dtype] if s.quantization else s.b
    h = shape.hidden
    a = b * (4 * h + 2 * shape.q_dim + 2 * shape.kv_dim + 4 * shape.intermediate)
    if b < 4:
        a += 8 * h
    if s.attn == "eager":
        a += shape.heads * per_token_width * b
    return a


def activation_bytes(shape: ModelShape, s: Scenario, tokens: int, width: int, train: bool = True) -> int:
    """Saved activations of a forward over `tokens` tokens of rows `width` wide.  Without gradients
    (train False) only one layer's working set lives at a time."""
    b = s.b
    A = layer_activation_bytes(shape, s, width)
    outer = 2 * shape.hidden * b + (4 * shape.hidden if b < 4 else 0)  # embedding output, final norm
    if not train:
        return tokens * (A + outer)
    per_layer = shape.layers * (shape.hidden * b if s.gradient_checkpointing else A)
    return tokens * (per_layer + (A if s.gradient_checkpointing else 0) + outer)


def logits_bytes(shape: ModelShape, s: Scenario, response_tokens: int) -> int:
    """fp32 logits of one chunk of response positions, ~3x for the log-softmax and its gradient."""
    return min(s.logits_chunk, response_tokens) * shape.vocab * 4 * 3


def step_bytes(s: Scenario, trainable: int) -> int:
    """The optimizer step's temporaries on the device holding the optimizer (module doc)."""
    part = trainable // (s.world_size if s.zero_stage >= 1 else 1)
    adam = (2 if s.precision == "pure_bf16" else 4) * part if s.optimizer == "adamw" else 0
    flat = _grad_bytes(s) * part if s.zero_stage in (1, 2) else 0
    return adam + flat


def trainer_working(shape: ModelShape, s: Scenario, head: str = "lm", trainable_head: bool = False) -> dict:
    """The train phase's transient bytes of one rank by kind (its peak combines them, `trainer_peak`)."""
    tokens = s.tokens
    response = s.rows * s.response_tokens if not s.token_budget else tokens * s.response_tokens // s.width
    trainable = trainable_params(shape, s, head, trainable_head)
    grad_b = _grad_bytes(s)
    out = {"activations": activation_bytes(shape, s, tokens, s.width),
           "logits": logits_bytes(shape, s, response) if head == "lm" else 0,
           # Allocated whole on a GPU; on CPU only the pages gradients are written to are resident.
           "reduce_bucket": min(s.reduce_bucket, trainable if s.device == "cpu" else s.reduce_bucket)
           * s.b * (2 if s.overlap else 1)}
    if s.zero_stage == 3 and s.world_size > 1:
        biggest = max(shape.layer_params(), shape.vocab * shape.hidden)
        out["zero3_gather"] = min(s.max_live_parameters, biggest + s.prefetch_bucket) * s.b
    on_device = not (s.device == "cuda" and s.offload_optimizer and s.zero_stage >= 1)
    out["step"] = step_bytes(s, trainable) if on_device else 0
    if s.device == "cpu":
        out["grads_retained"] = grad_b * trainable
    if s.quantization:  # one layer's weight dequantized to the compute dtype at a time
        out["dequantized"] = max(a * b for _, a, b, _ in shape.linears()) * DTYPE_BYTES[s.compute_dtype or s.dtype]
    return out


def trainer_peak(working: dict, device: str) -> int:
    """Peak of the working memory over the update: the backward and the step in turn on a GPU, all of
    it at once on CPU (module doc)."""
    if device == "cpu":
        return sum(working.values())
    backward = sum(v for k, v in working.items() if k != "step")
    return max(backward, working.get("step", 0) + working.get("reduce_bucket", 0))


def inference_bytes(shape: ModelShape, s: Scenario, tokens: int, width: int, response_tokens: int,
                    head: str = "lm") -> dict:
    """Working bytes of a no-grad forward (reference log-probs, reward scores)."""
    return {"activations": activation_bytes(shape, s, tokens, width, train=False),
            "logits": logits_bytes(shape, s, response_tokens) if head == "lm" else 0}


def vllm_engine(shape: ModelShape, s: Scenario, tp: int, capacity: int, util: float | None = None,
                adapter: int = 0) -> dict:
    """One vLLM engine rank: weights / TP (+ the LoRA adapter slot) and its KV cache.

    GPU: vLLM takes util x device memory; KV = that - weights - VLLM_RESERVE.  CPU: KV =
    rollout.kv_cache_gib.  tokens: how many tokens' K and V fit; fits: the KV holds one sequence of
    max_model_len."""
    b = s.b
    weights = b * shape.n_params() // tp + adapter * b
    per_token = shape.kv_bytes_per_token(b, tp)
    if s.device == "cuda":
        budget = int((s.gpu_memory_utilization if util is None else util) * capacity)
        kv = budget - weights - VLLM_RESERVE
        out = {"weights": weights, "reserve": VLLM_RESERVE, "kv_cache": max(kv, 0), "budget": budget}
    else:
        kv = int(s.kv_cache_gib * GiB)
        out = {"weights": weights, "kv_cache": kv, "baseline": CPU_VLLM_BASELINE}
        out["budget"] = sum(out.values())
    out.update(kv_bytes_per_token=per_token, kv_tokens=max(kv, 0) // per_token,
               fits=kv >= per_token * s.max_model_len)
    return out


def smallest_tp(shape: ModelShape, s: Scenario, capacity: int, limit: int = 64, adapter: int = 0) -> Optional[int]:
    """The smallest power-of-two tensor-parallel size whose engine holds its weights and one full
    sequence's KV in its budget (None: none up to `limit`)."""
    tp = 1
    while tp <= limit:
        if shape.heads % tp == 0:  # vLLM splits the attention heads evenly over the ranks
            if vllm_engine(shape, s, tp, capacity, adapter=adapter)["fits"]:
                return tp
        tp *= 2
    return None
