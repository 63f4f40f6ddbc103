"""What a training kind declares: its roles, data, batch, step, update and evaluation.

A `Stage` subclass is read by every part of a job: validation asks it which roles and how many
sequences per data row it needs (`uses`, `sequences_per_row`, `check`, `plan`), placement and job
setup build the roles it uses, the loop calls `step` and `evaluate`, trainer ranks run its
`update`, and the summary records its `summary_keys`.  Nothing else compares algorithm names.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rlengine.data import check_rows, load_rows

if TYPE_CHECKING:
    from rlengine.config import RootConfig
    from rlengine.plan import Plan


@dataclass(frozen=True)
class Uses:
    """The roles a stage needs besides the trainer."""

    rollout: bool  # vLLM engines: sampling, or greedy generation for evaluation
    reference: bool = False
    critic: bool = False
    reward_model: bool = False
    teacher: bool = False  # a frozen teacher scoring tokens (distillation)


class Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.t[f"timing_s/{name}"] = self.t.get(f"timing_s/{name}", 0.0) + time.perf_counter() - t0


def mean_dicts(ds: list[dict]) -> dict:
    keys = {k for d in ds for k in d}
    return {k: sum(d[k] for d in ds if k in d) / sum(1 for d in ds if k in d) for k in keys}


class Stage:
    name: ClassVar[str] = ""
    # "module:Class" of the trainer role (imported in job setup only: config checks stay Ray-free).
    trainer: ClassVar[str] = "rlengine.workers.trainer:TrainerWorker"
    # Samples from the policy every step; otherwise trains on data rows and pushes weights to the
    # engines only to evaluate.
    online: ClassVar[bool] = False
    # Takes a reward model's score (reward_model.path) or a critic (critic.model_path).
    scores_samples: ClassVar[bool] = False
    # Trains the policy.  A stage that does not (sampling) has no trainer role: no DeepSpeed ranks or
    # their devices, the engines serve model.path unchanged, and a checkpoint is the driver state.
    trains: ClassVar[bool] = True
    # The headline held-out metric and how the console names it.
    headline: ClassVar[tuple[str, str]] = ("eval/accuracy", "accuracy")
    # Data sets the stage writes, listed in summary.json `outputs` (what a pipeline stage may consume).
    output_names: ClassVar[tuple[str, ...]] = ()

    # Config time: class methods, run before Ray (validation, placement, --cfg).

    @classmethod
    def sequences_per_row(cls, cfg: RootConfig) -> int:
        """Sequences one data row becomes in a step's batch."""
        return 1

    @classmethod
    def uses(cls, cfg: RootConfig) -> Uses:
        return Uses(rollout=True)

    @classmethod
    def check(cls, cfg: RootConfig) -> None:
        """Stage-specific rules; raise ConfigError naming the key."""

    @classmethod
    def plan(cls, cfg: RootConfig) -> dict:
        """Stage-specific Plan fields (see config.Plan)."""
        return {}

    @classmethod
    def summary_keys(cls, cfg: RootConfig) -> list[str]:
        """Held-out metrics recorded before and after training in summary.json."""
        sets = [f"eval/{s.name}/accuracy" for s in cfg.eval.sets]
        return [cls.headline[0], *sets]

    # Run time: one instance per job.

    def __init__(self, cfg: RootConfig, plan: Plan):
        self.cfg, self.plan = cfg, plan

    def load_data(self) -> tuple[list[dict], list[dict]]:
        """(training rows, held-out rows), checked: a bad row names its file and line."""
        d = self.cfg.data
        train = load_rows(d.train_path, d.train_split, d.config_name)
        test = load_rows(d.test_path, d.test_split, d.test_config_name or d.config_name)
        check_rows(train, (d.prompt_key, d.answer_key), f"{d.train_path} (data.train_path)")
        check_rows(test, (d.prompt_key, d.answer_key), f"{d.test_path} (data.test_path)")
        return train, test

    def start(self, run_dir: Path) -> None:
        """Before Ray, once the run directory is decided: e.g. where the stage writes its outputs."""

    def total_steps(self) -> int:
        """Steps of this run (after load_data): trainer.total_steps, unless the stage's data decides."""
        return self.cfg.trainer.total_steps

    def heldout_rows(self, test_rows: list[dict]) -> list[dict] | None:
        """The held-out rows answered by greedy generation (None: `evaluate` scores them itself)."""
        return test_rows

    def eval_every(self) -> int:
        return self.cfg.eval.every_steps

    def should_stop(self, metrics: dict) -> bool:
        return False

    def step(self, ctl, step: int) -> dict:
        raise NotImplementedError

    def evaluate(self, ctl) -> dict:
        """Held-out metrics: by default greedy generation on data.test_path and every eval.sets
        entry, scored by the declared evaluation (eval.fn, eval.threshold)."""
        if not self.online:
            ctl.sync_weights()  # trained without sampling: the engines hold the old weights
        return ctl.evaluate_generation()

    def results(self) -> dict:
        """Entries of summary.json the stage adds after its last step (e.g. the files it wrote)."""
        return {}

    def finish(self, summary: dict) -> None:
        """After summary.json is written: raise to fail the job on a result that must not be used."""

    def close(self) -> None:
        """Release what the stage holds (scoring pools), however the job ends."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # On every trainer rank (collective): `worker` is the TrainerWorker.

    @staticmethod
    def update(worker, batch) -> dict:
        raise NotImplementedError
