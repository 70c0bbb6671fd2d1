"""Logging set-up for the ``r2migrate`` logger: stderr and a rotating file, text or JSON lines.

Never reads settings or the environment itself, and never touches loggers other than
``r2migrate`` (the root logger and other libraries' loggers are the application's business).

Every handler installed here carries a ``RedactingFilter``, so a secret, a URL password, a
presigned URL's signature or an ``Authorization`` header never reaches a log line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote

from r2migrate.errors import ConfigError
from r2migrate.rules.keys import printable_name

__all__ = ["LOGGER_NAME", "JsonFormatter", "RedactingFilter", "configure_logging"]

LOGGER_NAME = "r2migrate"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FILE_MAX_BYTES = 10 * 1024**2
LOG_FILE_BACKUPS = 5
MIN_SECRET_LENGTH = 4  # shorter strings would blank out ordinary words all over the log
REDACTED = "***"

# Marks handlers we installed, so a second configure_logging() replaces them instead of adding.
_OURS = "_r2migrate_handler"

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://user:***@host
    # Greedy to the last '@' of the word: a password may hold an unencoded '@' or '/'.
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*):\S*@"), rf"\1:{REDACTED}@"),
    # presigned URLs (SigV4 and SigV2) and libpq-style password parameters
    (
        re.compile(
            r"(?i)((?:[?&]|\b)(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature"
            r"|AWSAccessKeyId|password)=)[^&\s\"'#]+"
        ),
        rf"\1{REDACTED}",
    ),
    # "Authorization: AWS4-HMAC-SHA256 ..." as a header line, and {'Authorization': b'...'} as
    # botocore prints headers at DEBUG; the same for the session-token header.
    (
        re.compile(
            r"(?i)(\b(?:Proxy-)?Authorization|\bX-Amz-Security-Token)(['\"]?\s*:\s*)"
            r"(?:((?-i:b)?)(['\"])[^'\"\r\n]*\4|[^\r\n]*)"
        ),
        rf"\1\2\3\4{REDACTED}\4",
    ),
)

# Every pattern above needs one of these; most log lines have none, so one search skips them.
_TRIGGER = re.compile(r"://|=|(?i:authorization|x-amz-security-token)")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class RedactingFilter(logging.Filter):
    """Replace secrets in a record's message, arguments, string extras and traceback with ``***``.

    Attached to handlers (not the logger) so it also covers records from child loggers. It edits
    the record in place, and only when something had to be hidden, so every later handler sees
    the clean text.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        literals: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LENGTH:
                literals |= {secret, quote(secret, safe="")}  # as written and as inside a URL
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = tuple(sorted(literals, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """``text`` with every known secret and secret-shaped substring replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if _TRIGGER.search(text) is None:
            return text
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_needs_escape(a) for a in record.args):
            # A file name with a newline must not forge a log line, nor a non-UTF-8 byte
            # break the log file: names are shown as the CLI shows them.
            record.args = tuple(printable_name(a) if isinstance(a, str) else a for a in record.args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # Arguments that do not fit the format: logging reports that itself; hide what we can.
            message = f"{record.msg} {record.args}"
        clean = self.redact(message)
        if clean != message:
            # Merge the arguments into the message: a secret may span the template and an
            # argument, so redacting each alone is not enough.
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


def _needs_escape(value: object) -> bool:
    return isinstance(value, str) and printable_name(value) != value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC ISO 8601), ``level``, ``logger``, ``message``, then
    every ``extra=`` field (``file_id``, ``batch_id``, ``outcome``, ...) and ``exc`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class _UtcFormatter(logging.Formatter):
    """Text lines stamped in UTC, so logs from several machines sort together."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).strftime(datefmt or _DATE_FORMAT)


class _PrivateFileHandler(RotatingFileHandler):
    """Log files readable by the owner only (0600, also an older one and each new file after a
    rollover): lines name the access key id, buckets and paths."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, self.mode, encoding=self.encoding, errors=self.errors)


def configure_logging(
    *,
    level: str = "INFO",
    log_file: Path | None = None,
    log_format: str = "text",
    console: bool = True,
    console_level: str | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """(Re)configure the ``r2migrate`` logger: optional stderr handler, optional rotating file.

    Idempotent: handlers from an earlier call are closed and replaced, never duplicated. The log
    file (10 MiB x 5 backups) and its folder are created on first write. ``console_level``
    raises the console's threshold above ``level`` (the CLI keeps per-file lines off a terminal
    that shows a progress bar; the file still gets them).
    """
    problems = []
    if level.upper() not in LOG_LEVELS:
        problems.append(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    if log_format not in ("text", "json"):
        problems.append(f"log_format must be 'text' or 'json', got {log_format!r}")
    if problems:
        raise ConfigError(problems)

    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level.upper())

    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else _UtcFormatter(_TEXT_FORMAT, _DATE_FORMAT)
    )
    redacting = RedactingFilter(secrets)
    handlers: list[logging.Handler] = []
    if console:
        stream = logging.StreamHandler(sys.stderr)
        if console_level is not None:
            stream.setLevel(console_level.upper())
        handlers.append(stream)
    if log_file is not None:
        # A folder made here (state_dir, by default) is the owner's alone; an existing one,
        # which may be shared (/var/log), is left as it is.
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handlers.append(
            _PrivateFileHandler(
                log_file,
                maxBytes=LOG_FILE_MAX_BYTES,
                backupCount=LOG_FILE_BACKUPS,
                encoding="utf-8",
                delay=True,
            )
        )
    for handler in handlers:
        setattr(handler, _OURS, True)
        handler.setFormatter(formatter)
        handler.addFilter(redacting)
        logger.addHandler(handler)
