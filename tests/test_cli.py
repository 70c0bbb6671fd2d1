"""The command line as an operator meets it: help, messages, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from r2migrate.cli import main


def _env(settings, **extra: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": settings.database_url,
        "AWS_ACCESS_KEY_ID": settings.access_key,
        "AWS_SECRET_ACCESS_KEY": settings.secret_key,
        "R2MIGRATE_ENDPOINT_URL": settings.endpoint_url,
        "R2MIGRATE_REGION_NAME": "us-east-1",
        "R2MIGRATE_BUCKET_NAME": settings.bucket_name,
        "R2MIGRATE_MEDIA_ROOT": str(settings.media_root),
        "R2MIGRATE_STATE_DIR": str(settings.state_dir),
    }
    env.update(extra)
    return env


def _invoke(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)


COMMANDS = [
    [],
    ["config"],
    ["config", "show"],
    ["dev"],
    ["dev", "up"],
    ["dev", "down"],
    ["dev", "status"],
    ["dev", "sample-data"],
    ["db"],
    ["db", "upgrade"],
    ["db", "sql"],
    ["db", "grants"],
    ["inventory"],
    ["plan"],
    ["run"],
    ["batches"],
    ["status"],
    ["worker"],
    ["verify"],
    ["rollback"],
    ["doctor"],
    ["cutover-check"],
    ["serve"],
    ["watch"],
    ["report"],
    ["notebook"],
    ["notebook", "run"],
    ["notebook", "list"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_every_command_has_help(command):
    result = _invoke([*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_help_documents_exit_codes():
    out = _invoke(["--help"]).output
    for code in ("0", "1", "2", "3", "130"):
        assert f"  {code} " in out


def test_python_dash_m_works():
    out = subprocess.run(
        [sys.executable, "-m", "r2migrate", "--version"], capture_output=True, text=True, check=True
    )
    assert "r2migrate" in out.stdout


def test_full_cycle_through_the_cli(settings, sample):
    env = _env(settings)
    inv = _invoke(["inventory", "--json"], env)
    assert inv.exit_code == 0, inv.output
    data = json.loads(inv.stdout)
    assert data["problems"]["missing"] == sample.missing
    dry = _invoke(["plan", "--dry-run", "--batch-size", "25"], env)
    assert dry.exit_code == 0, dry.output
    assert "Nothing was written" in dry.output
    assert "No batches yet" in _invoke(["batches"], env).output
    planned = _invoke(["plan", "--batch-size", "25"], env)
    assert planned.exit_code == 0, planned.output
    ran = _invoke(["run"], env)
    assert ran.exit_code == 0, ran.output
    listed = _invoke(["batches", "--json"], env)
    batches = json.loads(listed.stdout)
    assert batches and all(b["status"] == "completed" for b in batches)
    status = _invoke(["status", batches[0]["batch_id"]], env)
    assert status.exit_code == 0
    assert batches[0]["batch_id"] in status.output


def test_csv_export_has_every_row(settings, sample, tmp_path):
    out = tmp_path / "inv.csv"
    result = _invoke(["inventory", "--csv", str(out), "--no-save"], _env(settings))
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + sample.rows + sample.orphans


def test_unknown_setting_gets_did_you_mean_and_exit_2(settings):
    result = _invoke(["--set", "bucket_nam=x", "batches"], _env(settings))
    assert result.exit_code == 2
    assert "bucket_name" in result.output


def test_unreachable_database_exit_3_without_traceback(settings, unused_port):
    env = _env(settings, DATABASE_URL=f"postgresql://u@127.0.0.1:{unused_port}/db")
    result = _invoke(["batches"], env)
    assert result.exit_code == 3
    assert "Traceback" not in result.output
    assert "hint:" in result.output


def test_missing_bucket_exit_2(settings, sample):
    env = _env(settings, R2MIGRATE_BUCKET_NAME="no-such-bucket-here")
    result = _invoke(["plan", "--dry-run"], env)
    assert result.exit_code == 2
    assert "no-such-bucket-here" in result.output
    assert "R2 never creates" in result.output


def test_wrong_credentials_exit_2(settings, sample):
    env = _env(settings, AWS_SECRET_ACCESS_KEY="not-the-secret")
    result = _invoke(["plan", "--dry-run"], env)
    assert result.exit_code == 2
    assert "not-the-secret" not in result.output


def test_unknown_batch_exit_4(settings):
    assert _invoke(["db", "upgrade"], _env(settings)).exit_code == 0
    result = _invoke(["status", "nope"], _env(settings))
    assert result.exit_code == 4
    assert "r2migrate batches" in result.output


def test_config_show_never_prints_secrets(settings):
    result = _invoke(["config", "show"], _env(settings))
    assert result.exit_code == 0
    assert settings.secret_key not in result.output
    assert "AWS_SECRET_ACCESS_KEY" in result.output or "env" in result.output


def test_log_file_has_no_secrets(settings, sample, tmp_path):
    log_file = tmp_path / "r2m.log"
    env = _env(settings)
    _invoke(["--log-file", str(log_file), "--log-format", "json", "plan"], env)
    _invoke(["--log-file", str(log_file), "--log-format", "json", "run"], env)
    text = log_file.read_text(encoding="utf-8")
    assert '"outcome": "completed"' in text  # the batch's closing line, with its extra fields
    assert settings.secret_key not in text
    password = settings.database_url.split("@")[0].rsplit(":", 1)[-1]
    if password and "//" not in password:
        assert password not in text
    for line in text.splitlines():
        json.loads(line)


def test_readme_quick_start_commands_exist():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert os.access(root / ".ci" / "run", os.R_OK)


def test_worker_once_runs_every_planned_batch(settings, sample):
    env = _env(settings)
    assert _invoke(["plan", "--batch-size", "40"], env).exit_code == 0
    result = _invoke(["worker", "--once", "--poll-s", "0.1", "--processes", "1"], env)
    assert result.exit_code == 0, result.output
    batches = json.loads(_invoke(["batches", "--json"], env).stdout)
    assert len(batches) == 3
    assert {b["status"] for b in batches} == {"completed"}
    watched = _invoke(["watch", "--once"], env)
    assert "queue: 0 batch job(s) waiting, 0 running; 0 worker(s) alive" in watched.stdout


def test_verify_rollback_and_doctor_from_the_cli(settings, sample):
    env = _env(settings)
    assert _invoke(["doctor"], env).exit_code == 0
    assert _invoke(["plan"], env).exit_code == 0
    assert _invoke(["run"], env).exit_code == 0
    cheap = _invoke(["verify", "--all"], env)
    assert cheap.exit_code == 0, cheap.output
    assert "match" in cheap.stdout
    deep = _invoke(["verify", "--all", "--sample", "5", "--seed", "3", "--json"], env)
    assert deep.exit_code == 0
    assert json.loads(deep.stdout)["deep_checked"] == 5
    batch = json.loads(_invoke(["batches", "--json"], env).stdout)[0]["batch_id"]
    dry = _invoke(["rollback", batch, "--dry-run"], env)
    assert dry.exit_code == 0
    assert "would be deleted" in dry.stdout
    done = _invoke(["rollback", batch], env)
    assert done.exit_code == 0, done.output
    assert "rolled_back" in done.stdout
    assert _invoke(["verify"], env).exit_code == 2  # neither BATCH nor --all: usage error


def test_doctor_fails_with_a_hint_when_the_bucket_is_missing(settings):
    result = _invoke(["doctor"], _env(settings, R2MIGRATE_BUCKET_NAME="missing-bucket-x"))
    assert result.exit_code == 1
    assert "fail" in result.stdout
    assert "hint:" in result.stdout


def test_watch_once_and_audit_report(settings, sample, tmp_path):
    env = _env(settings)
    assert _invoke(["plan", "--batch-size", "60"], env).exit_code == 0
    assert _invoke(["run"], env).exit_code == 0
    watched = _invoke(["watch", "--once"], env)
    assert watched.exit_code == 0, watched.output
    assert "completed" in watched.stdout
    assert "all: 120/120 files" in watched.stdout
    out = tmp_path / "audit"
    made = _invoke(["report", "--all", "--out", str(out)], env)
    assert made.exit_code == 0, made.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest
    lines = (out / "files.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 120
    again = _invoke(["report", "--all", "--out", str(out)], env)
    assert again.exit_code == 2  # never overwrites a report
