"""A pipeline recipe read and checked: its stages, the references that chain them, the held-out
evaluation, and the command-line overrides that reach either (used by rlengine/pipeline.py).

Only reading and pure checks live here: composing a stage's config and running it are the
pipeline's.  Every error is a ConfigError naming the pipeline key and the recipe file:line.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from rlengine.errors import ConfigError

# The reference keys of a stage and the config key each one sets.
REF_KEYS = {"model": "model.path", "data": "data.train_path", "test_data": "data.test_path",
            "reward_model": "reward_model.path", "critic": "critic.model_path"}
STAGE_KEYS = ("name", "recipe", "once", "overrides", "eval", "inputs", *REF_KEYS)
# The pipeline sets these for every stage: its own run directory, resumed when it exists.
OWNED = ("run_dir", "resume")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED = {"start"}  # the start model's reference


@dataclass(frozen=True)
class EvalSpec:
    """The one held-out check run on the policy after every stage that changes it: the same data,
    verifier and greedy decoding each time (rlengine.evaluate.greedy_accuracy, its own process)."""

    data: str = "tiny:test"
    split: str = "test"
    config_name: Optional[str] = None
    fn: str = "reward_fns/math.py:compute_score"
    threshold: float = 1.0
    max_new_tokens: int = 8
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    chat_template: bool = False
    system_prompt: Optional[str] = None
    max_prompt_tokens: int = 512
    limit: Optional[int] = None
    batch_size: int = 128
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class Ref:
    """One alternative of a reference: `start`, or stage `stage`'s model (output None) or named
    output, of this round or (prev) the previous one."""

    stage: Optional[str]  # None: the pipeline's start model
    output: Optional[str] = None
    prev: bool = False

    def __str__(self) -> str:
        if self.stage is None:
            return "start"
        return self.stage + (f".{self.output}" if self.output else "") + ("@prev" if self.prev else "")


@dataclass(frozen=True)
class Input:
    """A config key a stage takes from a reference: `key` <- the first alternative that exists."""

    key: str  # the config key it sets, e.g. model.path
    text: str  # as written, e.g. "dpo@prev|start"
    alternatives: tuple[Ref, ...]
    pkey: str  # the pipeline key it was written under, e.g. pipeline.stages[2].model
    where: Optional[str]


@dataclass(frozen=True)
class StageSpec:
    index: int
    name: str
    recipe: str
    once: bool
    inputs: tuple[Input, ...]
    # (override, pipeline key, where): the recipe file's, then the command line's for this stage.
    overrides: tuple[tuple[str, str, Optional[str]], ...]
    evaluate: Optional[bool]  # None: when its model is a causal LM

    @property
    def pkey(self) -> str:
        return f"pipeline.stages[{self.index}]"


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    file: Path
    rounds: int
    start_model: str
    stages: tuple[StageSpec, ...]
    eval: EvalSpec
    plot: str
    run_dir: Optional[str]
    resume: str
    common: tuple[str, ...] = field(default=())  # command-line overrides for every stage

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    def as_dict(self) -> dict:
        """What identifies a pipeline run (resume=auto compares it); run_dir and resume excluded."""
        return {"name": self.name, "rounds": self.rounds, "start_model": self.start_model,
                "eval": dataclasses.asdict(self.eval), "plot": self.plot, "common": list(self.common),
                "stages": [{"name": s.name, "recipe": s.recipe, "once": s.once, "eval": s.evaluate,
                            "inputs": {i.key: i.text for i in s.inputs}, "overrides": [o for o, _, _ in s.overrides]}
                           for s in self.stages]}


def is_pipeline(recipe_file: Path) -> bool:
    """A pipeline recipe has a top-level `pipeline:` key (a stage recipe never does)."""
    try:
        raw = yaml.safe_load(recipe_file.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "pipeline" in raw


def key_lines(recipe_file: Path) -> dict[str, int]:
    """Dotted path -> 1-based line of every mapping key and list item in the file
    (`pipeline.stages[1].overrides[0]`)."""
    out: dict[str, int] = {}
    stack = [(yaml.compose(recipe_file.read_text()), "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                full = f"{path}.{k.value}" if path else str(k.value)
                out[full] = k.start_mark.line + 1
                stack.append((v, full))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[f"{path}[{i}]"] = v.start_mark.line + 1
                stack.append((v, f"{path}[{i}]"))
    return out


def parse_ref(text: str, pkey: str, where: Optional[str]) -> tuple[Ref, ...]:
    alts = []
    for alt in str(text).split("|"):
        alt = alt.strip()
        m = re.fullmatch(r"([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?(@prev)?", alt)
        if not m:
            raise ConfigError(pkey, f"{alt!r} is not a reference: write start, STAGE, STAGE.OUTPUT, "
                                    "STAGE@prev or STAGE.OUTPUT@prev (alternatives joined by |)", where)
        stage, output, prev = m.group(1), m.group(2), bool(m.group(3))
        if stage == "start":
            if output or prev:
                raise ConfigError(pkey, f"{alt!r}: `start` is the pipeline's start model; it has no outputs "
                                        "or previous round", where)
            alts.append(Ref(None))
        else:
            alts.append(Ref(stage, output, prev))
    return tuple(alts)


def _typed(pkey: str, value, types: tuple, where: Optional[str], what: str):
    # bool is an int to isinstance; a count or a number written as true/false is a mistake.
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise ConfigError(pkey, f"expected {what}, got {value!r}", where)
    return value


def _eval_spec(raw, lines, file) -> EvalSpec:
    if raw is None:
        return EvalSpec()
    where = _at(lines, file, "pipeline.eval")
    _typed("pipeline.eval", raw, (dict,), where, "a mapping of the held-out check's keys")
    kw = {}
    for f in dataclasses.fields(EvalSpec):
        if f.name not in raw:
            continue
        pkey, default = f"pipeline.eval.{f.name}", f.default
        types = (int, float) if isinstance(default, float) else (type(default),) if default is not None else (str, int)
        if raw[f.name] is None and default is None:
            kw[f.name] = None
            continue
        kw[f.name] = _typed(pkey, raw[f.name], types, _at(lines, file, pkey), type(default).__name__
                            if default is not None else "a value or null")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(EvalSpec)})
    if unknown:
        pkey = f"pipeline.eval.{unknown[0]}"
        raise ConfigError(pkey, f"unknown key; known: {[f.name for f in dataclasses.fields(EvalSpec)]}",
                          _at(lines, file, pkey))
    spec = EvalSpec(**kw)
    if spec.device not in ("cpu", "cuda"):
        raise ConfigError("pipeline.eval.device", f"{spec.device!r} is not one of ['cpu', 'cuda']",
                          _at(lines, file, "pipeline.eval.device"))
    return spec


def _at(lines: dict[str, int], file: Path, pkey: str) -> Optional[str]:
    return f"{file}:{lines[pkey]}" if pkey in lines else None


def split_overrides(overrides: list[str], stage_names: set[str]):
    """(pipeline-key overrides {dotted key under pipeline: value}, {stage: [override]}, common
    overrides for every stage, run_dir, resume)."""
    own: dict[str, object] = {}
    per_stage: dict[str, list[str]] = {n: [] for n in stage_names}
    common: list[str] = []
    run_dir, resume = None, "auto"
    for o in overrides:
        key, eq, value = o.partition("=")
        bare = key.lstrip("+~")
        if bare == "run_dir" and eq:
            run_dir = value
        elif bare == "resume" and eq:
            resume = value
        elif bare.startswith("pipeline.") and eq:
            own[bare[len("pipeline."):]] = yaml.safe_load(value) if value else None
        elif bare.startswith("stages.") and eq:
            head, _, rest = bare[len("stages."):].partition(".")
            if head not in stage_names or not rest:
                raise ConfigError(bare, f"stages.NAME.key=value overrides a stage's key; stages: "
                                        f"{sorted(stage_names)}", "command-line override")
            per_stage[head].append(key.replace(f"stages.{head}.", "", 1) + eq + value)
        else:
            common.append(o)
    return own, per_stage, common, run_dir, resume


def read(recipe_file: Path, overrides: list[str]) -> PipelineSpec:
    """The pipeline recipe with its command-line overrides applied, every key checked."""
    file = recipe_file
    try:
        raw = yaml.safe_load(file.read_text())
        lines = key_lines(file)
    except yaml.YAMLError as e:
        raise ConfigError("pipeline", f"{file}: not valid YAML ({e})") from None
    extra = sorted(set(raw) - {"pipeline"})
    if extra:
        raise ConfigError(extra[0], "a pipeline recipe holds only `pipeline:` (stage settings go in each "
                                    "stage's `overrides`)", _at(lines, file, extra[0]))
    p = raw["pipeline"]
    _typed("pipeline", p, (dict,), _at(lines, file, "pipeline"), "a mapping")
    raw_stages = p.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError("pipeline.stages", "a pipeline needs a list of stages", _at(lines, file, "pipeline.stages"))
    names = {s.get("name") for s in raw_stages if isinstance(s, dict)}
    own, per_stage, common, run_dir, resume = split_overrides(overrides, {n for n in names if isinstance(n, str)})
    p = dict(p)
    for key, value in own.items():
        head, _, rest = key.partition(".")
        if head == "eval" and rest:
            p["eval"] = {**(p.get("eval") or {}), rest: value}
        elif head in ("rounds", "start_model", "plot") and not rest:
            p[head] = value
        else:
            raise ConfigError(f"pipeline.{key}", "not a pipeline key that can be overridden: rounds, start_model, "
                                                 "plot, eval.* (a stage's keys: stages.NAME.key=value)",
                              "command-line override")
    known = {"rounds", "start_model", "eval", "plot", "stages"}
    unknown = sorted(set(p) - known)
    if unknown:
        pkey = f"pipeline.{unknown[0]}"
        raise ConfigError(pkey, f"unknown key; known: {sorted(known)}", _at(lines, file, pkey))
    rounds = _typed("pipeline.rounds", p.get("rounds", 1), (int,), _at(lines, file, "pipeline.rounds"), "an integer")
    if rounds < 1:
        raise ConfigError("pipeline.rounds", f"must be >= 1, got {rounds}", _at(lines, file, "pipeline.rounds"))
    start = _typed("pipeline.start_model", p.get("start_model"), (str,), _at(lines, file, "pipeline.start_model"),
                   "a model path (hub name, local directory or tiny:...)")
    plot = _typed("pipeline.plot", p.get("plot", "heldout_accuracy.png"), (str,), _at(lines, file, "pipeline.plot"),
                  "a file name")
    stages = tuple(_stage(i, s, lines, file, per_stage) for i, s in enumerate(raw_stages))
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ConfigError(f"{s.pkey}.name", f"stage name {s.name!r} is used twice",
                              _at(lines, file, f"{s.pkey}.name"))
        seen.add(s.name)
    for o in common:
        bare = o.split("=", 1)[0].lstrip("+~")
        taker = next((i for s in stages for i in s.inputs if i.key == bare), None)
        if taker is not None:
            raise ConfigError(bare, f"set for every stage, it would override {taker.pkey} ({taker.text!r}): change "
                                    "the reference, pipeline.start_model, or one stage's key with "
                                    "stages.NAME.key=value", "command-line override")
    spec = PipelineSpec(file.stem, file, rounds, start, stages, _eval_spec(p.get("eval"), lines, file), plot,
                        run_dir, resume, tuple(common))
    check_references(spec)
    return spec


def _stage(i: int, raw, lines, file, per_stage) -> StageSpec:
    pkey = f"pipeline.stages[{i}]"
    _typed(pkey, raw, (dict,), _at(lines, file, pkey), "a mapping with name and recipe")
    for k in raw:
        if k not in STAGE_KEYS:
            raise ConfigError(f"{pkey}.{k}", f"unknown stage key; known: {list(STAGE_KEYS)}",
                              _at(lines, file, f"{pkey}.{k}"))
    for k in ("name", "recipe"):
        if not isinstance(raw.get(k), str) or not raw[k]:
            raise ConfigError(f"{pkey}.{k}", "every stage needs a name and a recipe", _at(lines, file, pkey))
    name = raw["name"]
    if not NAME.match(name) or name in RESERVED:
        raise ConfigError(f"{pkey}.name", f"{name!r}: a stage name is an identifier other than "
                                          f"{sorted(RESERVED)}", _at(lines, file, f"{pkey}.name"))
    once = _typed(f"{pkey}.once", raw.get("once", False), (bool,), _at(lines, file, f"{pkey}.once"), "true or false")
    evaluate = raw.get("eval")
    if evaluate is not None:
        _typed(f"{pkey}.eval", evaluate, (bool,), _at(lines, file, f"{pkey}.eval"), "true, false or null")
    inputs = []
    for k, key in REF_KEYS.items():
        if raw.get(k) is not None:
            where = _at(lines, file, f"{pkey}.{k}")
            inputs.append(Input(key, str(raw[k]), parse_ref(raw[k], f"{pkey}.{k}", where), f"{pkey}.{k}", where))
    more = raw.get("inputs") or {}
    _typed(f"{pkey}.inputs", more, (dict,), _at(lines, file, f"{pkey}.inputs"), "a mapping {config.key: reference}")
    for key, text in more.items():
        where = _at(lines, file, f"{pkey}.inputs.{key}")
        inputs.append(Input(str(key), str(text), parse_ref(text, f"{pkey}.inputs.{key}", where),
                            f"{pkey}.inputs.{key}", where))
    taken = [i.key for i in inputs]
    if len(set(taken)) < len(taken):
        raise ConfigError(f"{pkey}.inputs", f"a config key is set by two references: {taken}", _at(lines, file, pkey))
    raw_over = raw.get("overrides") or []
    _typed(f"{pkey}.overrides", raw_over, (list,), _at(lines, file, f"{pkey}.overrides"), "a list of key=value")
    overrides = []
    for j, o in enumerate(raw_over):
        okey = f"{pkey}.overrides[{j}]"
        overrides.append((_typed(okey, o, (str,), _at(lines, file, okey), "a key=value string"), okey,
                          _at(lines, file, okey)))
    overrides += [(o, f"stages.{name}.{o.split('=', 1)[0]}", "command-line override")
                  for o in per_stage.get(name, [])]
    for o, okey, where in overrides:
        bare = o.split("=", 1)[0].lstrip("+~")
        if bare in OWNED:
            raise ConfigError(okey, f"{bare} is set by the pipeline (each stage runs in <run_dir>/round<r>/<stage>)",
                              where)
        if bare in taken:
            ref = next(i for i in inputs if i.key == bare)
            raise ConfigError(okey, f"{bare} is already set by {ref.pkey} ({ref.text!r})", where)
    return StageSpec(i, name, raw["recipe"], once, tuple(inputs), tuple(overrides), evaluate)


def check_references(spec: PipelineSpec) -> None:
    """What can be judged from the names alone: every reference names a stage that runs before
    its consumer (or the previous round's), so the stages form no cycle."""
    index = {s.name: s.index for s in spec.stages}
    for s in spec.stages:
        for inp in s.inputs:
            for ref in inp.alternatives:
                if ref.stage is None:
                    continue
                if ref.stage not in index:
                    raise ConfigError(inp.pkey, f"{str(ref)!r} names no stage of this pipeline; stages: "
                                                f"{list(index)}", inp.where)
                producer = spec.stage(ref.stage)
                if ref.prev and producer.once:
                    raise ConfigError(inp.pkey, f"{str(ref)!r}: stage {ref.stage!r} runs once (in round 1); "
                                                f"refer to it as {ref.stage!r}", inp.where)
                if ref.prev and s.once:
                    raise ConfigError(inp.pkey, f"{str(ref)!r}: stage {s.name!r} runs once (in round 1), which has "
                                                "no previous round", inp.where)
                if not ref.prev and producer.index >= s.index:
                    what = "itself" if producer.index == s.index else f"stage {ref.stage!r}, which runs after it"
                    raise ConfigError(inp.pkey, f"{str(ref)!r}: stage {s.name!r} refers to {what} (stages run in "
                                                "the order listed, so this would be a cycle); a stage consumes "
                                                f"earlier stages' outputs, or the previous round's "
                                                f"('{ref.stage}@prev')", inp.where)
