"""The command line as an operator meets it: help, messages, exit codes, no tracebacks."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from r2migrate.cli.main import main
from tests.cli_env import cli_env as _env


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
    assert "make demo" in readme and "make test" in readme and "make test-pg" in readme
    assert "\ndemo:" in makefile and "\ntest:" in makefile and "\ntest-pg:" in makefile
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
    assert made.exit_code == 1, made.output  # written, but nothing is proven yet
    assert "Not all proven: 0 of 120 file(s)" in made.stdout
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["ok"] is False
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest
    lines = (out / "files.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 120
    again = _invoke(["report", "--all", "--out", str(out)], env)
    assert again.exit_code == 2  # never overwrites a report
    assert _invoke(["verify", "--all"], env).exit_code == 0
    proven = _invoke(["report", "--all", "--out", str(tmp_path / "proven")], env)
    assert proven.exit_code == 0, proven.output
    assert "All 120 file(s) are proven identical" in proven.stdout
    batch = json.loads(_invoke(["batches", "--json"], env).stdout)[0]["batch_id"]
    assert _invoke(["rollback", batch], env).exit_code == 0
    rolled = _invoke(["report", "--all", "--out", str(tmp_path / "rolled")], env)
    assert rolled.exit_code == 0, rolled.output  # the rest is proven; the rolled back not counted
    assert "All 60 file(s) are proven identical to the originals; 60 of rolled" in rolled.stdout
    summary = json.loads((tmp_path / "rolled" / "summary.json").read_text(encoding="utf-8"))
    assert summary["files_proven"] == 60 and summary["files_rolled_back"] == 60


# -- settings precedence: flag > --set > environment > r2migrate.toml > embedded stack > default


LAYERS = ("stack", "toml", "env", "set", "flag")
# Five distinct values per setting, one per layer; a flag exists for some settings only.
LAYER_VALUES = {
    "batch_size": (11, 12, 13, 14, None),
    "workers": (3, 4, 5, 6, None),
    "processes": (2, 3, 4, 5, None),
    "media_url": (*(f"http://127.0.0.1:9/{n}/" for n in LAYERS[:4]), None),
    "bucket_name": ("from-stack", "from-toml", "from-env", "from-set", "from-flag"),
    "location": ("stack", "toml", "env", "set", "flag"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "DEBUG"),
}
FLAGS = {"bucket_name": "--bucket", "location": "--location", "log_level": "--log-level"}


def _apply_layers(tmp_path: Path, setting: str, layers: Sequence[str]) -> tuple[list[str], dict]:
    """Put this setting's value of each named layer in place; returns (CLI args, env)."""
    values = dict(zip(LAYERS, LAYER_VALUES[setting], strict=True))
    args: list[str] = []
    env: dict[str, str] = {}
    for layer in layers:
        value = values[layer]
        if layer == "stack":
            stack_dir = tmp_path / ".r2migrate"
            stack_dir.mkdir(exist_ok=True)
            (stack_dir / "stack.json").write_text(json.dumps({setting: value}))
        elif layer == "toml":
            (tmp_path / "r2migrate.toml").write_text(f"{setting} = {json.dumps(value)}\n")
        elif layer == "env":
            env[f"R2MIGRATE_{setting.upper()}"] = str(value)
        elif layer == "set":
            args += ["--set", f"{setting}={value}"]
        else:
            args += [FLAGS[setting], str(value)]
    return args, env


def _source_label(layer: str, setting: str) -> str:
    return {
        "stack": "embedded stack (",
        "toml": "r2migrate.toml (",
        "env": f"env R2MIGRATE_{setting.upper()}",
        "set": "--set",
        "flag": f"option {FLAGS.get(setting)}",
    }[layer]


PRECEDENCE_CASES = [
    (setting, lower, higher)
    for setting, values in LAYER_VALUES.items()
    for lower, higher in itertools.pairwise(LAYERS)
    if values[LAYERS.index(higher)] is not None
]


@pytest.mark.parametrize(
    ("setting", "lower", "higher"), PRECEDENCE_CASES, ids=lambda v: str(v) if v else ""
)
def test_each_layer_beats_the_one_below_in_config_show(tmp_path, setting, lower, higher):
    args, env = _apply_layers(tmp_path, setting, [lower, higher])
    result = _invoke([*args, "config", "show", "--json"], env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)[setting]
    expected = LAYER_VALUES[setting][LAYERS.index(higher)]
    assert shown["value"] == str(expected)
    assert shown["source"].startswith(_source_label(higher, setting))
    # and alone, the lower layer is what counts
    for leftover in (tmp_path / ".r2migrate" / "stack.json", tmp_path / "r2migrate.toml"):
        leftover.unlink(missing_ok=True)
    args, env = _apply_layers(tmp_path, setting, [lower])
    alone = json.loads(_invoke([*args, "config", "show", "--json"], env).stdout)[setting]
    assert alone["value"] == str(LAYER_VALUES[setting][LAYERS.index(lower)])
    assert alone["source"].startswith(_source_label(lower, setting))


@pytest.mark.parametrize(
    ("env_value", "set_value", "flag_value", "expected"),
    [
        (None, None, None, 50),
        ("5", None, None, 5),
        ("5", "7", None, 7),
        (None, "7", None, 7),
        ("5", "7", "9", 9),
        (None, "7", "9", 9),
    ],
)
def test_plan_batch_size_precedence(settings, sample, env_value, set_value, flag_value, expected):
    env = _env(settings)
    if env_value is not None:
        env["R2MIGRATE_BATCH_SIZE"] = env_value
    args = ["--set", f"batch_size={set_value}"] if set_value is not None else []
    args += ["plan", "--dry-run", "--json"]
    args += ["--batch-size", flag_value] if flag_value is not None else []
    result = _invoke(args, env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["batch_size"] == expected
    assert summary["batches_needed"] == -(-sample.referenced_files // expected)


def test_set_source_http_is_obeyed_unless_a_flag_says_disk(settings, sample, media_root):
    from tests.mediaserver import MediaHTTPServer

    env = _env(settings)
    with MediaHTTPServer(media_root) as server:
        over_http = ["--set", "source=http", "--set", f"media_url={server.url}"]
        result = _invoke([*over_http, "inventory", "--no-save", "--json"], env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["orphans"] == 0  # http looks for no orphans
        asked = len(server.seen)
        assert asked >= sample.referenced_files - sample.missing
        flagged = _invoke([*over_http, "inventory", "--no-save", "--json", "--source", "disk"], env)
        assert flagged.exit_code == 0, flagged.output
        assert json.loads(flagged.stdout)["orphans"] == sample.orphans
        assert len(server.seen) == asked  # the disk was read, not the server
    result = _invoke(["--set", "source=http", "inventory", "--no-save"], env)
    assert result.exit_code == 2  # http needs a media_url, and --set source=http was taken
    assert "media_url" in result.output


def test_set_processes_reaches_run(settings, sample, tmp_path):
    env = _env(settings)
    assert _invoke(["plan"], env).exit_code == 0
    log_file = tmp_path / "run.log"
    result = _invoke(["--set", "processes=2", "--log-file", str(log_file), "run"], env)
    assert result.exit_code == 0, result.output
    assert "in 2 processes" in log_file.read_text(encoding="utf-8")


# Every subcommand flag that maps to a setting, with a value the setting refuses.
INVALID_SETS = [
    ("inventory", "source=ftp"),
    ("inventory", "media_url=not-a-url"),
    ("plan", "batch_size=abc"),
    ("plan", "source=ftp"),
    ("plan", "media_url=not-a-url"),
    ("run", "workers=abc"),
    ("run", "processes=abc"),
    ("run", "source=ftp"),
    ("run", "media_url=not-a-url"),
    ("worker", "workers=abc"),
    ("worker", "processes=abc"),
    ("worker", "source=ftp"),
    ("worker", "media_url=not-a-url"),
]
COMMAND_ARGS = {
    "inventory": ["inventory", "--no-save"],
    "plan": ["plan", "--dry-run"],
    "run": ["run"],
    "worker": ["worker", "--once", "--poll-s", "0.1", "--processes", "1"],
}


@pytest.mark.parametrize(("command", "value"), INVALID_SETS)
def test_invalid_set_value_beside_an_unset_flag_is_rejected(settings, sample, command, value):
    result = _invoke(["--set", value, *COMMAND_ARGS[command]], _env(settings))
    assert result.exit_code == 2, result.output
    name = value.partition("=")[0]
    assert f"{name} (--set)" in result.output


# Every command that loads settings, with arguments that would otherwise get it working.
LOADING_COMMANDS = [
    ["config", "show"],
    ["dev", "status"],
    ["dev", "down"],
    ["inventory"],
    ["plan", "--dry-run"],
    ["run"],
    ["worker", "--once"],
    ["verify", "--all"],
    ["rollback", "some-batch"],
    ["doctor"],
    ["watch", "--once"],
    ["report", "--all", "--out", "audit"],
    ["batches"],
    ["status", "some-batch"],
    ["cutover-check"],
    ["notebook", "run", "04_verification_report"],
]


@pytest.mark.parametrize("command", LOADING_COMMANDS, ids=" ".join)
def test_invalid_set_value_is_rejected_by_every_command(settings, command):
    result = _invoke(["--set", "batch_size=abc", *command], _env(settings))
    assert result.exit_code == 2, result.output
    assert "batch_size (--set): expected an integer, got 'abc'" in result.output


def test_run_prints_wall_time_and_head_settlements_apart(settings, sample, stack):
    import hashlib
    import re
    import time

    from r2migrate.s3.bucket import Bucket
    from r2migrate.store.ledger import State
    from tests.helpers.proxy import FaultProxy

    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    proxy = FaultProxy(host, int(port))
    # planned through the proxy: a batch runs at the endpoint it was planned for
    env = _env(
        settings,
        R2MIGRATE_WORKERS="8",
        R2MIGRATE_PROCESSES="1",
        R2MIGRATE_ENDPOINT_URL=proxy.url,
    )
    assert _invoke(["plan", "--batch-size", "10"], env).exit_code == 0
    # Five files already in the bucket with their SHA-256, as a killed run leaves them.
    with State.open(settings.database_url) as state:
        batches = state.list_batches()
        rows = [f for b in batches for f in state.batch_files(b.batch_id)][:5]
    total = sum(b.total_files for b in batches)
    for rec in rows:
        data = (settings.media_root / rec.relative_path).read_bytes()
        Bucket(settings).put_object_checked(
            rec.object_key,
            data,
            sha256_hex=hashlib.sha256(data).hexdigest(),
            content_type=rec.content_type,
            content_encoding=rec.content_encoding,
        )
    with proxy:
        # slow PUTs, batches of ten: they run side by side, so their times add up to more
        proxy.rule = lambda r: ("delay", 0.2) if r.method == "PUT" else None
        started = time.monotonic()
        ran = _invoke(["run"], env)
        wall = time.monotonic() - started
    assert ran.exit_code == 0, ran.output
    found = re.search(r"Uploaded (\d+) file\(s\), .* in ([\d.]+) s", ran.stdout)
    assert found, ran.stdout
    assert int(found[1]) == total - 5
    assert float(found[2]) <= wall + 0.05  # printed with one decimal
    assert "; 5 already in the bucket with their SHA-256 (settled by HEAD" in ran.stdout


# -- one way to name a batch, help that teaches, hints that work, Ctrl-C and pipes (issue 18)


def _all_commands(group=None, path=()):
    import click

    group = group or main
    yield path, group
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from _all_commands(command, (*path, name))


BATCH_COMMANDS = {
    "run": "--resume-batch",
    "status": "--batch-status",
    "rollback": "--rollback-batch",
    "verify": None,
    "watch": None,
    "report": None,
}


@pytest.mark.parametrize("command", sorted(BATCH_COMMANDS))
def test_every_batch_command_takes_dash_dash_batch(command):
    out = _invoke([command, "--help"]).output
    assert "--batch" in out and " ID " in out, out
    alias = BATCH_COMMANDS[command]
    if alias:
        assert alias in out
    assert "BATCH_ID" not in out  # the old positional still works, unlisted


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--batch", "nope"],
        ["status", "nope"],
        ["status", "--batch-status", "nope"],
        ["rollback", "--batch", "nope", "--dry-run"],
        ["rollback", "--rollback-batch", "nope"],
        ["rollback", "nope"],
        ["verify", "--batch", "nope"],
        ["run", "--batch", "nope"],
        ["run", "--resume-batch", "nope"],
    ],
    ids=" ".join,
)
def test_each_spelling_of_a_batch_reaches_the_ledger(settings, args):
    env = _env(settings)
    assert _invoke(["db", "upgrade"], env).exit_code == 0
    result = _invoke(args, env)
    assert result.exit_code == 4, result.output  # unknown batch: the name got through
    assert "nope" in result.output


def test_two_different_batches_are_a_usage_error():
    result = _invoke(["status", "one", "--batch", "two"])
    assert result.exit_code == 2
    assert "Name one batch" in result.output
    assert _invoke(["rollback"]).exit_code == 2


def test_every_option_has_help_and_every_help_ends_with_examples():
    import click

    missing = [
        f"{' '.join(path)} {'/'.join(p.opts)}"
        for path, command in _all_commands()
        for p in command.params
        if isinstance(p, click.Option) and not p.hidden and not p.help
    ]
    assert missing == []
    for path, _ in _all_commands():
        out = _invoke([*path, "--help"]).output
        lines = [line.strip() for line in out.strip().splitlines()]
        tail = lines[lines.index("Examples:") + 1 :] if "Examples:" in lines else []
        assert tail and all(line.startswith(("r2migrate ", "R2MIGRATE_")) for line in tail), path


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--set", "bucket_nam=x"], {}),
        ([], {"R2MIGRATE_BUCKT_NAME": "x"}),
        (["--set", "batch_size=abc"], {}),
    ],
    ids=["set", "env", "value"],
)
def test_a_settings_error_hint_names_a_command_that_works(tmp_path, args, env):
    import re
    import shlex

    failed = _invoke([*args, "batches"], env)
    assert failed.exit_code == 2
    named = re.findall(r"`(r2migrate [^`]+)`", failed.output.split("hint:", 1)[1])
    assert named, failed.output
    for command in named:
        again = _invoke([*args, *shlex.split(command)[1:]], env)
        assert again.exit_code == 0, (command, again.output)
    assert "bucket_name" in _invoke(["config", "names"]).output


def test_progress_off_a_terminal_is_a_plain_line_every_interval():
    import io

    from r2migrate.cli.progress import ProgressBar

    stream = io.StringIO()
    with ProgressBar("upload", total=10, stream=stream, interval_s=0) as bar:
        bar.advance(3)
        bar.show(7, note="b1")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("upload: 3/10 files (30%)")
    assert lines[-1].startswith("upload: 7/10 files (70%)") and lines[-1].endswith(", b1")
    quiet = io.StringIO()
    with ProgressBar("upload", total=10, stream=quiet, interval_s=3600, leave=True) as bar:
        bar.advance(4)
    (closing,) = quiet.getvalue().splitlines()  # the interval never passed: the last line only
    assert closing.startswith("upload: 4/10 files (40%)")
    transient = io.StringIO()  # like a bar a terminal clears: no closing line
    with ProgressBar("inventory", stream=transient, interval_s=3600) as bar:
        bar.advance(4)
    assert transient.getvalue() == ""
    assert "\x1b" not in stream.getvalue() + quiet.getvalue()
    assert "\r" not in stream.getvalue() + quiet.getvalue()


def test_ctrl_c_names_the_partial_batch_and_the_exact_resume_command(settings, sample, stack):
    import signal
    import time

    from tests.proxy import FaultProxy

    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    proxy = FaultProxy(host, int(port))
    env = _env(
        settings, R2MIGRATE_WORKERS="4", R2MIGRATE_PROCESSES="1", R2MIGRATE_ENDPOINT_URL=proxy.url
    )
    assert _invoke(["plan", "--batch-size", "500"], env).exit_code == 0
    (batch,) = json.loads(_invoke(["batches", "--json"], env).stdout)
    with proxy:
        proxy.rule = lambda r: ("delay", 0.2) if r.method == "PUT" else None
        child = subprocess.Popen(
            [sys.executable, "-m", "r2migrate", "--set", "batch_size=500", "run"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while sum(proxy.count("PUT").values()) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    bid = batch["batch_id"]
    assert f"partial: {bid} (" in err
    assert f"`r2migrate --set batch_size=500 run --batch {bid}`" in err
    # stderr is a pipe: progress came as plain lines, no bar redrawn with \r or colours
    assert re.search(r"^upload: \d+/120 files \(\d+%\)", err, re.M), err
    assert "\x1b[" not in out + err and "\r" not in out + err
