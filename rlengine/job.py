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
from rlengine.data import PromptEncoder, PromptLoader, check_preference_rows, check_rows, load_rows
from rlengine.placement import alive_nodes, check_resources, describe, release, reserve, role_specs
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


def build_roles(cfg: RootConfig, plan: Plan, paths: dict[str, str]) -> tuple[Roles, object]:
    from rlengine.workers.critic import CriticWorker
    from rlengine.workers.reference import ReferenceWorker
    from rlengine.workers.reward_model import RewardModelWorker, RewardTrainerWorker
    from rlengine.workers.rollout import RolloutWorker
    from rlengine.workers.trainer import TrainerWorker

    specs = role_specs(cfg, plan)
    check_resources(specs, ray.cluster_resources(), alive_nodes())
    colocate = cfg.resources.colocate and cfg.algorithm.name != "rm"
    pgs = reserve(specs, colocate_with="trainer" if colocate else None)
    spec = {s.name: s for s in specs}
    env = actor_env()
    ws = cfg.trainer.world_size

    def group(name, cls, init):
        s = spec["trainer" if name == "rollout" and colocate else name]
        pg, offset = pgs[name]
        share = 0.5 if colocate and name in ("trainer", "rollout") else 1.0  # two actors per bundle
        count = cfg.rollout.num_workers if name == "rollout" else s.count
        return WorkerGroup(name, cls, count, pg, offset, s.cpus * share, s.gpus * share, init, env,
                           custom={k: v * share for k, v in s.custom.items()})

    def ranks(path):
        port = free_port()
        return lambda rank: ((cfg, plan, path, rank, ws, "127.0.0.1", port), {})

    model, tok = paths["model"], paths["tokenizer"]
    roles = Roles(trainer=group("trainer", RewardTrainerWorker if cfg.algorithm.name == "rm" else TrainerWorker,
                                ranks(model)))
    if "rollout" in pgs:
        roles.rollout = group("rollout", RolloutWorker, lambda rank: ((cfg, model, tok, rank), {}))
    if plan.use_reference:
        roles.reference = group("reference", ReferenceWorker, lambda rank: ((cfg, model, plan.micro_batch_size), {}))
    if plan.use_critic:
        roles.critic = group("critic", CriticWorker, ranks(paths["critic"]))
    if plan.use_reward_model:
        roles.reward_model = group("reward_model", RewardModelWorker, lambda rank: (
            (cfg, paths["reward_model"], paths["reward_model_tokenizer"], plan.micro_batch_size), {}))
    # Constructors run concurrently; wait for all (ZeRO-3 ranks must meet to initialise).
    for g in roles.all():
        g.placement()
    return roles, pgs


def resolve_paths(cfg: RootConfig) -> dict[str, str]:
    """Local paths for every model the job loads; `tiny:` artefacts that need training are built first."""
    wanted = {"model": cfg.model.path, "tokenizer": cfg.model.tokenizer_path or cfg.model.path}
    if cfg.algorithm.name == "ppo":
        wanted["critic"] = cfg.critic.model_path or cfg.model.path
    if cfg.reward_model.path:
        wanted["reward_model"] = cfg.reward_model.path
        wanted["reward_model_tokenizer"] = cfg.reward_model.tokenizer_path or cfg.reward_model.path
    for path in wanted.values():
        if tiny.is_tiny(path) and tiny.tiny_name(path) in tiny.TRAINED and not tiny.is_built(tiny.tiny_name(path)):
            build_tiny(tiny.tiny_name(path), cfg)
    return {k: tiny.resolve_path(v) for k, v in wanted.items()}


def build_tiny(name: str, parent: RootConfig) -> None:
    """A trained `tiny:` artefact is missing: run its recipe once (deterministic, cached, file-locked)."""
    from filelock import FileLock

    from rlengine.main import load_config

    root = tiny.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{name}.lock")):
        if tiny.is_built(name):
            return
        recipe = tiny.TRAINED[name]
        log.info("tiny:%s not built yet: running recipe=%s first (one time, cached in %s)",
                 name, recipe, tiny.trained_dir(name))
        cfg, plan = load_config(recipe, [f"run_dir={root / (name + '_run')}",
                                         f"checkpoint.export_hf_to={tiny.trained_dir(name)}",
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
    if cfg.algorithm.name == "rm":
        train_rows, skipped = check_preference_rows(train_rows, d, d.train_path)
        test_rows, skipped_test = check_preference_rows(test_rows, d, d.test_path)
        if skipped or skipped_test:
            log.warning("data.bad_rows=skip: dropped %d training and %d test preference rows", skipped, skipped_test)
    else:
        check_rows(train_rows, (d.prompt_key, d.answer_key), d.train_path)
        check_rows(test_rows, (d.prompt_key, d.answer_key), d.test_path)
    if d.max_test_rows:
        test_rows = test_rows[:d.max_test_rows]
    loader = PromptLoader(train_rows, d.prompts_per_step, cfg.seed, d.shuffle)
    own_ray = start_ray(cfg)
    roles = pgs = tracker = None
    try:
        paths = resolve_paths(cfg)
        model_path, tok_path = paths["model"], paths["tokenizer"]
        setup_logging(run_dir)  # a nested tiny:* build pointed the log elsewhere
        log.info("run %s: models=%s run_dir=%s", cfg.recipe, paths, run_dir)
        from transformers import AutoTokenizer

        encoder = PromptEncoder(AutoTokenizer.from_pretrained(tok_path), d.prompt_key, d.answer_key,
                                d.chat_template, d.system_prompt, d.max_prompt_tokens)
        t0 = time.time()
        roles, pgs = build_roles(cfg, plan, paths)
        where = describe({g.name: [p["node_id"] for p in g.placement()] for g in roles.all()})
        log.info("roles up in %.1fs; placement: %s", time.time() - t0, where)
        ctl = Controller(cfg, plan, roles, rewards, encoder, loader, test_rows)
        tracker = Tracker(run_dir, cfg.tracking, cfg.trainer.total_steps, to_dict(cfg))
        summary = _loop(cfg, plan, ctl, roles, tracker, run_dir, tok_path)
        summary["placement"] = where
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
            for g in roles.all():
                g.kill()
        if pgs is not None:
            release(pgs)
        if own_ray:
            ray.shutdown()


def _evaluate(cfg: RootConfig, ctl: Controller) -> tuple[dict, str, float]:
    """(metrics, headline name, headline value) for the job's kind of evaluation."""
    if cfg.algorithm.name == "rm":
        ev = ctl.evaluate_pairs()
        return ev, "pairwise accuracy", ev["eval/pairwise_accuracy"]
    if cfg.algorithm.name == "sft":
        ctl.sync_weights()  # SFT trains without sampling: push the weights only to evaluate
    ev = ctl.evaluate()
    return ev, "accuracy", ev["eval/accuracy"]


def _loop(cfg: RootConfig, plan: Plan, ctl: Controller, roles: Roles, tracker: Tracker, run_dir: Path,
          tok_path: str) -> dict:
    kind = cfg.algorithm.name
    key = "eval/pairwise_accuracy" if kind == "rm" else "eval/accuracy"
    step_fn = {"sft": ctl.sft_step, "rm": ctl.rm_step}.get(kind, ctl.rl_step)
    summary: dict = {"recipe": cfg.recipe, "algorithm": kind, "run_dir": str(run_dir),
                     "resumed_from_step": None, "seed": cfg.seed}
    if cfg.eval.before:
        ev, name, value = _evaluate(cfg, ctl)
        summary[f"{key}_before"] = value
        tracker.note(f"held-out {name} before: {value:.3f} (n={int(ev['eval/n'])}{', greedy' if kind != 'rm' else ''})")
        tracker.log(0, ev, advance=False)
    metrics: dict = {}
    step = 0
    for step in range(1, cfg.trainer.total_steps + 1):
        metrics = step_fn(step)
        every = cfg.eval.every_steps or (cfg.sft.eval_every_steps if kind in ("sft", "rm") else 0)
        if every and step % every == 0 and step < cfg.trainer.total_steps:
            metrics.update(_evaluate(cfg, ctl)[0])
        tracker.log(step, metrics)
        if kind == "sft" and cfg.sft.stop_at_accuracy is not None and metrics.get(key, 0) >= cfg.sft.stop_at_accuracy:
            log.info("%s %.3f >= sft.stop_at_accuracy: stopping at step %d", key, metrics[key], step)
            break
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step < cfg.trainer.total_steps:
            save_checkpoint(cfg, ctl, roles, run_dir, step, tok_path, hf=False)
    summary["steps"] = step
    if cfg.eval.after:
        ev, name, value = _evaluate(cfg, ctl)
        summary[f"{key}_after"] = value
        summary[key] = value
        tracker.note(f"held-out {name} after:  {value:.3f} (before: {summary.get(f'{key}_before', float('nan')):.3f})")
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
    state = {"step": step, "loader": ctl.loader.state_dict(), "recipe": cfg.recipe, "model": cfg.model.path,
             "kl_ctl": ctl.kl_ctl.state_dict()}
    return checkpoint.commit(run_dir, step, state, cfg.checkpoint.keep_last)
