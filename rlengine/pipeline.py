"""Pipeline recipes: stages chained by their outputs (the flywheel), run in order, each in its own run
directory; a rerun skips the stages that finished and resumes the one that was interrupted.

    python -m rlengine.main recipe=flywheel_tiny [pipeline.rounds=3] [stages.sft.trainer.lr=1e-3] [key=value]

A pipeline recipe is a YAML file in recipes/ with a top-level `pipeline:` key (rlengine/pipeline_spec.py
reads it).  Each stage names a stage recipe, its overrides, and the references it consumes:

    start          the pipeline's start_model
    NAME           stage NAME's model (the HF export in its summary.json), this round
    NAME.OUTPUT    a data set stage NAME wrote (summary.json `outputs`; the stage class's `outputs`)
    REF@prev       the same of the previous round
    A|B            A, or B where A does not exist (round 1 has no previous round)

`model`, `data`, `test_data`, `reward_model`, `critic` set model.path, data.train_path,
data.test_path, reward_model.path, critic.model_path; `inputs: {config.key: REF}` any other key.
Every stage of every round is composed and validated before anything runs; a value known only
once an earlier stage has run (its checkpoint, its data) is a placeholder then.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rlengine import tiny
from rlengine.compose import load_config
from rlengine.config import RootConfig, to_dict
from rlengine.errors import ConfigError
from rlengine.pipeline_report import SUMMARY, EvaluationError, evaluate_model, format_table, write_summary
from rlengine.pipeline_spec import Input, PipelineSpec, StageSpec, read
from rlengine.plan import Plan

log = logging.getLogger("rlengine.pipeline")


@dataclass(frozen=True)
class Instance:
    """One stage in one round (a `once` stage has only round 1)."""

    round: int
    stage: StageSpec

    @property
    def label(self) -> str:
        return f"round {self.round} {self.stage.name}"

    def run_dir(self, root: Path) -> Path:
        return root / f"round{self.round}" / self.stage.name


@dataclass(frozen=True)
class Result:
    """What a finished stage hands on: its model (HF export) and its named outputs."""

    model: Optional[str]
    outputs: dict


def instances(spec: PipelineSpec) -> list[Instance]:
    """Execution order: round by round, stages as listed."""
    return [Instance(r, s) for r in range(1, spec.rounds + 1) for s in spec.stages if r == 1 or not s.once]


def producer_round(inst: Instance, ref, spec: PipelineSpec) -> Optional[int]:
    """The round whose `ref.stage` it reads; None where there is none (`@prev` in round 1)."""
    if spec.stage(ref.stage).once:
        return 1
    r = inst.round - 1 if ref.prev else inst.round
    return r if r >= 1 else None


def choose(inst: Instance, inp: Input, spec: PipelineSpec):
    """The first alternative of `inp` that exists in this round: (ref, producer round or None)."""
    for ref in inp.alternatives:
        if ref.stage is None:
            return ref, None
        r = producer_round(inst, ref, spec)
        if r is not None:
            return ref, r
    raise ConfigError(inp.pkey, f"in round {inst.round}, {inp.text!r} has no previous round to read: add a "
                                f"fallback, e.g. '{inp.text}|start'", inp.where)


def _quote(value: str) -> str:
    """A Hydra override value that keeps paths with any characters whole (quotes, `=`, `,`, and
    `${` that OmegaConf would otherwise interpolate)."""
    # Hydra reads a backslash as an escape only before a quote (or the closing quote).
    value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"


def placeholder(ref, r: int) -> str:
    return f"<round {r} {ref.stage}: {ref.output or 'model'}>"


class Pipeline:
    """A pipeline recipe, every stage of every round composed and validated (`Pipeline.load`)."""

    def __init__(self, spec: PipelineSpec, configs: dict[tuple[int, str], tuple[RootConfig, Plan]], root: Path):
        self.spec, self.configs, self.root = spec, configs, root

    @classmethod
    def load(cls, recipe_file: Path, overrides: list[str]) -> "Pipeline":
        """Raises ConfigError before anything runs: unknown stages, forward references, unknown
        outputs, bad override keys, and any stage recipe that fails validation, naming the key."""
        spec = read(recipe_file, overrides)
        from rlengine import preflight

        configs: dict[tuple[int, str], tuple[RootConfig, Plan]] = {}
        # A stand-in for each stage's model before it exists: the model it started from (same
        # architecture), so the path and memory checks of later stages can run now too.
        standin: dict[tuple[int, str], str] = {}
        root = choose_root(spec)
        for inst in instances(spec):
            values, checked = {}, {}
            for inp in inst.stage.inputs:
                ref, r = choose(inst, inp, spec)
                if ref.stage is None:
                    values[inp.key] = checked[inp.key] = spec.start_model
                    continue
                _check_output(inp, ref, configs[(r, ref.stage)][0])
                values[inp.key] = placeholder(ref, r)
                # A data placeholder passes the path checks (they leave names without a suffix to the loader).
                checked[inp.key] = values[inp.key] if ref.output else standin[(r, ref.stage)]
            key = (inst.round, inst.stage.name)
            configs[key] = compose(spec, inst, values, root)
            cfg, plan = compose(spec, inst, checked, root) if checked != values else configs[key]
            standin[key] = cfg.model.path
            try:
                preflight.check(cfg, plan)
            except ConfigError as e:
                raise stage_error(spec, inst, e) from None
        return cls(spec, configs, root)

    def describe(self) -> str:
        """Every stage of every round: its recipe, where it runs and what it consumes (--cfg)."""
        lines = [f"pipeline {self.spec.name} ({self.spec.file}): {self.spec.rounds} round(s), start model "
                 f"{self.spec.start_model}, run_dir {self.root}",
                 f"held-out check after each stage that changes the policy: {dataclasses.asdict(self.spec.eval)}"]
        for inst in instances(self.spec):
            cfg, _ = self.configs[(inst.round, inst.stage.name)]
            took = ", ".join(f"{i.key}={_get(cfg, i.key)}" for i in inst.stage.inputs) or "-"
            lines.append(f"  {inst.label}: recipe={inst.stage.recipe} algorithm={cfg.algorithm.name} "
                         f"run_dir={inst.run_dir(self.root)} inputs: {took}")
        return "\n".join(lines)

    def run(self) -> dict:
        """Run every stage not finished yet, in order; returns the pipeline summary."""
        from rlengine import job

        self.root.mkdir(parents=True, exist_ok=True)
        _log_to(self.root)
        (self.root / "pipeline.json").write_text(json.dumps(self.spec.as_dict(), indent=2))
        started = time.time()
        results: dict[tuple[int, str], Result] = {}
        rows: list[dict] = []
        start_eval = self._evaluate_start()
        write_summary(self.spec, self.root, start_eval, rows, started, finished=False)
        for inst in instances(self.spec):
            d = inst.run_dir(self.root)
            values = self._inputs(inst, results)
            if (d / "summary.json").exists():
                summary = json.loads((d / "summary.json").read_text())
                status = "skipped: finished earlier"
                log.info("%s: finished earlier (%s), skipped", inst.label, d / "summary.json")
                _warn_if_changed(inst, d, compose(self.spec, inst, values, self.root)[0])
            else:
                cfg, plan = compose(self.spec, inst, values, self.root)
                from rlengine import preflight

                try:
                    preflight.check(cfg, plan)
                except ConfigError as e:
                    raise stage_error(self.spec, inst, e) from None
                log.info("%s: running recipe=%s in %s", inst.label, inst.stage.recipe, d)
                from rlengine.data import DataError

                try:
                    summary = job.run(cfg, plan)
                except job.RunInterrupted as e:
                    raise job.RunInterrupted(
                        f"pipeline {self.spec.name}, {inst.label}: {e} Rerun the pipeline (recipe={self.spec.name} "
                        f"run_dir={self.root}) to resume it: finished stages are skipped.") from None
                except ConfigError as e:
                    raise stage_error(self.spec, inst, e) from None
                except DataError as e:
                    raise DataError(f"pipeline {self.spec.name}, {inst.label} (recipe {inst.stage.recipe}): {e}") \
                        from None
                _log_to(self.root)
                status = "ran"
            model = summary.get("hf_checkpoint")
            results[(inst.round, inst.stage.name)] = Result(model, dict(summary.get("outputs") or {}))
            acc = None
            if model and _evaluates(inst.stage, model):
                acc = evaluate_model(model, self.spec, d / "pipeline_eval.json")
            rows.append(_row(inst, d, status, values, summary, acc))
            write_summary(self.spec, self.root, start_eval, rows, started, finished=False)
        out = write_summary(self.spec, self.root, start_eval, rows, started, finished=True)
        log.info("pipeline %s done: %s", self.spec.name, self.root / SUMMARY)
        print(format_table(out), flush=True)
        print(f"pipeline summary: {self.root / SUMMARY}", flush=True)
        return out

    def _evaluate_start(self) -> dict:
        """The start model's held-out accuracy: the point every stage is compared with."""
        start = self.spec.start_model
        if tiny.is_tiny(start) and tiny.tiny_name(start) in tiny.TRAINED and not tiny.is_built(tiny.tiny_name(start)):
            from rlengine import job

            first = instances(self.spec)[0]
            job.build_tiny(tiny.tiny_name(start), self.configs[(first.round, first.stage.name)][0])
            _log_to(self.root)
        return evaluate_model(start, self.spec, self.root / "start_eval.json")

    def _inputs(self, inst: Instance, results: dict[tuple[int, str], Result]) -> dict[str, str]:
        """The real values of the stage's references, from the finished stages' summaries."""
        values = {}
        for inp in inst.stage.inputs:
            ref, r = choose(inst, inp, self.spec)
            if ref.stage is None:
                values[inp.key] = self.spec.start_model
                continue
            res = results[(r, ref.stage)]
            value = res.outputs.get(ref.output) if ref.output else res.model
            if not value:
                what = f"output {ref.output!r} (it wrote {sorted(res.outputs)})" if ref.output else "an HF model"
                raise ConfigError(inp.pkey, f"{inst.label}: stage {ref.stage!r} of round {r} finished without "
                                            f"{what}, which {inp.text!r} reads", inp.where)
            values[inp.key] = value
        return values


def choose_root(spec: PipelineSpec) -> Path:
    """run_dir, or outputs/<pipeline>/<timestamp>; resume=auto takes the newest unfinished run of
    the same pipeline (the same pipeline.json) instead of a new timestamp."""
    if spec.resume not in ("auto", "never"):
        raise ConfigError("resume", "a pipeline resumes its run_dir (auto) or starts a new one (never); "
                                    "to continue a given run, set run_dir", "command-line override")
    if spec.run_dir:
        return Path(spec.run_dir).resolve()
    parent = (Path("outputs") / spec.name).resolve()
    if spec.resume == "auto" and parent.is_dir():
        mine = json.loads(json.dumps(spec.as_dict()))
        found = []
        for run in parent.iterdir():
            try:
                theirs = json.loads((run / "pipeline.json").read_text())
                done = json.loads((run / SUMMARY).read_text()).get("finished") if (run / SUMMARY).exists() else False
            except (OSError, ValueError):
                continue
            if theirs == mine and not done:
                found.append((run.stat().st_mtime, run))
        if found:
            run = max(found)[1]
            log.info("resume=auto: %s is an unfinished run of the same pipeline; continuing it", run)
            return run
    return parent / time.strftime("%Y%m%d-%H%M%S")


def compose(spec: PipelineSpec, inst: Instance, values: dict[str, str], root: Path) -> tuple[RootConfig, Plan]:
    """The stage's config: its recipe, the references' values, its overrides (`{round}` replaced),
    the command line's, then the pipeline's run_dir and resume=auto."""
    s = inst.stage
    origin: list[tuple[str, str, Optional[str]]] = []
    for inp in s.inputs:
        origin.append((f"{inp.key}={_quote(values[inp.key])}", inp.pkey, inp.where))
    origin += [(o.replace("{round}", str(inst.round)), k, w) for o, k, w in s.overrides]
    origin += [(o, o.split("=", 1)[0], "command-line override") for o in spec.common]
    origin += [(f"run_dir={_quote(str(inst.run_dir(root)))}", "run_dir", None), ("resume=auto", "resume", None)]
    try:
        return load_config(s.recipe, [o for o, _, _ in origin])
    except ConfigError as e:
        raise stage_error(spec, inst, e, origin) from None


def stage_error(spec: PipelineSpec, inst: Instance, e: ConfigError, origin=()) -> ConfigError:
    """The stage's ConfigError as the pipeline's: the pipeline key and line that caused it (an
    override or reference), else the stage's `recipe` entry; the stage's own message kept whole."""
    s = inst.stage
    from rlengine.pipeline_spec import key_lines

    line = key_lines(spec.file).get(f"{s.pkey}.recipe")
    pkey, where = f"{s.pkey}.recipe", f"{spec.file}:{line}" if line else None
    if e.where == "command-line override":
        for o, k, w in origin:
            if o.split("=", 1)[0].lstrip("+~") == e.key:
                pkey, where = k, w
                break
    return ConfigError(pkey, f"stage {s.name!r} ({inst.label}, recipe {s.recipe}): {e}", where)


def _check_output(inp: Input, ref, producer_cfg: RootConfig) -> None:
    """A reference to a producer's model needs an HF export; to a named output, a stage that
    declares it (Stage.outputs)."""
    from rlengine.stages import get_stage

    cls = get_stage(producer_cfg.algorithm.name)
    if ref.output is None:
        if not getattr(cls, "trains", True) or not producer_cfg.checkpoint.save_hf:
            why = "it trains nothing" if not getattr(cls, "trains", True) else "checkpoint.save_hf=false"
            raise ConfigError(inp.pkey, f"{str(ref)!r}: stage {ref.stage!r} (algorithm.name="
                                        f"{producer_cfg.algorithm.name}) exports no model ({why}); its outputs: "
                                        f"{list(output_names(cls))}", inp.where)
        return
    declared = output_names(cls)
    if ref.output not in declared:
        model = f"; its model: {ref.stage!r}" if getattr(cls, "trains", True) else ""
        raise ConfigError(inp.pkey, f"{str(ref)!r}: stage {ref.stage!r} (algorithm.name="
                                    f"{producer_cfg.algorithm.name}) writes no output {ref.output!r}; its outputs: "
                                    f"{list(declared)}{model}", inp.where)


def output_names(stage_cls) -> tuple[str, ...]:
    """The data sets a stage writes (summary.json `outputs`, Stage.output_names)."""
    return tuple(stage_cls.output_names)


def _get(cfg: RootConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _evaluates(stage: StageSpec, model: str) -> bool:
    """The held-out check runs on causal LMs only (a reward model is not a policy), unless the
    stage's `eval` says otherwise."""
    if stage.evaluate is not None:
        return stage.evaluate
    try:
        archs = json.loads((Path(model) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForCausalLM") for a in archs)


def _warn_if_changed(inst: Instance, run_dir: Path, cfg: RootConfig) -> None:
    """A finished stage is kept even if its config has changed since; say so."""
    try:
        old = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    new, old = flat(json.loads(json.dumps(to_dict(cfg), default=str))), flat(old)
    changed = sorted(k for k in new.keys() | old.keys() if k not in ("run_dir", "resume") and old.get(k) != new.get(k))
    if changed:
        log.warning("%s finished earlier with a different config (%s); its results are kept: delete %s to redo it",
                    inst.label, ", ".join(changed[:10]) + (", ..." if len(changed) > 10 else ""), run_dir)


def _row(inst: Instance, run_dir: Path, status: str, values: dict, summary: dict, acc: Optional[dict]) -> dict:
    own = {k: v for k, v in summary.items() if k.startswith("eval/") and not isinstance(v, dict)}
    return {"round": inst.round, "stage": inst.stage.name, "recipe": inst.stage.recipe, "run_dir": str(run_dir),
            "status": status, "inputs": values, "model": summary.get("hf_checkpoint"),
            "outputs": summary.get("outputs") or {}, "heldout_accuracy": acc["accuracy"] if acc else None,
            "heldout_n": acc["n"] if acc else None, "stage_eval": own, "steps": summary.get("steps"),
            "wall_time_s": summary.get("wall_time_s")}


def _log_to(root: Path) -> None:
    """The pipeline's own lines also go to <run_dir>/pipeline.log (each stage's run.log has its own)."""
    from rlengine.tracking import setup_logging

    setup_logging(root)  # console and <run_dir>/run.log until the next stage points them at its own
    lg = logging.getLogger("rlengine.pipeline")
    if not any(getattr(h, "_pipeline", None) == str(root) for h in lg.handlers):
        for h in [h for h in lg.handlers if getattr(h, "_pipeline", None)]:
            lg.removeHandler(h)
            h.close()
        fh = logging.FileHandler(root / "pipeline.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        fh._pipeline = str(root)
        lg.addHandler(fh)


def main(recipe_file: Path, overrides: list[str], print_only: bool = False) -> int:
    """rlengine.main's path for a pipeline recipe: validate everything, then run (exit codes as main's)."""
    try:
        pipeline = Pipeline.load(recipe_file, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if print_only:
        print(pipeline.describe())
        return 0
    from rlengine.main import exit_code

    return exit_code(pipeline.run, failures=(EvaluationError,))
