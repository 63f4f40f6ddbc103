"""One job from a validated config: start Ray, place the roles, loop the controller, write results."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import ray

from rlengine import checkpoint, faults, lora, resume, tiny
from rlengine.config import RootConfig, to_dict
from rlengine.plan import Plan
from rlengine.controller import Controller, Roles
from rlengine.data import PromptEncoder, PromptLoader
from rlengine.evaluate import heldout_sets
from rlengine.placement import alive_nodes, check_resources, describe, release, reserve, role_specs
from rlengine.rewards import RewardManager
from rlengine.stages import Stage, get_stage
from rlengine.tracking import Tracker, setup_logging, write_summary
from rlengine.workers.group import WorkerGroup, rendezvous

log = logging.getLogger("rlengine")
REPO = Path(__file__).resolve().parent.parent


class RunInterrupted(RuntimeError):
    """The run stopped before its last step and can be resumed (exit code 75, EX_TEMPFAIL)."""

    exit_code = 75


class GracefulStop:
    """SIGTERM / SIGINT: finish the current step, write a checkpoint, stop. A second signal
    abandons the step at once (the last checkpoint stays the newest)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        return self.install()

    def install(self):
        """(Re)install the handlers: ray.init puts its own SIGTERM handler (abort) on the driver,
        so this runs again once Ray is up."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old = signal.signal(sig, self._handle)
                self._old.setdefault(sig, old)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            raise RunInterrupted(f"{name} again: abandoning the current step without a checkpoint")
        self.signum = signum
        log.warning("%s: finishing the current step, then writing a checkpoint and stopping "
                    "(send it again to stop at once)", name)


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30),
              "MALLOC_TOP_PAD_": str(1 << 30)}


def actor_env() -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
           # torch.distributed warns on every reduce_scatter DeepSpeed issues; keep the console readable.
           "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning"),
           "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    # glibc returns freed activation buffers (> the 32 MiB mmap threshold) to the kernel and
    # page-faults them back on the next micro-batch: keep them in the heap instead (measured ~5%
    # of a CPU update, and most of its system time).  A user's own setting wins.
    env.update({k: v for k, v in MALLOC_ENV.items() if k not in os.environ})
    for k in ("RLENGINE_CACHE", "HF_HUB_OFFLINE", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "VLLM_CACHE_ROOT",
              faults.ENV, faults.STATE_ENV, faults.TARGET_ENV):
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


def _import(spec: str):
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_roles(cfg: RootConfig, plan: Plan, stage: Stage, paths: dict[str, str]) -> tuple[Roles, object]:
    from rlengine.workers.critic import CriticWorker
    from rlengine.workers.reference import ReferenceWorker
    from rlengine.workers.reward_model import RewardModelWorker
    from rlengine.workers.rollout import RolloutWorker
    from rlengine.workers.teacher import TeacherWorker, vocab_size

    specs = role_specs(cfg, plan)
    check_resources(specs, ray.cluster_resources(), alive_nodes())
    colocate = cfg.resources.colocate and plan.use_rollout
    pgs = reserve(specs, colocate_with="trainer" if colocate else None)
    spec = {s.name: s for s in specs}
    env = actor_env()
    ws = cfg.trainer.world_size

    def group(name, cls, init):
        s = spec["trainer" if name == "rollout" and colocate else name]
        pg, offset = pgs[name]
        share = 0.5 if colocate and name in ("trainer", "rollout") else 1.0  # two actors per bundle
        count = cfg.rollout.num_workers if name == "rollout" else s.count
        restarts = cfg.fault.max_restarts if name in ("rollout", "reference", "reward_model", "teacher") else 0
        return WorkerGroup(name, cls, count, pg, offset, s.cpus * share, s.gpus * share, init, env,
                           custom={k: v * share for k, v in s.custom.items()}, max_restarts=restarts)

    def ranks(path, role):
        host, port = rendezvous(*pgs[role])  # rank 0's node: the group may span nodes
        return lambda rank: ((cfg, plan, path, rank, ws, host, port), {})

    model, tok = paths["model"], paths["tokenizer"]
    roles = Roles(trainer=group("trainer", _import(stage.trainer), ranks(model, "trainer")) if plan.use_trainer
                  else None)
    if plan.use_rollout and not colocate:
        roles.rollout = group("rollout", RolloutWorker, lambda rank: ((cfg, model, tok, rank), {}))
    if plan.use_reference and not plan.reference_in_trainer:
        roles.reference = group("reference", ReferenceWorker, lambda rank: ((cfg, model, plan.micro_batch_size), {}))
    if plan.use_critic:
        roles.critic = group("critic", CriticWorker, ranks(paths["critic"], "critic"))
    if plan.use_reward_model:
        roles.reward_model = group("reward_model", RewardModelWorker, lambda rank: (
            (cfg, paths["reward_model"], paths["reward_model_tokenizer"], plan.micro_batch_size), {}))
    if plan.use_teacher:
        student_vocab = vocab_size(paths["model"])
        roles.teacher = group("teacher", TeacherWorker, lambda rank: (
            (cfg, paths["teacher"], plan.micro_batch_size, student_vocab), {}))
    if colocate:
        # vLLM starts only if gpu_memory_utilization x device memory is free: the trainer ranks'
        # resident states first, so that check (and the KV cache size) sees the memory the engines
        # will really share.  The engines sleep once the controller exists (job._run).
        roles.trainer.placement()
        roles.rollout = group("rollout", RolloutWorker, lambda rank: (
            (cfg, model, tok, rank), {"sleep_level": plan.sleep_level}))
    # Constructors run concurrently; wait for all (ZeRO-3 ranks must meet to initialise).
    for g in roles.all():
        g.placement()
    return roles, pgs


def resolve_paths(cfg: RootConfig, plan: Plan) -> dict[str, str]:
    """Local paths for every model the job loads; `tiny:` artefacts that need training are built first."""
    wanted = {"model": cfg.model.path, "tokenizer": cfg.model.tokenizer_path or cfg.model.path}
    if plan.use_critic:
        wanted["critic"] = cfg.critic.model_path or cfg.model.path
    if cfg.reward_model.path:
        wanted["reward_model"] = cfg.reward_model.path
        wanted["reward_model_tokenizer"] = cfg.reward_model.tokenizer_path or cfg.reward_model.path
    if plan.use_teacher:
        wanted["teacher"] = cfg.teacher.path
        wanted["teacher_tokenizer"] = cfg.teacher.tokenizer_path or cfg.teacher.path
    for path in wanted.values():
        if tiny.is_tiny(path) and tiny.tiny_name(path) in tiny.TRAINED and not tiny.is_built(tiny.tiny_name(path)):
            build_tiny(tiny.tiny_name(path), cfg)
    paths = {k: tiny.resolve_path(v) for k, v in wanted.items()}
    if plan.use_teacher:
        from rlengine.workers.teacher import check_vocabulary

        check_vocabulary((paths["model"], paths["tokenizer"]), (paths["teacher"], paths["teacher_tokenizer"]))
    return paths


def build_tiny(name: str, parent: RootConfig) -> None:
    """A trained `tiny:` artefact is missing: run its recipe once (deterministic, cached, file-locked)."""
    from filelock import FileLock

    from rlengine.compose import load_config

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
    with GracefulStop() as stop:
        return _run(cfg, plan, stop)


def _run(cfg: RootConfig, plan: Plan, stop: GracefulStop) -> dict:
    """Compose (done by the caller), plan, resume decision, data, roles, loop, results."""
    started = time.time()
    stage = get_stage(cfg.algorithm.name)(cfg, plan)
    # Everything that can be checked without Ray is checked before it starts: the checkpoint to
    # resume from, reward functions and evaluation checks, data.
    decision = resume.decide(cfg, plan)
    run_dir = decision.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    rewards = RewardManager(cfg.reward)
    train_rows, test_rows = stage.load_data()
    stage.start(run_dir)
    test_rows = test_rows[:cfg.data.max_test_rows] if cfg.data.max_test_rows else test_rows
    train_rows = train_rows[:cfg.data.max_train_rows] if cfg.data.max_train_rows else train_rows
    heldout = heldout_sets(cfg, stage.heldout_rows(test_rows))
    loader = PromptLoader(train_rows, cfg.data.prompts_per_step, cfg.seed, cfg.data.shuffle)
    if faults.ENV in os.environ:
        os.environ.setdefault(faults.STATE_ENV, str(run_dir / ".faults"))
    own_ray = start_ray(cfg)
    stop.install()
    roles = pgs = tracker = None
    ok = False
    try:
        paths = resolve_paths(cfg, plan)
        setup_logging(run_dir)  # a nested tiny:* build pointed the log elsewhere
        log.info("run %s: models=%s run_dir=%s", cfg.recipe, paths, run_dir)
        if plan.lora_sync is not None and plan.lora_sync != cfg.rollout.lora_sync:
            log.info("%s: the engines get merged weights (W0 + BA) after each update instead of the adapter "
                     "(rollout.lora_sync=merged)", lora.vllm_serves(cfg.model)[1])
        from transformers import AutoTokenizer

        d = cfg.data
        encoder = PromptEncoder(AutoTokenizer.from_pretrained(paths["tokenizer"]), d.prompt_key, d.answer_key,
                                d.chat_template, d.system_prompt, d.max_prompt_tokens)
        t0 = time.time()
        roles, pgs = build_roles(cfg, plan, stage, paths)
        where = describe({g.name: [p["node_id"] for p in g.placement()] for g in roles.all()})
        log.info("roles up in %.1fs; placement: %s", time.time() - t0, where)
        ctl = Controller(cfg, plan, stage, roles, rewards, encoder, loader, test_rows, heldout)
        ctl.sleep_engines()  # hybrid colocation: vLLM sleeps until its first generation
        start_step, carried = resume.begin(decision, ctl, roles)
        if roles.rollout is not None and (start_step or plan.lora):
            # The engines start from model.path; a resumed policy, or a LoRA policy's base (its
            # quantized or PiSSA-initialised W0 differs from model.path's), reaches them first.
            ctl.sync_weights()
        if start_step and roles.rollout is not None:
            log.info("resumed from %s: continuing at step %d of %d", decision.checkpoint, start_step + 1,
                     stage.total_steps())
        tracker = Tracker(run_dir, cfg.tracking, stage.total_steps(), to_dict(cfg), start_step)
        if start_step:
            tracker.note(f"resumed from {decision.checkpoint} (step {start_step})")
        summary = _loop(cfg, plan, stage, ctl, roles, tracker, run_dir, paths["tokenizer"], start_step, carried, stop)
        summary["placement"] = where
        summary["wall_time_s"] = time.time() - started
        write_summary(run_dir, summary)
        stage.finish(summary)
        log.info("done: %s", {k: summary[k] for k in (f"{stage.headline[0]}_before", f"{stage.headline[0]}_after",
                                                      "steps", "wall_time_s") if k in summary})
        print(f"summary: {run_dir / 'summary.json'}", flush=True)
        ok = True
        return summary
    except ray.exceptions.RayActorError as e:
        last, _ = checkpoint.newest_complete(run_dir)
        who = next((f"{g.name} rank {rank}" for g in (roles.all() if roles else []) for rank, a in enumerate(g.actors)
                    if a._actor_id.hex() == getattr(e, "actor_id", None)), "a worker")
        first = str(e).strip().splitlines()[0][:300]
        raise RunInterrupted(
            f"{who} died and cannot be replaced within the step ({type(e).__name__}: {first}). "
            + (f"The newest complete checkpoint is {last}. " if last else "No checkpoint was written yet. ")
            + f"Rerun the same command to resume (resume=auto, run_dir={run_dir}).") from None
    finally:
        if tracker is not None:
            tracker.close()
        rewards.close()
        stage.close()
        for held in heldout:
            held.close()
        if roles is not None:
            for g in roles.all():
                # Only the rollout engines have something to shut down; the others may be stuck in
                # a collective with a dead peer, so they are killed without asking.
                g.kill(graceful=ok or g.name == "rollout")
        if pgs is not None:
            release(pgs)
        if own_ray:
            ray.shutdown()


def _note_eval(tracker: Tracker, stage: Stage, ev: dict, when: str, summary: dict) -> None:
    key, name = stage.headline
    if key not in ev:  # a stage with nothing to evaluate (best_of_n)
        return
    line = f"held-out {name} {when}:{' ' if when == 'after' else ''} {ev[key]:.3f}"
    if when == "before" and "eval/n" in ev:
        line += f" (n={int(ev['eval/n'])}{', greedy' if key == 'eval/accuracy' else ''})"
    if when == "after" and f"{key}_before" in summary:
        line += f" (before: {summary[f'{key}_before']:.3f})"
    others = [f"{k.split('/')[1]} {ev[k]:.3f}" for k in stage.summary_keys(stage.cfg)[1:] if k in ev]
    tracker.note(line + (f"; {', '.join(others)}" if others else ""))


def _loop(cfg: RootConfig, plan: Plan, stage: Stage, ctl: Controller, roles: Roles, tracker: Tracker, run_dir: Path,
          tok_path: str, start_step: int, carried: dict, stop: GracefulStop) -> dict:
    keys = stage.summary_keys(cfg)
    summary: dict = {"recipe": cfg.recipe, "algorithm": cfg.algorithm.name, "run_dir": str(run_dir),
                     "resumed_from_step": start_step or None, "seed": cfg.seed,
                     "evaluation": {h.name or "test": h.describe() for h in ctl.heldout}, **carried}

    def save(step: int, hf: bool) -> Path:
        kept = {f"{k}_before": summary[f"{k}_before"] for k in keys if f"{k}_before" in summary}
        return resume.save(cfg, plan, ctl, roles, run_dir, step, tok_path, hf, kept)

    if cfg.eval.before and not start_step:
        ev = ctl.evaluate()
        summary.update({f"{k}_before": ev[k] for k in keys if k in ev})
        _note_eval(tracker, stage, ev, "before", summary)
        if ev:  # empty: the stage evaluates nothing
            tracker.log(0, ev, advance=False)
    metrics: dict = {}
    step = saved = start_step
    every = stage.eval_every()
    total = stage.total_steps()
    for step in range(start_step + 1, total + 1):
        if stop.signum is not None:
            step -= 1
            break
        metrics = ctl.step(step)
        if every and step % every == 0 and step < total:
            metrics.update(ctl.evaluate())
        tracker.log(step, metrics)
        if stage.should_stop(metrics):
            log.info("%s %.3f >= the stage's target: stopping at step %d", stage.headline[0],
                     metrics[stage.headline[0]], step)
            break
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step < total:
            save(step, hf=False)
            saved = step
    if stop.signum is not None and step < total:
        where = save(step, hf=False) if step > saved else checkpoint.newest_complete(run_dir)[0]
        raise RunInterrupted(f"stopped by {signal.Signals(stop.signum).name} after step {step} of "
                             f"{total}; checkpoint: {where or 'none (no step done)'}. "
                             f"Rerun the same command to resume (resume=auto, run_dir={run_dir}).")
    summary["steps"] = step
    if cfg.eval.after:
        ev = ctl.evaluate()
        summary.update({f"{k}_after": ev[k] for k in keys if k in ev})
        summary.update({k: ev[k] for k in keys if k in ev})
        _note_eval(tracker, stage, ev, "after", summary)
        if ev:
            tracker.log(step, ev, advance=False)
        metrics.update(ev)
    summary["faults"] = dict(ctl.faults)
    summary.update(stage.results())
    hf = cfg.checkpoint.save_hf and plan.use_trainer  # a stage that does not train has no model to export
    final = save(step, hf=hf)
    summary["checkpoint"] = str(final)
    if hf:
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
