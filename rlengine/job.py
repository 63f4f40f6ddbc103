"""One job from a validated config: start Ray, place the roles, loop the controller, write results."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import ray

from rlengine import checkpoint, tiny
from rlengine.config import Plan, RootConfig, to_dict
from rlengine.controller import Controller, Roles
from rlengine.data import PromptEncoder, PromptLoader, check_rows, load_rows
from rlengine.placement import check_resources, reserve, role_specs
from rlengine.rewards import RewardManager
from rlengine.tracking import Tracker, setup_logging, write_summary
from rlengine.workers.group import WorkerGroup, free_port

log = logging.getLogger("rlengine")
REPO = Path(__file__).resolve().parent.parent


def default_run_dir(cfg: RootConfig) -> Path:
    return Path(cfg.run_dir or Path("outputs") / cfg.recipe / time.strftime("%Y%m%d-%H%M%S")).resolve()


def actor_env() -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
           # torch.distributed warns on every reduce_scatter DeepSpeed issues; keep the console readable.
           "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning"),
           "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    for k in ("RLENGINE_CACHE", "HF_HUB_OFFLINE", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "VLLM_CACHE_ROOT"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def start_ray(cfg: RootConfig) -> bool:
    """Join `ray.address` or start a local cluster; returns True when this call started Ray."""
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, logging_level=logging.WARNING, runtime_env={"env_vars": actor_env()})
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, **kw)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus or max(2, os.cpu_count() or 2), **kw)
    return True


def build_roles(cfg: RootConfig, plan: Plan, model_path: str, tokenizer_path: str) -> tuple[Roles, object]:
    from rlengine.workers.reference import ReferenceWorker
    from rlengine.workers.rollout import RolloutWorker
    from rlengine.workers.trainer import TrainerWorker

    specs = role_specs(cfg, plan)
    check_resources(specs, ray.cluster_resources())
    pg, offsets = reserve(specs)
    spec = {s.name: s for s in specs}
    env = actor_env()
    port = free_port()

    def group(name, cls, init):
        s = spec[name]
        return WorkerGroup(name, cls, s.count, pg, offsets[name], s.cpus, s.gpus, init, env)

    trainer = group("trainer", TrainerWorker, lambda rank: (
        (cfg, plan, model_path, rank, cfg.trainer.world_size, "127.0.0.1", port), {}))
    rollout = group("rollout", RolloutWorker, lambda rank: ((cfg, model_path, tokenizer_path, rank), {}))
    reference = None
    if plan.use_reference:
        reference = group("reference", ReferenceWorker, lambda rank: ((cfg, model_path, plan.micro_batch_size), {}))
    # Constructors run concurrently; wait for all (ZeRO-3 ranks must meet to initialise).
    for g in (trainer, rollout, reference):
        if g is not None:
            g.placement()
    return Roles(trainer=trainer, rollout=rollout, reference=reference), pg


def resolve_model(cfg: RootConfig) -> tuple[str, str]:
    if cfg.model.path == "tiny:sft" and not tiny.sft_is_built():
        build_tiny_sft(cfg)
    model = tiny.resolve_path(cfg.model.path)
    tok = tiny.resolve_path(cfg.model.tokenizer_path) if cfg.model.tokenizer_path else model
    return model, tok


def build_tiny_sft(parent: RootConfig) -> None:
    """`tiny:sft` is missing: run recipe=sft_tiny once (deterministic, cached, file-locked)."""
    from filelock import FileLock

    from rlengine.main import load_config

    root = tiny.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "sft.lock")):
        if tiny.sft_is_built():
            return
        log.info("tiny:sft not built yet: running recipe=sft_tiny first (one time, cached in %s)", tiny.sft_dir())
        cfg, plan = load_config("sft_tiny", [f"run_dir={root / 'sft_run'}", f"checkpoint.export_hf_to={tiny.sft_dir()}",
                                             f"tracking.progress_bar={str(parent.tracking.progress_bar).lower()}"])
        run(cfg, plan)


def run(cfg: RootConfig, plan: Plan) -> dict:
    started = time.time()
    run_dir = default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    # Everything that can be checked without Ray is checked before it starts: reward functions, data.
    rewards = RewardManager(cfg.reward)
    d = cfg.data
    train_rows, test_rows = load_rows(d.train_path, d.train_split), load_rows(d.test_path, d.test_split)
    check_rows(train_rows, (d.prompt_key, d.answer_key), d.train_path)
    check_rows(test_rows, (d.prompt_key, d.answer_key), d.test_path)
    if d.max_test_rows:
        test_rows = test_rows[:d.max_test_rows]
    loader = PromptLoader(train_rows, d.prompts_per_step, cfg.seed, d.shuffle)
    own_ray = start_ray(cfg)
    roles = pg = tracker = None
    try:
        model_path, tok_path = resolve_model(cfg)
        setup_logging(run_dir)  # a nested tiny:sft build pointed the log elsewhere
        log.info("run %s: model=%s run_dir=%s", cfg.recipe, model_path, run_dir)
        from transformers import AutoTokenizer

        encoder = PromptEncoder(AutoTokenizer.from_pretrained(tok_path), d.prompt_key, d.answer_key,
                                d.chat_template, d.system_prompt, d.max_prompt_tokens)
        t0 = time.time()
        roles, pg = build_roles(cfg, plan, model_path, tok_path)
        log.info("roles up in %.1fs; placement: %s", time.time() - t0,
                 {g.name: g.placement() for g in (roles.trainer, roles.rollout, roles.reference) if g})
        ctl = Controller(cfg, plan, roles, rewards, encoder, loader, test_rows)
        tracker = Tracker(run_dir, cfg.tracking, cfg.trainer.total_steps, to_dict(cfg))
        summary = _loop(cfg, plan, ctl, roles, tracker, run_dir, tok_path)
        summary["wall_time_s"] = time.time() - started
        write_summary(run_dir, summary)
        log.info("done: %s", {k: summary[k] for k in ("eval/accuracy_before", "eval/accuracy_after", "steps",
                                                      "wall_time_s") if k in summary})
        print(f"summary: {run_dir / 'summary.json'}", flush=True)
        return summary
    finally:
        if tracker is not None:
            tracker.close()
        rewards.close()
        if roles is not None:
            for g in (roles.rollout, roles.reference, roles.trainer):
                if g is not None:
                    g.kill()
        if pg is not None:
            ray.util.remove_placement_group(pg)
        if own_ray:
            ray.shutdown()


def _loop(cfg: RootConfig, plan: Plan, ctl: Controller, roles: Roles, tracker: Tracker, run_dir: Path,
          tok_path: str) -> dict:
    sft = cfg.algorithm.name == "sft"
    summary: dict = {"recipe": cfg.recipe, "algorithm": cfg.algorithm.name, "run_dir": str(run_dir),
                     "resumed_from_step": None, "seed": cfg.seed}
    if cfg.eval.before:
        if sft:
            ctl.sync_weights()
        ev = ctl.evaluate()
        summary["eval/accuracy_before"] = ev["eval/accuracy"]
        tracker.note(f"held-out accuracy before: {ev['eval/accuracy']:.3f} (n={int(ev['eval/n'])}, greedy)")
        tracker.log(0, ev, advance=False)
    metrics: dict = {}
    step = 0
    for step in range(1, cfg.trainer.total_steps + 1):
        metrics = ctl.sft_step(step) if sft else ctl.rl_step(step)
        every = cfg.eval.every_steps or (cfg.sft.eval_every_steps if sft else 0)
        if every and step % every == 0 and step < cfg.trainer.total_steps:
            if sft:
                ctl.sync_weights()
            metrics.update(ctl.evaluate())
        tracker.log(step, metrics)
        if sft and cfg.sft.stop_at_accuracy is not None and metrics.get("eval/accuracy", 0) >= cfg.sft.stop_at_accuracy:
            log.info("eval/accuracy %.3f >= sft.stop_at_accuracy: stopping at step %d", metrics["eval/accuracy"], step)
            break
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step < cfg.trainer.total_steps:
            save_checkpoint(cfg, ctl, roles, run_dir, step, tok_path, hf=False)
    summary["steps"] = step
    if cfg.eval.after:
        if sft:
            ctl.sync_weights()
        ev = ctl.evaluate()
        summary["eval/accuracy_after"] = ev["eval/accuracy"]
        tracker.note(f"held-out accuracy after:  {ev['eval/accuracy']:.3f} (before: "
                     f"{summary.get('eval/accuracy_before', float('nan')):.3f})")
        tracker.log(step, ev, advance=False)
        metrics.update(ev)
    final = save_checkpoint(cfg, ctl, roles, run_dir, step, tok_path, hf=cfg.checkpoint.save_hf)
    summary["checkpoint"] = str(final)
    if cfg.checkpoint.save_hf:
        summary["hf_checkpoint"] = str(final / "hf")
        if cfg.checkpoint.export_hf_to:
            dest = Path(cfg.checkpoint.export_hf_to)
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(final / "hf", tmp)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
    summary["final_metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return summary


def save_checkpoint(cfg: RootConfig, ctl: Controller, roles: Roles, run_dir: Path, step: int, tok_path: str,
                    hf: bool) -> Path:
    tmp = checkpoint.begin(run_dir, step)
    roles.trainer.call_all("save_checkpoint", str(tmp / "trainer"), f"step_{step:06d}")
    if hf:
        roles.trainer.call_all("save_hf", str(tmp / "hf"), tok_path)
    state = {"step": step, "loader": ctl.loader.state_dict(), "recipe": cfg.recipe, "model": cfg.model.path}
    return checkpoint.commit(run_dir, step, state, cfg.checkpoint.keep_last)
