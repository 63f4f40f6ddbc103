"""Checks on the paths a config names, run before Ray starts so a typo costs seconds, not a cluster.

Nothing is loaded and, with the hub offline, nothing is fetched: a model path must be a known
`tiny:` artefact, a local directory with the files transformers reads first, or a well-formed hub
id (in the local HF cache when HF_HUB_OFFLINE is set).
"""
from __future__ import annotations

import logging
import os

from rlengine import tiny
from rlengine.config import RootConfig
from rlengine.errors import ConfigError

MODEL_FILES = ("config.json",)
# AutoTokenizer also reads the slow-tokenizer vocab files of older checkpoints.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
log = logging.getLogger("rlengine")


def tiny_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(model names, data names) that tiny.resolve_path accepts; it keeps no list of its own."""
    models, data = [*tiny.BASES, *tiny.TRAINED], ["train", "test", "pref_train", "pref_test"]
    try:
        from rlengine import tiny_chat
    except ImportError:
        return tuple(models), tuple(data)
    return (*models, "chat_base"), (*data, *tiny_chat.CHAT_DATA)


def hub_offline() -> bool:
    # Same truthy values as huggingface_hub; transformers maps TRANSFORMERS_OFFLINE onto it.
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_local(path: str) -> bool:
    return (path.startswith(("/", "./", "../", "~")) or os.path.isabs(path) or path in (".", "..")
            or path.count("/") > 1 or (os.sep != "/" and os.sep in path))


def check_model_path(key: str, path: str, files: tuple[str, ...] = MODEL_FILES) -> None:
    """`files`: any one of them marks a usable local directory (and is looked up in the HF cache)."""
    want = " or ".join(files)
    if tiny.is_tiny(path):
        known = tiny_names()[0]
        if tiny.tiny_name(path) not in known:
            raise ConfigError(key, f"unknown tiny model {path!r}; known: {', '.join('tiny:' + n for n in known)}")
        return
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in files):
            raise ConfigError(key, f"{path} is a directory but has no {want}: not a saved HF checkpoint")
        return
    if os.path.exists(path):
        raise ConfigError(key, f"{path} is a file; expected a model directory (holding {want}) or a hub id")
    if path.startswith("~"):
        # transformers does not expand `~`; neither does this check, so say so rather than "missing".
        raise ConfigError(key, f"{path!r}: '~' is not expanded; write the absolute path")
    if _looks_local(path):
        raise ConfigError(key, f"{path}: no such directory (expected a local model directory holding {want})")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError as e:
        raise ConfigError(key, f"{path!r} is neither a local directory nor a valid hub id ({e})") from None
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not any(isinstance(try_to_load_from_cache(path, f), str) for f in files):
            raise ConfigError(key, f"{path!r} is not in the local HF cache and the hub is offline "
                                   f"(HF_HUB_OFFLINE=1): download it first or point {key} at a local copy")


def check_data_path(key: str, path: str) -> None:
    if tiny.is_tiny(path):
        known = tiny_names()[1]
        if tiny.tiny_name(path) not in known:
            raise ConfigError(key, f"unknown tiny data set {path!r}; known: {', '.join('tiny:' + n for n in known)}")
        return
    # Directories and hub dataset names are left to the data loader (they need `datasets` to judge).
    if path.endswith(DATA_SUFFIXES) and not os.path.isfile(path):
        raise ConfigError(key, f"{path}: no such file")


def check(cfg: RootConfig, plan=None) -> None:
    """Raise ConfigError naming the first path key that cannot be loaded, then refuse a recipe whose
    roles cannot fit their devices (check_memory).  plan: the validated Plan (derived when None)."""
    m, rm = cfg.model, cfg.reward_model
    check_model_path("model.path", m.path)
    if m.tokenizer_path:
        check_model_path("model.tokenizer_path", m.tokenizer_path, TOKENIZER_FILES)
    elif os.path.isdir(m.path):
        _check_default_tokenizer("model.tokenizer_path", "model.path", m.path)
    if cfg.critic.model_path:
        check_model_path("critic.model_path", cfg.critic.model_path)
    if rm.path:
        check_model_path("reward_model.path", rm.path)
        if rm.tokenizer_path:
            check_model_path("reward_model.tokenizer_path", rm.tokenizer_path, TOKENIZER_FILES)
        elif os.path.isdir(rm.path):
            _check_default_tokenizer("reward_model.tokenizer_path", "reward_model.path", rm.path)
    if cfg.teacher.path:
        _check_teacher(cfg)
    check_data_path("data.train_path", cfg.data.train_path)
    check_data_path("data.test_path", cfg.data.test_path)
    from rlengine import lora

    lora.check_modules("model.path", _config_dir(m.path), m)
    check_memory(cfg, plan)


def _check_teacher(cfg: RootConfig) -> None:
    """The teacher's paths, then its vocabulary against the student's where both are on disk."""
    t, m = cfg.teacher, cfg.model
    check_model_path("teacher.path", t.path)
    if t.tokenizer_path:
        check_model_path("teacher.tokenizer_path", t.tokenizer_path, TOKENIZER_FILES)
    elif os.path.isdir(t.path):
        _check_default_tokenizer("teacher.tokenizer_path", "teacher.path", t.path)
    local = [_config_dir(p) for p in (m.path, m.tokenizer_path or m.path, t.path, t.tokenizer_path or t.path)]
    if all(os.path.isdir(p) for p in local):
        from rlengine.workers.teacher import check_vocabulary

        check_vocabulary((local[0], local[1]), (local[2], local[3]))


def check_memory(cfg: RootConfig, plan=None) -> None:
    """The memory planner's fit check (rlengine.memory.check_fits): ConfigError with the overrides
    that would fit on GPUs; a warning only on CPU.  Skipped, with a log line, when a model's
    config.json cannot be read here (the path checks above judge the path itself)."""
    from rlengine import memory
    from rlengine.plan import validate

    try:
        memory.shapes_of(cfg)
    except Exception as e:  # an unreadable or unknown config.json: nothing to plan from
        log.info("memory check skipped: %s", e)
        return
    memory.check_fits(cfg, plan if plan is not None else validate(cfg))


def _config_dir(path: str) -> str:
    """Where config.json is read from: a tiny model not built yet has tiny:base's architecture."""
    if not tiny.is_tiny(path):
        return path
    try:
        found = tiny.resolve_path(path)
        if os.path.isfile(os.path.join(found, "config.json")):
            return found
    except (OSError, RuntimeError, ValueError, KeyError):
        pass
    name = tiny.tiny_name(path)
    return tiny.resolve_path("tiny:chat_base" if name.startswith("chat") else
                             "tiny:teacher_base" if name.startswith("teacher") else "tiny:base")


def _check_default_tokenizer(key: str, model_key: str, path: str) -> None:
    # A checkpoint saved without its tokenizer passes the model check but fails in AutoTokenizer later.
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise ConfigError(key, f"unset, so the tokenizer is loaded from {model_key}={path}, which has no "
                               f"{' or '.join(TOKENIZER_FILES[:2])}; set {key}")
