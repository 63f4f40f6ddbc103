"""Training kinds: each is one module in this package that subclasses `Stage` and registers it.

`algorithm.name` picks the stage: a registered stage's name, or the name of any advantage
estimator registered with `rlengine.algos.register_advantage` (the GRPO family).  Modules in this
package are imported on first lookup, so a new stage is one new module (plus its recipe and
tests) with no list to edit; users' own stages and estimators load from `algorithm.plugins`.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from rlengine.stages.base import Stage, Timer, Uses, mean_dicts

STAGES: dict[str, type[Stage]] = {}
_loaded_plugins: set[str] = set()

__all__ = ["STAGES", "Stage", "Timer", "Uses", "get_stage", "load_plugins", "mean_dicts", "register_stage",
           "stage_names"]


def register_stage(cls: type[Stage]) -> type[Stage]:
    if not getattr(cls, "name", None):
        raise ValueError(f"{cls.__name__}: a stage needs a `name`")
    if cls.name in STAGES and STAGES[cls.name] is not cls:
        raise ValueError(f"stage {cls.name!r} is already registered by {STAGES[cls.name].__module__}")
    STAGES[cls.name] = cls
    return cls


def _discover() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


def load_plugins(specs) -> None:
    """Import `algorithm.plugins`: module names or paths of .py files that register stages,
    advantage estimators or losses.  Raises ImportError / FileNotFoundError naming the plugin."""
    for spec in specs:
        if spec in _loaded_plugins:
            continue
        if spec.endswith(".py"):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"algorithm.plugins: no such file {spec}")
            name = f"rlengine_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
        _loaded_plugins.add(spec)


def _sequence_rl():
    from rlengine.stages.rl import SequenceRL

    return SequenceRL


def stage_names() -> list[str]:
    from rlengine.algos.advantages import ADVANTAGES

    _discover()
    return sorted({*STAGES, *ADVANTAGES})


def get_stage(name: str) -> type[Stage]:
    """The stage class for `algorithm.name`; KeyError listing the known names."""
    from rlengine.algos.advantages import ADVANTAGES

    _discover()
    if name in STAGES:
        return STAGES[name]
    if name in ADVANTAGES:
        return _sequence_rl()
    raise KeyError(f"{name!r} is neither a registered stage nor an advantage estimator; known: {stage_names()}")
