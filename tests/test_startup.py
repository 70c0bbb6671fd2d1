"""Startup stays light: `--help` and a command that only reads the ledger import no heavy library.

Issue 17 asks for `r2migrate --help` and `r2migrate batches` in 0.5 s; what makes them slow is
importing boto3, pandas, procrastinate and the like before any command runs. Timing is not
asserted (the machine is shared); which modules got imported is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Every heavy library the package uses somewhere; none is needed to print help.
HEAVY = (
    "boto3",
    "botocore",
    "s3transfer",
    "psycopg",
    "psycopg_binary",
    "procrastinate",
    "pandas",
    "matplotlib",
    "fastapi",
    "starlette",
    "uvicorn",
    "papermill",
    "nbformat",
    "nbconvert",
    "tqdm",
    "django",
)

# Runs the command as the console script does, then lists sys.modules on its last line.
PROBE = """
import json, sys
from r2migrate.cli.main import main
try:
    main(sys.argv[1:], prog_name="r2migrate")
except SystemExit as exc:
    code = exc.code
print("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _imported_by(args: list[str], **env: str) -> tuple[int, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
        timeout=60,
    )
    last = json.loads(done.stdout.strip().splitlines()[-1])
    return last["code"], {m.split(".")[0] for m in last["modules"]}


def _heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(m for m in HEAVY if m in modules and m not in allowed)


HELP_PATHS = [[], ["run"], ["verify"], ["plan"], ["serve"], ["dev", "up"], ["notebook", "run"]]


@pytest.mark.parametrize("command", HELP_PATHS, ids=lambda c: " ".join(c) or "main")
def test_help_imports_no_heavy_library(command):
    code, modules = _imported_by([*command, "--help"])
    assert code == 0
    assert _heavy(modules) == []


def test_import_r2migrate_is_lazy_and_complete():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, r2migrate; before = sorted(sys.modules); "
            "from r2migrate import Settings, verify, State; "
            "print(json.dumps([before, Settings.__name__, verify.__module__, State.__name__]))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    before, settings, verify_module, state = json.loads(done.stdout)
    assert _heavy({m.split(".")[0] for m in before}) == []
    assert (settings, verify_module, state) == ("Settings", "r2migrate.stages.verify", "State")


def test_batches_loads_psycopg_but_nothing_else_heavy(unused_port):
    # An unreachable database: the command runs as far as connecting, then exits 3.
    code, modules = _imported_by(
        ["batches"], DATABASE_URL=f"postgresql://u@127.0.0.1:{unused_port}/db"
    )
    assert code == 3
    assert "psycopg" in modules
    assert _heavy(modules, allowed=("psycopg", "psycopg_binary")) == []
