"""Logging set-up: redaction in text and JSON files, JSON lines, handlers installed once."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from logging.handlers import RotatingFileHandler
from pathlib import Path

import pytest

from r2migrate.errors import ConfigError
from r2migrate.runtime.logs import LOGGER_NAME, JsonFormatter, RedactingFilter, configure_logging

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
DB_PASSWORD = "pg-Pa55word-9f3a"
DB_URL = f"postgresql://app:{DB_PASSWORD}@db.internal:5432/app"
SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
CREDENTIAL = "AKIAIOSFODNN7EXAMPLE%2F20260101%2Fauto%2Fs3%2Faws4_request"
TOKEN = "FwoGZXIvYXdzEJr-session-token-value"
PRESIGNED = (
    "https://acct.r2.cloudflarestorage.com/media/a.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential={CREDENTIAL}&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"
    f"&X-Amz-Security-Token={TOKEN}&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
)
LEAKS = (SECRET, DB_PASSWORD, SIGNATURE, CREDENTIAL, TOKEN)


@pytest.fixture(autouse=True)
def restore_r2migrate_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(LOGGER_NAME)
    before, level = list(logger.handlers), logger.level
    yield logger
    for handler in logger.handlers:
        if handler not in before:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)


def ours(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if getattr(h, "_r2migrate_handler", False)]


def log_the_secrets() -> None:
    log = logging.getLogger("r2migrate.stages.transfer")  # a child: handlers sit on the parent
    log.info("secret=%s db=%s", SECRET, DB_URL, extra={"file_id": 7, "batch_id": "b-1"})
    log.warning("presigned %s", PRESIGNED, extra={"outcome": "uploaded", "url": PRESIGNED})
    log.debug("headers {'Authorization': b'AWS4-HMAC-SHA256 Credential=AK, Signature=ab'}")
    try:
        raise RuntimeError(f"cannot connect to {DB_URL}")
    except RuntimeError:
        log.exception("failed", extra={"file_id": 8})


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_urls_and_signatures_are_redacted_in_the_file(
    tmp_path: Path, log_format: str
) -> None:
    log_file = tmp_path / "state" / "logs" / "r2migrate.log"  # the folder does not exist yet
    configure_logging(
        level="DEBUG", log_file=log_file, log_format=log_format, console=False, secrets=[SECRET]
    )
    log_the_secrets()
    for handler in ours(logging.getLogger(LOGGER_NAME)):
        handler.flush()
    text = log_file.read_text(encoding="utf-8")
    for leak in LEAKS:
        assert leak not in text
    assert "postgresql://app:***@db.internal:5432/app" in text
    assert "X-Amz-Signature=***" in text
    assert "X-Amz-Credential=***" in text
    assert "X-Amz-Security-Token=***" in text
    assert "X-Amz-Date=20260101T000000Z" in text  # harmless parameters stay readable
    assert "'Authorization': b'***'" in text
    assert "RuntimeError: cannot connect to postgresql://app:***@" in text


def test_json_lines_parse_and_carry_extra_fields(tmp_path: Path) -> None:
    log_file = tmp_path / "r2migrate.log"
    configure_logging(log_file=log_file, log_format="json", console=False, secrets=[SECRET])
    log_the_secrets()
    lines = log_file.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["level"] for e in entries] == ["INFO", "WARNING", "ERROR"]  # DEBUG filtered
    first, second, third = entries
    assert first["logger"] == "r2migrate.stages.transfer"
    assert first["message"] == "secret=*** db=postgresql://app:***@db.internal:5432/app"
    assert (first["file_id"], first["batch_id"]) == (7, "b-1")
    assert second["outcome"] == "uploaded"
    assert "X-Amz-Signature=***" in second["url"]
    assert "Traceback" in third["exc"]
    ts = datetime.fromisoformat(first["ts"])
    assert ts.utcoffset() == timedelta(0)


def test_console_goes_to_stderr_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(secrets=[SECRET])
    logging.getLogger("r2migrate").info("key %s", SECRET)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "key ***" in captured.err
    assert SECRET not in captured.err
    assert captured.err.split()[0].endswith("Z")  # UTC timestamp first


def test_configuring_twice_installs_each_handler_once(tmp_path: Path) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    foreign = logging.NullHandler()  # somebody else's handler is left alone
    logger.addHandler(foreign)
    try:
        configure_logging(log_file=tmp_path / "a.log", console=True)
        configure_logging(log_file=tmp_path / "b.log", console=True, level="WARNING")
        installed = ours(logger)
        rotating = [h for h in installed if isinstance(h, RotatingFileHandler)]
        assert len(installed) == 2
        assert len(rotating) == 1
        assert rotating[0].baseFilename == str(tmp_path / "b.log")
        assert (rotating[0].maxBytes, rotating[0].backupCount) == (10 * 1024**2, 5)
        assert all(any(isinstance(f, RedactingFilter) for f in h.filters) for h in installed)
        assert foreign in logger.handlers
        assert logger.level == logging.WARNING

        configure_logging(console=False)
        assert ours(logger) == []
    finally:
        logger.removeHandler(foreign)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({"level": "LOUD"}, "log_level"), ({"log_format": "xml"}, "log_format")],
)
def test_bad_level_or_format_is_a_config_error(kwargs: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        configure_logging(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def\nnext", "Authorization: ***\nnext"),
        ('{"authorization": "Basic dXNlcjpwdw==", "x": 1}', '{"authorization": "***", "x": 1}'),
        ("x-amz-security-token: FQo", "x-amz-security-token: ***"),
        ("https://b.s3.amazonaws.com/k?AWSAccessKeyId=AK&Signature=zz&Expires=1", None),
        ("dbname=app password=pw host=h", "dbname=app password=*** host=h"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("plain words, nothing to hide", "plain words, nothing to hide"),
    ],
)
def test_redact_patterns(text: str, expected: str | None) -> None:
    redacted = RedactingFilter().redact(text)
    if expected is None:
        expected = "https://b.s3.amazonaws.com/k?AWSAccessKeyId=***&Signature=***&Expires=1"
    assert redacted == expected
    assert RedactingFilter().redact(redacted) == redacted  # safe to run once per handler


def test_secret_shapes_and_short_secrets() -> None:
    f = RedactingFilter(["abc", "p@ss w/rd", ""])
    assert f.redact("abc stays: too short to hunt for") == "abc stays: too short to hunt for"
    assert f.redact("raw p@ss w/rd and quoted p%40ss%20w%2Frd") == "raw *** and quoted ***"


def test_filter_rewrites_message_and_args_only_when_needed() -> None:
    f = RedactingFilter([SECRET])
    clean = logging.LogRecord("r2migrate", logging.INFO, __file__, 1, "n=%d", (3,), None)
    assert f.filter(clean)
    assert (clean.msg, clean.args) == ("n=%d", (3,))

    dirty = logging.LogRecord("r2migrate", logging.INFO, __file__, 1, "k=%s", (SECRET,), None)
    assert f.filter(dirty)
    assert dirty.getMessage() == "k=***"
    assert SECRET not in repr(dirty.args)


def test_json_formatter_without_the_filter_keeps_shape() -> None:
    record = logging.LogRecord("r2migrate.x", logging.ERROR, __file__, 1, "m %s", ("a",), None)
    record.file_id = 9
    record.path = Path("/srv/media/a.pdf")  # not JSON-native: written as text
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "m a"
    assert entry["file_id"] == 9
    assert entry["path"] == "/srv/media/a.pdf"
    assert list(entry)[:4] == ["ts", "level", "logger", "message"]


def test_the_log_file_and_a_folder_made_for_it_are_the_owners_alone(tmp_path):
    import stat

    state_dir = tmp_path / "new" / ".r2migrate"
    log_file = state_dir / "r2migrate.log"
    configure_logging(log_file=log_file, console=False)
    logging.getLogger("r2migrate").warning("access key AKIDEXAMPLE")
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    # a log an older release left readable by everyone is made private when next opened
    log_file.chmod(0o644)
    configure_logging(log_file=log_file, console=False)
    logging.getLogger("r2migrate").warning("again")
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    configure_logging(console=False)  # close the file handler
