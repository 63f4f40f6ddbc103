"""Composing a recipe: Hydra over the schema in rlengine/config.py, then validation into a Plan.

Errors name the key and where it was written (the recipe's file:line, or the command line).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from rlengine.config import RootConfig, freeze
from rlengine.errors import ConfigError
from rlengine.plan import Plan, validate


def recipes_dir() -> Path:
    """recipes/ in the working directory if present (users' own recipes), else the project's."""
    env = os.environ.get("RLENGINE_RECIPES")
    for cand in (Path(env) if env else None, Path.cwd() / "recipes", Path(__file__).resolve().parent.parent / "recipes"):
        if cand is not None and cand.is_dir() and any(cand.glob("*.yaml")):
            return cand.resolve()
    raise FileNotFoundError("no recipes/ directory found (set RLENGINE_RECIPES)")


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="rlengine_schema", node=RootConfig)


def _locate(key: str, recipe_file: Path) -> tuple[str, str] | None:
    """(full dotted key, file:line) of `key` in the recipe YAML, when it is written there.

    Hydra names only the last key for errors inside lists (`wieght`, not `reward.fns[0].wieght`);
    such a bare key is looked up anywhere in the file and its full path returned.
    """
    import yaml

    if not recipe_file.exists():
        return None
    try:
        root = yaml.compose(recipe_file.read_text())
    except yaml.YAMLError:
        return None
    found = []
    stack = [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                full = f"{path}.{k.value}" if path else str(k.value)
                found.append((full, k.start_mark.line + 1))
                stack.append((v, full))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node.value))
    norm = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key)
    for full, line in sorted(found, key=lambda f: f[1]):
        if full == norm or ("." not in key and full.endswith("." + key)):
            return full, f"{recipe_file}:{line}"
    return None


def _key_from_error(msg: str) -> str | None:
    for pat in (r"full_key:\s*(\S+)", r"Could not override '([^']+)'", r"override '?([\w.\[\]]+)'?\s*=?",
                r"Key '([^']+)' not in"):
        m = re.search(pat, msg)
        if m:
            return m.group(1)
    return None


def load_config(recipe: str, overrides: list[str]) -> tuple[RootConfig, Plan]:
    """Compose recipe + overrides, convert to the frozen schema, validate. Raises ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    _register_schema()
    rdir = recipes_dir()
    recipe_file = rdir / f"{recipe}.yaml"
    if not recipe_file.exists():
        names = sorted(p.stem for p in rdir.glob("*.yaml"))
        raise ConfigError("recipe", f"no recipe {recipe!r} in {rdir}; available: {names}")
    from rlengine.pipeline_spec import is_pipeline

    if is_pipeline(recipe_file):
        raise ConfigError("recipe", f"{recipe_file} is a pipeline of stages, not a stage: run it with "
                                    f"`python -m rlengine.main recipe={recipe}` (rlengine/pipeline.py)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(rdir), version_base=None):
            cfg = compose(config_name=recipe, overrides=[*overrides, f"recipe={recipe}"])
        obj = OmegaConf.to_object(cfg)
    except Exception as e:  # Hydra / OmegaConf: unknown key, bad type, bad override syntax
        parts = [str(e)] + ([str(e.__cause__)] if e.__cause__ else [])
        msg = "\n".join(parts)
        key = _key_from_error(msg) or "?"
        detail = [ln.strip() for ln in msg.splitlines()
                  if ln.strip() and not re.match(r"(full_key|reference_type|object_type|To append|See https)", ln.strip())]
        where = None
        if any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides):
            where = "command-line override"
        elif loc := _locate(key, recipe_file):
            key, where = loc
        raise ConfigError(key, " ".join(detail) or type(e).__name__, where) from None
    finally:
        GlobalHydra.instance().clear()
    if not isinstance(obj, RootConfig):
        raise ConfigError("defaults", f"{recipe_file} must list `rlengine_schema` in its defaults")
    freeze(obj)
    try:
        plan = validate(obj)
    except ConfigError as e:
        if e.where is None:
            loc = _locate(e.key, recipe_file)
            where = "command-line override" if any(o.split("=", 1)[0].lstrip("+~") == e.key for o in overrides) \
                else (loc[1] if loc else None)
            raise ConfigError(e.key, str(e).split(": ", 1)[1], where) from None
        raise
    return obj, plan
