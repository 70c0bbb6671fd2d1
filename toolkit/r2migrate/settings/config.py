"""The settings' old import path: ``Settings`` and ``load_settings()`` re-exported.

Must not define anything: ``model.py`` holds ``Settings``, ``layers.py`` reads and merges the
layers (defaults < embedded stack < ``r2migrate.toml`` < env < --set < flags), ``checks.py``
validates.
"""

from __future__ import annotations

from r2migrate.settings.layers import load_settings
from r2migrate.settings.model import (
    CONFIG_ENV,
    CONFIG_FILE_NAME,
    ENV_PREFIX,
    SECRET_FIELDS,
    STACK_FILE_NAME,
    STANDARD_ENV,
    Settings,
    redact_url,
)

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
    "SECRET_FIELDS",
    "STACK_FILE_NAME",
    "STANDARD_ENV",
    "Settings",
    "load_settings",
    "redact_url",
]
