"""Errors every layer raises: kept apart so that config checks and stages share them without an import circle."""
from __future__ import annotations


class ConfigError(ValueError):
    """A recipe or override is invalid; `key` is the dotted path at fault."""

    def __init__(self, key: str, message: str, where: str | None = None):
        self.key = key
        self.where = where
        loc = f" ({where})" if where else ""
        super().__init__(f"config key '{key}'{loc}: {message}")
