"""The memory planner: what each role of a recipe holds on each device, and whether it fits.

    python -m rlengine.plan recipe=NAME [key=value ...] [--json] [--gpu-memory-gib G] [--precision pure_bf16]

The model is read from its config.json alone (no weights): a local directory, the HF cache, or the
configs shipped in rlengine/model_configs/ for the hub names the recipes use.  The arithmetic is
rlengine/memory_model.py's (its docstring has the formulas); this module builds its Scenario from a
composed recipe, lays the roles out on devices and checks the peaks.

Phases of a colocated GPU step (resources.colocate): rollout = trainer resident (model states,
less the optimizer with trainer.offload_during_rollout) + the process overhead + vLLM's
gpu_memory_utilization x device memory; train = trainer resident + the update's peak working memory
+ vLLM asleep (level 1: weights to host, KV freed; level 2: weights dropped; 0: awake).  A device's
peak is the larger.  On CPU every process's memory adds up on the one host.

Device memory: --gpu-memory-gib, else torch.cuda's total memory when a GPU is visible, else 80 GiB.
check_fits (run by rlengine.preflight before Ray) takes it from torch.cuda, else the environment
variable RLENGINE_GPU_MEMORY_GIB, else skips the GPU check with a log line.

API: check_fits(cfg, plan) (refusal, ConfigError with the fixing overrides), predict_trainer_peak(cfg,
model_config, micro_batch, width) (one GPU rank's peak by kind, for GPU check scripts),
min_devices(scenario(cfg, plan), shapes_of(cfg), capacity) (the fewest GPUs in the hybrid layout).
Seed scenario of the GRPO device table (tests/test_memory.py): recipe grpo_qwen_math with
algorithm.kl_coef=0 resources.colocate=true rollout.gpu_memory_utilization=0.35 rollout.sleep_level=1
model.gradient_checkpointing=true trainer.micro_batch_size=4 data.max_prompt_tokens=512
rollout.max_new_tokens=1024 rollout.max_model_len=2048, no offload; AMP = model.dtype=bfloat16 (what
rlengine runs), pure bf16 = precision="pure_bf16".
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path

from rlengine import memory_model as mm
from rlengine.memory_model import GiB, ModelShape, Scenario

log = logging.getLogger("rlengine")
CONFIGS = Path(__file__).resolve().parent / "model_configs"
DEFAULT_GPU_GIB = 80.0
ENV_GPU_GIB = "RLENGINE_GPU_MEMORY_GIB"


def model_config_dir(path: str, key: str = "model.path") -> str:
    """Where `path`'s config.json is: a tiny model's build, a local directory, the HF cache, or a
    config shipped with rlengine (hub names the recipes use).  Raises ConfigError when none has it."""
    from rlengine import preflight, tiny
    from rlengine.errors import ConfigError

    if tiny.is_tiny(path):
        return preflight._config_dir(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(path, "config.json")
        if isinstance(hit, str):
            return os.path.dirname(hit)
    except Exception:  # not a valid hub id (a missing local path): fall through to the shipped configs
        pass
    shipped = CONFIGS / path.replace("/", "--")
    if (shipped / "config.json").is_file():
        return str(shipped)
    raise ConfigError(key, f"no config.json for {path!r}: not a local directory, not in the HF cache and not "
                           f"one of the configs in {CONFIGS}")


@functools.lru_cache(maxsize=64)
def model_shape(path: str, key: str = "model.path", trust_remote_code: bool = False) -> ModelShape:
    from transformers import AutoConfig

    return ModelShape.from_hf_config(AutoConfig.from_pretrained(model_config_dir(path, key),
                                                                trust_remote_code=trust_remote_code), name=path)


def scenario(cfg, plan, precision: str = "auto") -> Scenario:
    """The memory-relevant settings of a validated recipe (cfg, plan), flattened."""
    from rlengine import zero
    from rlengine.plan import token_budget

    m, t, r, res = cfg.model, cfg.trainer, cfg.rollout, cfg.resources
    shape = model_shape(m.path, "model.path", m.trust_remote_code)
    buckets = zero.bucket_sizes(cfg, shape.hidden)
    name = cfg.algorithm.name
    width = (cfg.sft.max_length if name in ("sft", "distill") else cfg.dpo.max_length if name == "dpo"
             else cfg.data.max_prompt_tokens + r.max_new_tokens)
    targets = m.lora.target_modules
    offload_optim, offload_params = zero.offload_enabled(cfg)
    return Scenario(
        device=res.device, dtype=m.dtype, precision=precision, grad_accum_dtype=t.grad_accum_dtype,
        world_size=t.world_size, zero_stage=plan.zero_stage, micro_rows=plan.micro_batch_size, width=width,
        response_tokens=r.max_new_tokens if name not in ("sft", "distill", "dpo", "rm") else width,
        token_budget=token_budget(cfg, "trainer"), logits_chunk=t.logits_chunk_tokens,
        gradient_checkpointing=m.gradient_checkpointing, attn=m.attn_implementation, optimizer=t.optimizer,
        lora_r=m.lora.r, lora_targets=(targets,) if isinstance(targets, str) else tuple(targets),
        use_dora=m.lora.use_dora, quantization=m.quantization, double_quant=m.double_quant,
        compute_dtype=m.compute_dtype, offload_optimizer=offload_optim, offload_params=offload_params,
        offload_during_rollout=t.offload_during_rollout, overlap_comm=t.overlap_comm,
        reduce_bucket=buckets["reduce_bucket_size"], prefetch_bucket=buckets["stage3_prefetch_bucket_size"],
        max_live_parameters=t.stage3_max_live_parameters, colocate=res.colocate, use_rollout=plan.use_rollout,
        use_trainer=plan.use_trainer,
        sleep_level=plan.sleep_level, tp=r.tensor_parallel_size, engines=r.num_workers,
        gpu_memory_utilization=r.gpu_memory_utilization, kv_cache_gib=r.kv_cache_gib, max_model_len=r.max_model_len,
        use_reference=plan.use_reference, reference_in_trainer=plan.reference_in_trainer,
        reference_workers=cfg.reference.num_workers, use_critic=plan.use_critic,
        use_reward_model=plan.use_reward_model, reward_workers=cfg.reward_model.num_workers,
        reward_width=cfg.reward_model.max_length, use_teacher=plan.use_teacher,
        teacher_workers=cfg.teacher.num_workers, teacher_top_k=cfg.teacher.top_k,
        gpus={"trainer": res.gpus_per_trainer, "rollout": res.gpus_per_rollout, "reference": res.gpus_per_reference,
              "critic": res.gpus_per_trainer, "reward_model": res.gpus_per_reference, "teacher": res.gpus_per_teacher},
        minibatch=plan.minibatch_size, micro_batch_size=t.micro_batch_size, configured_stage=t.zero_stage)


def shapes_of(cfg) -> dict[str, ModelShape]:
    """The models of each role: the policy (trainer, reference, rollout), the critic's backbone and
    the reward model."""
    m = cfg.model
    out = {"policy": model_shape(m.path, "model.path", m.trust_remote_code)}
    if cfg.critic.model_path:
        out["critic"] = model_shape(cfg.critic.model_path, "critic.model_path", m.trust_remote_code)
    if cfg.reward_model.path:
        out["reward_model"] = model_shape(cfg.reward_model.path, "reward_model.path", m.trust_remote_code)
    if cfg.teacher.path:
        out["teacher"] = model_shape(cfg.teacher.path, "teacher.path", m.trust_remote_code)
    return out


def _overhead(s: Scenario) -> int:
    return mm.GPU_PROCESS_OVERHEAD if s.device == "cuda" else mm.CPU_PROCESS_BASELINE


def _trainer_role(shape: ModelShape, s: Scenario, head: str = "lm") -> dict:
    states, host = mm.trainer_states(shape, s, head, trainable_head=head != "lm")
    working = mm.trainer_working(shape, s, head, trainable_head=head != "lm")
    resident = sum(states.values())
    peak = mm.trainer_peak(working, s.device)
    return {"bytes": {**states, **working, "overhead": _overhead(s)}, "host_bytes": host, "resident": resident,
            "working_peak": peak, "total": resident + peak + _overhead(s), "devices": s.world_size,
            "per": "rank", "micro_batch": {"rows": s.rows, "tokens": s.tokens, "width": s.width}}


def _frozen_role(shape: ModelShape, s: Scenario, count: int, width: int, head: str = "lm") -> dict:
    """A frozen model answering no-grad forwards (separate reference, reward model)."""
    weights = s.b * shape.n_params(head)
    work = mm.inference_bytes(shape, s, s.tokens if head == "lm" else s.rows * width, width,
                              s.rows * s.response_tokens, head)
    out = {"weights": weights, **work, "overhead": _overhead(s)}
    return {"bytes": out, "host_bytes": {}, "total": sum(out.values()), "devices": count, "per": "actor"}


def roles(s: Scenario, shapes: dict, capacity: int) -> dict:
    """Per role: bytes by kind of one process (rank / engine rank / actor), its total, and how many
    processes (devices, where each has its own) the role has."""
    policy = shapes["policy"]
    out = {"trainer": _trainer_role(policy, s)} if s.use_trainer else {}
    if s.use_reference and s.reference_in_trainer and not s.lora_r:
        weights = s.b * policy.n_params() // (s.world_size if s.zero_stage == 3 else 1)
        out["reference"] = {"bytes": {"weights": weights}, "host_bytes": {}, "total": weights, "devices": 0,
                            "per": "trainer rank (reference.placement=trainer)"}
    elif s.use_reference and not s.reference_in_trainer:
        out["reference"] = _frozen_role(policy, s, s.reference_workers, s.width)
    elif s.use_reference:
        out["reference"] = {"bytes": {}, "host_bytes": {}, "total": 0, "devices": 0,
                            "per": "the policy with its adapter disabled (model.lora)"}
    if s.use_rollout:
        adapter = mm.adapter_params(policy, s) if s.lora_r else 0
        e = mm.vllm_engine(policy, s, s.tp, capacity, adapter=adapter)
        kinds = {k: e[k] for k in ("weights", "reserve", "kv_cache", "baseline") if k in e}
        host = {"weights": e["weights"]} if s.device == "cuda" and s.sleep_level == 1 else {}
        out["rollout"] = {"bytes": kinds, "host_bytes": host, "total": e["budget"], "devices": s.engines * s.tp,
                          "per": f"engine rank (tensor_parallel_size {s.tp})", "kv_tokens": e["kv_tokens"],
                          "kv_bytes_per_token": e["kv_bytes_per_token"], "fits_max_model_len": e["fits"]}
    if s.use_critic:
        out["critic"] = _trainer_role(shapes.get("critic", policy), s, head="value")
    if s.use_reward_model:
        out["reward_model"] = _frozen_role(shapes.get("reward_model", policy), s, s.reward_workers, s.reward_width,
                                           head="score")
    if s.use_teacher:
        teacher = shapes.get("teacher", policy)
        out["teacher"] = _frozen_role(teacher, s, s.teacher_workers, s.width)
        if not s.teacher_top_k:  # the whole [tokens, V] fp32 distribution goes back to the driver
            out["teacher"]["bytes"]["scores"] = 4 * s.rows * s.response_tokens * teacher.vocab
            out["teacher"]["total"] = sum(out["teacher"]["bytes"].values())
    return out


def devices(s: Scenario, rs: dict, capacity: int) -> list[dict]:
    """Device groups with their phases' bytes and peak vs capacity (CPU: the one host)."""
    tr = rs.get("trainer")  # None: a stage that does not train
    ref_in = rs.get("reference", {}).get("total", 0) if rs.get("reference", {}).get("devices") == 0 else 0
    if s.device == "cpu":
        procs = {"trainer": tr["total"] * s.world_size} if tr else {}
        if "rollout" in rs:
            procs["rollout"] = rs["rollout"]["total"] * rs["rollout"]["devices"]
        for name in ("reference", "critic", "reward_model", "teacher"):
            if rs.get(name, {}).get("devices"):
                procs[name] = rs[name]["total"] * rs[name]["devices"]
        if tr:
            procs["trainer"] += ref_in * s.world_size
        procs["driver"] = mm.CPU_DRIVER
        peak = sum(procs.values())
        return [{"devices": "host", "count": 1, "roles": list(procs), "phases": {"all processes": peak},
                 "processes": procs, "peak": peak, "capacity": capacity, "fits": peak <= capacity}]
    groups = []
    base = train = {}
    if tr is not None:
        base = {"trainer states": tr["resident"], "reference weights": ref_in, "overhead": tr["bytes"]["overhead"]}
        train = {**base, "update working": tr["working_peak"]}
    if tr is None:  # a stage that does not train: the engines (and scoring roles) alone
        if "rollout" in rs:
            groups.append(_group("rollout", rs["rollout"]["devices"], {"rollout": rs["rollout"]["bytes"]}, capacity))
    elif s.colocate and "rollout" in rs:
        ro = rs["rollout"]
        hosting = min(s.world_size, ro["devices"])
        optim = tr["bytes"].get("optimizer", 0) if s.offload_during_rollout and s.zero_stage == 3 else 0
        vllm = f"vLLM ({s.gpu_memory_utilization:g} x {_gib(capacity)})"
        rollout = {**base, "trainer states": tr["resident"] - optim, vllm: ro["total"]}
        asleep = {"vLLM awake (sleep_level 0)": ro["total"]} if s.sleep_level == 0 else {"vLLM asleep": mm.VLLM_ASLEEP}
        groups.append(_group("trainer+rollout", hosting, {"rollout": rollout, "train": {**train, **asleep}}, capacity))
        if s.world_size > hosting:
            groups.append(_group("trainer", s.world_size - hosting, {"train": train}, capacity))
    else:
        groups.append(_group("trainer", s.world_size, {"train": train}, capacity))
        if "rollout" in rs:
            groups.append(_group("rollout", rs["rollout"]["devices"], {"rollout": rs["rollout"]["bytes"]}, capacity))
    for name, phase in (("reference", "log_probs"), ("critic", "train"), ("reward_model", "score"),
                        ("teacher", "score")):
        r = rs.get(name)
        if r and r["devices"]:
            frac = s.gpus.get(name, 1.0) or 1.0
            per = max(1, int(1 / frac)) if frac < 1 else 1  # actors sharing one GPU (gpus_per_* < 1)
            parts = ({k: v * per for k, v in r["bytes"].items()} if name != "critic" else
                     {"critic states": r["resident"], "update working": r["working_peak"],
                      "overhead": r["bytes"]["overhead"]})
            groups.append(_group(name, -(-r["devices"] // per), {phase: parts}, capacity))
    return groups


def _group(roles_: str, count: int, parts: dict, capacity: int) -> dict:
    """parts: phase -> {what: bytes}; phases: their sums; the peak is the largest."""
    phases = {k: sum(v.values()) for k, v in parts.items()}
    peak = max(phases.values())
    return {"devices": roles_, "count": count, "roles": roles_.split("+"), "phases": phases, "parts": parts,
            "peak": peak, "capacity": capacity, "fits": peak <= capacity}


def evaluate(s: Scenario, shapes: dict, capacity: int) -> dict:
    rs = roles(s, shapes, capacity)
    groups = devices(s, rs, capacity)
    engine_ok = "rollout" not in rs or s.device == "cpu" or rs["rollout"]["fits_max_model_len"]
    return {"roles": rs, "per_device": groups, "fits": engine_ok and all(g["fits"] for g in groups),
            "engine_fits": engine_ok, "devices_needed": sum(g["count"] for g in groups) if s.device == "cuda" else 0}


def min_devices(s: Scenario, shapes: dict, capacity: int, limit: int = 1024) -> dict | None:
    """The fewest devices (a power of two) of `capacity` bytes that run the recipe in the hybrid
    layout: N trainer ranks under the recipe's ZeRO stage (ZeRO-3 over N > 1), one vLLM engine per
    `tp` of them, tp the smallest that fits the weights and one max_model_len sequence of KV."""
    policy = shapes["policy"]
    n = 1
    while n <= limit:
        x = s.resized(n)
        adapter = mm.adapter_params(policy, x) if x.lora_r else 0
        tp = mm.smallest_tp(policy, x, capacity, limit=n, adapter=adapter) if x.use_rollout else 1
        if tp is not None:
            x = dataclasses.replace(x, tp=tp, engines=max(1, n // tp), colocate=x.use_rollout,
                                    sleep_level=x.sleep_level or 1, reference_in_trainer=x.use_reference)
            ev = evaluate(x, shapes, capacity)
            if ev["fits"]:
                # The teacher keeps devices of its own (it is never colocated).
                teacher = sum(g["count"] for g in ev["per_device"] if g["roles"] == ["teacher"])
                return {"devices": n + teacher, "world_size": n, "tensor_parallel_size": tp, "engines": x.engines,
                        "overrides": [f"trainer.world_size={n}", "resources.colocate=true",
                                      f"rollout.num_workers={x.engines}", f"rollout.tensor_parallel_size={tp}"]
                        + (["reference.placement=trainer"] if x.use_reference and not x.lora_r else []),
                        "per_device": ev["per_device"]}
        n *= 2
    return None


def suggestions(s: Scenario, shapes: dict, capacity: int) -> list[str]:
    """Overrides that each alone make every role fit (falls back to pairs), most direct first."""
    single: list[tuple[str, Scenario]] = []
    gpu = s.device == "cuda"
    if gpu and not s.offload_optimizer and s.zero_stage >= 1:
        single.append(("trainer.offload_optimizer=true", dataclasses.replace(s, offload_optimizer=True)))
    if gpu and s.colocate and s.use_rollout and not s.offload_during_rollout and s.zero_stage == 3:
        single.append(("trainer.offload_during_rollout=true", dataclasses.replace(s, offload_during_rollout=True)))
    if s.world_size > 1 and s.zero_stage < 3 and not s.quantization:
        single.append(("trainer.zero_stage=3", dataclasses.replace(s, zero_stage=3, configured_stage=3)))
    n = s.world_size * 2
    while n <= 1024 and not evaluate(s.resized(n), shapes, capacity)["fits"]:
        n *= 2
    if n <= 1024:
        single.append((f"trainer.world_size>={n}", s.resized(n)))
    if not s.gradient_checkpointing:
        single.append(("model.gradient_checkpointing=true", dataclasses.replace(s, gradient_checkpointing=True)))
    mb = s.micro_rows // 2
    while mb >= 1 and not evaluate(dataclasses.replace(s, micro_rows=mb, token_budget=None), shapes, capacity)["fits"]:
        mb //= 2
    if mb >= 1:
        single.append((f"trainer.micro_batch_size={mb}", dataclasses.replace(s, micro_rows=mb, token_budget=None)))
    if s.use_rollout and gpu:
        util = round(s.gpu_memory_utilization - 0.05, 2)
        while util >= 0.05 and not evaluate(dataclasses.replace(s, gpu_memory_utilization=util), shapes,
                                            capacity)["fits"]:
            util = round(util - 0.05, 2)
        if util >= 0.05:
            single.append((f"rollout.gpu_memory_utilization={util:g}",
                           dataclasses.replace(s, gpu_memory_utilization=util)))
        tp = mm.smallest_tp(shapes["policy"], s, capacity)
        if tp and tp > s.tp:
            single.append((f"rollout.tensor_parallel_size={tp}", dataclasses.replace(s, tp=tp)))
    if gpu and s.zero_stage == 3 and not s.offload_params:
        single.append(("trainer.offload_params=true", dataclasses.replace(s, offload_params=True)))
    ok = [k for k, x in single if evaluate(x, shapes, capacity)["fits"]]
    if ok:
        return ok[:4]
    for i, (k1, x1) in enumerate(single):  # no single fix: the first pair that fits (world size resized last)
        for k2, _ in single[i + 1:]:
            x = _apply(x1, k2)
            if x is not None and evaluate(x, shapes, capacity)["fits"]:
                return [f"{k1} and {k2}"]
    return []


def _apply(s: Scenario, override: str) -> Scenario | None:
    key, _, value = override.replace(">=", "=").partition("=")
    flags = {"trainer.offload_optimizer": "offload_optimizer", "trainer.offload_params": "offload_params",
             "trainer.offload_during_rollout": "offload_during_rollout",
             "model.gradient_checkpointing": "gradient_checkpointing"}
    if key in flags:
        return dataclasses.replace(s, **{flags[key]: True})
    if key == "trainer.world_size":
        return s.resized(int(value))
    if key == "trainer.micro_batch_size":
        return dataclasses.replace(s, micro_rows=int(value), token_budget=None)
    if key == "rollout.gpu_memory_utilization":
        return dataclasses.replace(s, gpu_memory_utilization=float(value))
    if key == "rollout.tensor_parallel_size":
        return dataclasses.replace(s, tp=int(value))
    return None


def gpu_capacity() -> tuple[int | None, str]:
    """(bytes per GPU, where it came from): torch.cuda when a GPU is visible, RLENGINE_GPU_MEMORY_GIB,
    or (None, why).  torch.cuda is asked in a child process unless CUDA is already initialised here:
    a CUDA context in the driver would hold ~0.5 GiB of GPU 0 for the whole run."""
    import subprocess

    try:
        import torch

        if torch.cuda.is_initialized():
            return torch.cuda.get_device_properties(0).total_memory, "torch.cuda"
    except ImportError:
        pass
    if os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1"):
        code = ("import torch; print(torch.cuda.get_device_properties(0).total_memory "
                "if torch.cuda.is_available() else 0)")
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            total = int(out.stdout.strip().splitlines()[-1])
            if total:
                return total, "torch.cuda"
        except (subprocess.SubprocessError, ValueError, IndexError):
            pass
    if os.environ.get(ENV_GPU_GIB):
        return int(float(os.environ[ENV_GPU_GIB]) * GiB), ENV_GPU_GIB
    return None, f"no GPU visible to the driver and {ENV_GPU_GIB} unset"


def host_memory(available: bool = False) -> int:
    """MemTotal (or MemAvailable) of this machine, bytes."""
    rows = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    return int(rows["MemAvailable" if available else "MemTotal"].split()[0]) * 1024


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def check_fits(cfg, plan, capacity: int | None = None, precision: str = "auto") -> dict | None:
    """Refuse, before any actor starts, a recipe whose roles cannot fit their devices: ConfigError
    naming the role, its bytes and the overrides that would make it fit.  CPU runs are only warned
    (against MemAvailable); GPU runs without a known device memory (gpu_capacity) are skipped with a
    log line.  Returns the evaluation (None when skipped)."""
    from rlengine.errors import ConfigError

    gpu = cfg.resources.device == "cuda"
    if gpu and capacity is None:
        capacity, source = gpu_capacity()
        if capacity is None:
            log.info("memory check skipped: %s (set %s to the GiB of one GPU)", source, ENV_GPU_GIB)
            return None
    s = scenario(cfg, plan, precision)
    shapes = shapes_of(cfg)
    if not gpu:
        capacity = capacity or host_memory(available=True)
    ev = evaluate(s, shapes, capacity)
    if ev["fits"]:
        return ev
    if not gpu:
        log.warning("memory: this run may need %s of host memory, %s is available (rlengine.memory's estimate)",
                    _gib(ev["per_device"][0]["peak"]), _gib(capacity))
        return ev
    if not ev["engine_fits"]:
        ro = ev["roles"]["rollout"]
        fix = suggestions(s, shapes, capacity)
        raise ConfigError("rollout.tensor_parallel_size",
                          f"rollout needs {_gib(ro['bytes']['weights'])}/GPU of weights + {_gib(mm.VLLM_RESERVE)} + "
                          f"the KV of one {s.max_model_len}-token sequence within gpu_memory_utilization "
                          f"{s.gpu_memory_utilization:g} x {_gib(capacity)}: " + _fixes(fix))
    g = max((g for g in ev["per_device"] if not g["fits"]), key=lambda g: g["peak"] - g["capacity"])
    phase = max(g["phases"], key=g["phases"].get)
    parts = ", ".join(f"{k} {_gib(v)}" for k, v in g["parts"][phase].items() if v >= GiB // 20)
    role = "trainer" if "trainer" in g["roles"] else g["roles"][0]
    states = ev["roles"][role]["bytes"]
    kinds = ", ".join(f"{k} {_gib(states[k])}" for k in ("parameters", "master", "gradients", "optimizer")
                      if states.get(k, 0) >= GiB // 20)
    fix = suggestions(s, shapes, capacity)
    key = fix[0].split("=")[0].split(">")[0].split(" ")[0] if fix else "resources"
    raise ConfigError(key, f"{role} needs {_gib(g['peak'])}/GPU in the {phase} phase ({parts}"
                           + (f"; its model states: {kinds}" if kinds else "")
                           + f") at micro-batch {s.rows} ({s.tokens} tokens) on {_gib(capacity)} GPUs: " + _fixes(fix))


def _fixes(fix: list[str]) -> str:
    return ("set " + " or ".join(fix)) if fix else "no single override found; see python -m rlengine.plan"


def predict_trainer_peak(cfg, model_config, micro_batch: int, width: int, plan=None, precision: str = "auto") -> dict:
    """Peak bytes of one trainer rank (one GPU, or the trainer process on CPU) for a micro-batch of
    `micro_batch` rows of `width` tokens: {"bytes": {kind: n}, "total": n, "resident": n}.

    model_config: a transformers config, a ModelShape, or a path/hub name (read as model_shape does).
    The recipe's other settings (dtype, ZeRO stage, world size, LoRA, offload, checkpointing, logits
    chunk) come from cfg; plan defaults to rlengine.plan.validate(cfg).  total = resident states +
    the update's working peak (memory_model.trainer_peak) + the process overhead (GPU: CUDA context
    and fragmentation, 1 GiB; CPU: the imported process, 0.55 GiB)."""
    from rlengine.plan import validate

    plan = plan or validate(cfg)
    shape = (model_config if isinstance(model_config, ModelShape) else model_shape(model_config)
             if isinstance(model_config, str) else ModelShape.from_hf_config(model_config))
    s = dataclasses.replace(scenario(cfg, plan, precision), micro_rows=micro_batch, width=width, token_budget=None,
                            response_tokens=min(width, cfg.rollout.max_new_tokens))
    r = _trainer_role(shape, s)
    return {"bytes": r["bytes"], "total": r["total"], "resident": r["resident"], "host_bytes": r["host_bytes"]}


def main(argv: list[str] | None = None) -> int:
    """The CLI.  Exit codes: 0 every role fits, 1 some do not (the plan is printed), 2 bad
    arguments or config.  With argv None (python -m rlengine.plan) it exits with that code, since
    plan.py's __main__ discards the return value."""
    from rlengine.memory_report import cli

    code = cli(argv)
    if argv is None:
        sys.exit(code)
    return code

