"""The notebooks, executed through run_notebook (papermill) and nbval against the real stack.

Settings reach the notebook kernels through environment variables set with monkeypatch: the
kernel inherits os.environ (clean_environ has already stripped the developer's own).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import papermill
import psycopg
import pytest

import r2migrate.notebooks.helpers as notebooks
import r2migrate.notebooks.runner as runner
from r2migrate.errors import ConfigError, ExitCode
from r2migrate.notebooks.helpers import NotebookFailed, run_notebook
from r2migrate.s3.bucket import Bucket
from r2migrate.store.ledger import BatchStatus, FileStatus, State

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
EXPECTED = ["01_inventory", "02_dry_run", "03_execute", "04_verification_report", "05_rollback"]
RUN_DIR = re.compile(r"\d{8}T\d{6}Z-(?P<name>\d\d_[a-z_]+)(-\d+)?")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def nb_settings(monkeypatch, settings, sample, stack):
    """The test's settings exported as environment variables for the notebook kernels."""
    env = {
        "DATABASE_URL": settings.database_url,
        "AWS_ACCESS_KEY_ID": stack.access_key,
        "AWS_SECRET_ACCESS_KEY": stack.secret_key,
        "AWS_ENDPOINT_URL_S3": stack.endpoint_url,
        "AWS_REGION": stack.region_name,
        "R2MIGRATE_BUCKET_NAME": settings.bucket_name,
        "R2MIGRATE_MEDIA_ROOT": str(settings.media_root),
        "R2MIGRATE_STATE_DIR": str(settings.state_dir),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings


def _secrets(settings) -> list[str]:
    password = urlsplit(settings.database_url).password
    assert password and settings.secret_key
    return [password, settings.secret_key]


def _schema_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'r2migrate'"
        ).fetchone()
    return bool(row and row[0])


def _check_run_folder(run: notebooks.NotebookRun, name: str) -> dict:
    match = RUN_DIR.fullmatch(run.run_dir.name)
    assert match and match["name"] == name
    assert run.notebook_path == run.run_dir / f"{name}.ipynb"
    assert run.notebook_path.is_file() and run.html_path.is_file() and run.results_path.is_file()
    assert run.redactions == 0  # the notebook itself printed no secret
    results = json.loads(run.results_path.read_text())
    assert results == run.results
    html = run.html_path.read_text()
    assert "<script" not in html  # readable offline: nothing loaded from the network
    assert "load_settings()" not in html  # code cells are hidden
    return results


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


# -- the notebooks as committed ----------------------------------------------------------------


def test_notebooks_are_committed_clean():
    assert [i.name for i in notebooks.list_notebooks(NOTEBOOKS)] == EXPECTED
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path.name
        ids = [cell.get("id") for cell in nb.cells]
        assert all(ids) and len(set(ids)) == len(ids), path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.id)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name


def test_parameters_have_safe_defaults_and_papermill_reads_them_all():
    for info in notebooks.list_notebooks(NOTEBOOKS):
        defaults = info.defaults
        if "dry_run" in defaults:
            assert defaults["dry_run"] is True, info.name
        for name in ("batch_id", "batch_ids"):
            assert defaults.get(name) is None, info.name  # no batch acted on unless named
        assert all(p.help for p in info.parameters), info.name
        assert not any(notebooks.is_secret_name(p.name) for p in info.parameters)
        # papermill's own (regex) reading must find every name, or it warns on each run
        found = {p["name"] for p in papermill.inspect_notebook(str(info.path)).values()}
        assert found == {*defaults, "results_path"}, info.name


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("db_password", True),
        ("database_url", True),
        ("secret_key", True),
        ("access_key", True),
        ("api_key", True),
        ("key", True),
        ("session_token", True),
        ("auth_header", True),
        ("batch_id", False),
        ("batch_key", False),
        ("object_key", False),
        ("batch_size", False),
        ("dry_run", False),
        ("keyword", False),
        ("deep_sample", False),
    ],
)
def test_secret_names(name, secret):
    assert notebooks.is_secret_name(name) is secret


def test_parameter_values_are_converted_to_the_annotated_type():
    info = notebooks.find_notebook("03", NOTEBOOKS)
    got = notebooks.check_parameters(
        info, {"dry_run": "false", "batch_size": "25", "max_batches": "None", "batch_id": "b1"}
    )
    assert got == {"dry_run": False, "batch_size": 25, "max_batches": None, "batch_id": "b1"}
    assert notebooks.check_parameters(info, {"dry_run": True}) == {"dry_run": True}
    report_info = notebooks.find_notebook("verification_report", NOTEBOOKS)
    assert notebooks.check_parameters(report_info, {"batch_ids": "a, b"}) == {
        "batch_ids": ["a", "b"]
    }
    assert notebooks.check_parameters(report_info, {"batch_ids": '["a"]'}) == {"batch_ids": ["a"]}
    with pytest.raises(ConfigError) as excinfo:
        notebooks.check_parameters(info, {"dry_run": "maybe", "batch_size": "ten"})
    assert len(excinfo.value.problems) == 2


def test_unknown_parameter_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        run_notebook("03_execute", {"dry_rn": "false"}, runs_dir=tmp_path / "runs")
    message = str(excinfo.value)
    assert "'dry_rn'" in message and "did you mean 'dry_run'" in message
    assert "valid parameters: batch_id, batch_size, dry_run, max_batches, workers" in message
    assert not (tmp_path / "runs").exists()


def test_secret_parameters_are_refused(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match="looks like a secret"):
        run_notebook("03_execute", {"secret_key": "x"}, runs_dir=runs)
    with pytest.raises(ConfigError, match="runner itself"):
        run_notebook("03_execute", {"results_path": "/tmp/x"}, runs_dir=runs)
    with pytest.raises(ConfigError, match="URL with a password"):
        run_notebook("03_execute", {"batch_id": "postgresql://u:pw@db/app"}, runs_dir=runs)
    assert not runs.exists()


def test_unknown_notebook_lists_the_known_ones():
    with pytest.raises(ConfigError, match="01_inventory, 02_dry_run"):
        notebooks.find_notebook("99_nothing", NOTEBOOKS)


def test_run_folders_are_never_reused(tmp_path):
    from datetime import UTC, datetime

    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = runner._run_dir(tmp_path, "01_inventory", at)
    second = runner._run_dir(tmp_path, "01_inventory", at)
    assert first.name == "20300102T030405Z-01_inventory"
    assert second.name == "20300102T030405Z-01_inventory-2"


# -- executed against the stack ----------------------------------------------------------------


def test_inventory_notebook(nb_settings, sample, tmp_path):
    run = run_notebook("01_inventory", runs_dir=tmp_path / "runs")
    results = _check_run_folder(run, "01_inventory")
    assert results["rows"] == sample.rows
    assert results["orphans"] == sample.orphans
    assert results["problems"]["missing"] == sample.missing
    assert results["saved"] is True
    with State.open(nb_settings.database_url, migrate=False) as state:
        run_id = state.latest_inventory_run()
        assert run_id == results["run_id"]
        assert sum(1 for _ in state.iter_inventory(run_id)) == sample.rows + sample.orphans
    html = run.html_path.read_text()
    pngs = _embedded_pngs(html)
    assert len(pngs) >= 3 and all(p.startswith(PNG_SIGNATURE) for p in pngs)
    # words for people: problem meanings and what happens, no codes, no '..' folder, no marker
    assert "a file on disk that no row references" in html and "not migrated until fixed" in html
    assert ">blocking</th>" not in html and "dangling_symlink" not in html
    assert ">..</td>" not in html and ".r2migrate-sample" not in html


def test_dry_run_notebook_writes_nothing(nb_settings, sample, tmp_path):
    run = run_notebook("02_dry_run", {"batch_size": "40"}, runs_dir=tmp_path / "runs")
    results = _check_run_folder(run, "02_dry_run")
    assert results["dry_run"] is True
    assert results["actions"]["upload"] == sample.referenced_files
    assert results["batches_needed"] == -(-sample.referenced_files // 40)
    assert results["refused"] == results["actions"]["refuse"] > 0
    html = run.html_path.read_text()
    assert "LIST request" in html and "0 lookups" not in html
    assert "the row names a file that is not on disk" in html  # a refusal's reason in words
    assert not _schema_exists(nb_settings.database_url)
    assert list(Bucket(nb_settings).iter_objects()) == []


def test_execute_notebook_defaults_to_a_dry_run(nb_settings, sample, tmp_path):
    run = run_notebook("03_execute", runs_dir=tmp_path / "runs")
    results = _check_run_folder(run, "03_execute")
    assert results["dry_run"] is True
    assert results["would_upload_files"] == sample.referenced_files
    assert not _schema_exists(nb_settings.database_url)
    assert list(Bucket(nb_settings).iter_objects()) == []


def test_execute_then_verification_report(nb_settings, sample, media_root, tmp_path):
    runs = tmp_path / "runs"
    first = run_notebook(
        "03", {"dry_run": "false", "batch_size": "50", "max_batches": "2"}, runs_dir=runs
    )
    results = _check_run_folder(first, "03_execute")
    assert len(results["planned_batch_ids"]) == 3
    assert results["uploaded"] == 100 and results["failed"] == 0
    html = first.html_path.read_text()
    assert "<strong>Done.</strong> 100 files" in html and "already in the bucket" in html
    assert "resolved_by_head" not in html and "files, " not in html  # no progress log dump
    assert (first.run_dir / "progress.log").read_text().count("files") >= 3
    with State.open(nb_settings.database_url) as state:
        statuses = [b.status for b in state.list_batches()]
    assert statuses == [BatchStatus.COMPLETED, BatchStatus.COMPLETED, BatchStatus.PLANNED]

    second = run_notebook("03", {"dry_run": False}, runs_dir=runs)  # finishes the third batch
    assert _check_run_folder(second, "03_execute")["uploaded"] == sample.referenced_files - 100
    assert len(list(Bucket(nb_settings).iter_objects())) == sample.referenced_files

    batch_ids = results["planned_batch_ids"]
    one = run_notebook("04", {"batch_ids": batch_ids[0], "deep_sample": "0"}, runs_dir=runs)
    partial = _check_run_folder(one, "04_verification_report")
    assert partial["scope"] == [batch_ids[0]]
    assert partial["files_proven"] == 50
    with State.open(nb_settings.database_url) as state:
        verified = {b.batch_id: b.verified_files for b in state.list_batches()}
    assert verified == {batch_ids[0]: 50, batch_ids[1]: 0, batch_ids[2]: 0}

    full = run_notebook("04", {"deep_sample": "5"}, runs_dir=runs)
    report = _check_run_folder(full, "04_verification_report")
    assert report["scope"] == "all"
    assert report["files_proven"] == sample.referenced_files
    assert report["bytes_proven"] == sample.referenced_bytes
    assert report["failures"] == 0
    assert [c["deep_checked"] for c in report["checks"]] == [5]
    assert report["checks"][0]["ok"] is True
    assert report["ok"] is True and report["verdict"].startswith("All 120 file(s)")
    with State.open(nb_settings.database_url) as state:
        files = [f for b in state.list_batches() for f in state.batch_files(b.batch_id)]
        checks = state.events(kind="verify")
    assert {f.status for f in files} == {FileStatus.VERIFIED}
    assert len(checks) == 50 + sample.referenced_files
    # the audit files sit in the run folder and the manifest's hashes hold
    audit = Path(report["audit"]["dir"])
    assert audit == full.run_dir / "audit"
    manifest = json.loads((audit / "manifest.json").read_text())
    for entry in manifest["files"]:
        data = (audit / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert (audit / "files.csv").read_text().count("\n") == sample.referenced_files + 1
    html = full.html_path.read_text()
    assert "proven identical" in html and "files.csv" in html


def test_notebook_run_exits_1_when_the_report_is_not_all_proven(nb_settings, monkeypatch, tmp_path):
    """Through the CLI, the bucket given only as a flag: it must reach the notebook's kernel."""
    from click.testing import CliRunner

    from r2migrate.cli.main import main

    monkeypatch.delenv("R2MIGRATE_BUCKET_NAME")
    flag = ["--bucket", nb_settings.bucket_name]
    runner = CliRunner()
    for command in (["plan"], ["run"]):
        assert runner.invoke(main, [*flag, *command]).exit_code == 0
    runs = tmp_path / "runs"
    report_04 = ["notebook", "run", "04", "-p", "deep_sample", "0", "--runs-dir", str(runs)]
    good = runner.invoke(main, [*flag, *report_04])
    assert good.exit_code == 0, good.output
    assert "All 120 file(s) are proven identical" in good.output

    bucket = Bucket(nb_settings)
    victim = next(key for key, _ in bucket.iter_objects())
    bucket.client.delete_object(Bucket=bucket.name, Key=victim)
    bad = runner.invoke(main, [*flag, *report_04])
    assert bad.exit_code == 1, bad.output
    assert '"ok": false' in bad.output and "Not all proven: 119 of 120" in bad.output
    latest = sorted(runs.iterdir())[-1]  # still written: the notebook, its report, its results
    assert (latest / "04_verification_report.ipynb").is_file()
    assert "ATTENTION" in (latest / "report.html").read_text()
    results = json.loads((latest / "results.json").read_text())
    assert results["ok"] is False and results["failures"] == 1
    assert results["verify_outcomes"] == {"match": 119, "missing": 1}


def test_rollback_notebook_is_a_dry_run_unless_told(nb_settings, sample, tmp_path):
    runs = tmp_path / "runs"
    executed = run_notebook("03", {"dry_run": "false", "max_batches": "1"}, runs_dir=runs)
    batch_id = executed.results["planned_batch_ids"][0]
    bucket = Bucket(nb_settings)
    before = sorted(k for k, _ in bucket.iter_objects())
    listing = run_notebook("05_rollback", runs_dir=runs)
    assert _check_run_folder(listing, "05_rollback") == {"batch_id": None, "dry_run": True}
    dry = run_notebook("05", {"batch_id": batch_id}, runs_dir=runs)
    assert _check_run_folder(dry, "05_rollback")["counts"]["would_delete"] == 50
    dry_html = dry.html_path.read_text()
    assert "nothing was deleted" in dry_html and "still completed" in dry_html
    assert "is now" not in dry_html and "status now" not in dry_html
    assert sorted(k for k, _ in bucket.iter_objects()) == before
    real = run_notebook("05", {"batch_id": batch_id, "dry_run": "false"}, runs_dir=runs)
    results = _check_run_folder(real, "05_rollback")
    assert results["counts"]["deleted"] == 50
    assert results["batch_status"] == "rolled_back"
    assert list(bucket.iter_objects()) == []
    with State.open(nb_settings.database_url) as state:
        assert state.get_batch(batch_id).status is BatchStatus.ROLLED_BACK


def test_failing_cell_saves_the_notebook_and_html(nb_settings, tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(NotebookFailed) as excinfo:
        run_notebook("04", {"batch_ids": "no-such-batch"}, runs_dir=runs)
    failed = excinfo.value
    assert failed.ename == "BatchNotFound"
    assert failed.exit_code == ExitCode.STATE
    assert failed.cell_id == "setup"
    message = str(failed)
    assert "cell 3 (id setup)" in message
    assert str(failed.run.notebook_path) in message and str(failed.run.html_path) in message
    assert failed.run.notebook_path.is_file() and failed.run.html_path.is_file()
    assert not failed.run.ok
    assert "BatchNotFound" in failed.run.html_path.read_text()
    executed = nbformat.read(failed.run.notebook_path, as_version=4)
    assert executed.metadata.papermill.parameters["batch_ids"] == ["no-such-batch"]


def test_no_secret_in_any_output(nb_settings, tmp_path):
    runs = tmp_path / "runs"
    run_notebook("01", runs_dir=runs)
    run_notebook("03", {"dry_run": "false"}, runs_dir=runs)
    run_notebook("04", {"deep_sample": "2"}, runs_dir=runs)
    with pytest.raises(NotebookFailed):
        run_notebook("05", {"batch_id": "nope"}, runs_dir=runs)
    written = [p for p in runs.rglob("*") if p.is_file()]
    assert len(written) >= 4 * 3
    for path in written:
        text = path.read_text(encoding="utf-8")
        for secret in _secrets(nb_settings):
            assert secret not in text, path


def test_nbval_runs_every_notebook(nb_settings, tmp_path):
    """`pytest --nbval-lax notebooks/` with the stack's settings, as CI runs it."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            # Without its own basetemp the inner pytest chmods /tmp/pytest-of-<user> back to
            # 0700, which locks the embedded PostgreSQL (another user) out of this session's
            # stack folder and takes the database down.
            f"--basetemp={tmp_path / 'nbval-tmp'}",
            str(NOTEBOOKS),
        ],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_interactive_paths_use_widgets(nb_settings, tmp_path):
    """Without results_path (JupyterLab, nbval) 03 shows tqdm widgets and 04 a batch picker."""
    executed = tmp_path / "03.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "03_execute.ipynb"),
        str(executed),
        parameters={"dry_run": False},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
        execution_timeout=240,
    )
    report = tmp_path / "04.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "04_verification_report.ipynb"),
        str(report),
        parameters={"deep_sample": 0},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
        execution_timeout=240,
    )
    for path, cell_id in ((executed, "execute"), (report, "picker")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.get("id") == cell_id)
        kinds = {k for o in cell.outputs for k in o.get("data", {})}
        assert "application/vnd.jupyter.widget-view+json" in kinds, (path.name, kinds)
    with State.open(nb_settings.database_url) as state:
        assert {b.status for b in state.list_batches()} == {BatchStatus.COMPLETED}
    assert not (tmp_path / "runs").exists()  # nothing saved when run by hand


def test_explore_filters_by_value_folder_and_size_band():
    import pandas as pd

    from r2migrate.notebooks.display import filter_frame

    frame = pd.DataFrame(
        {
            "problem": ["missing | orphan", "missing", "", "orphan"],
            "folder": ["a", "b", "a", "a"],
            "size_bytes": pd.array([10, 5 << 20, None, 2 << 10], dtype="Int64"),
        }
    )
    assert len(filter_frame(frame, {"problem": "(all)", "folder": "(all)"}, "size_bytes")) == 4
    assert list(filter_frame(frame, {"problem": "orphan"}, "size_bytes").index) == [0, 3]
    chosen = filter_frame(frame, {"problem": "missing", "folder": "a"}, "size_bytes")
    assert list(chosen.index) == [0]
    banded = filter_frame(frame, {}, "size_bytes", "1 KiB to 1 MiB")
    assert list(banded.index) == [3]
    assert list(filter_frame(frame, {}, "size_bytes", "under 1 KiB").index) == [0]


def test_verdict_block_words_and_colours():
    from r2migrate.notebooks.verdict import outcome_rows, verdict_html

    cost = {"operations_usd": 0.0012, "class_a_ops": 130, "class_b_ops": 240}
    passing = {
        "ok": True, "files": 3, "files_done": 3, "bytes_done": 3072, "bytes_proven": 3072,
        "verdicts": {"proven": 3}, "verify_outcomes": {"match": 3}, "cost_so_far": cost,
    }  # fmt: skip
    html = verdict_html(passing, batches=1, where="the bucket media")
    assert 'data-verdict="PASS"' in html and "#2f855a" in html
    assert "All 3 files are proven identical" in html and "in 1 batch." in html
    assert "What failed:</b> Nothing." in html and "$0.0012 in requests" in html
    unchecked = {
        **passing, "ok": False, "verdicts": {"proven": 1, "needs_attention": 1, "not_checked": 1},
        "verify_outcomes": {"match": 1, "differ": 1, "not_checked": 1},
        "status_counts": {"conflict": 1},
    }  # fmt: skip
    html = verdict_html(unchecked, batches=2)
    assert 'data-verdict="ATTENTION"' in html and "#c53030" in html
    assert "1 of 3 files are proven identical; 1 needs attention and 1 is not checked yet." in html
    assert "1 different in the bucket, 1 blocked by a different object" in html
    assert 'data-verdict="NOTHING TO CHECK"' in verdict_html({"ok": True})
    rows = outcome_rows({"not_checked": 2, "missing": 1, "match": 5, "extra": 0})
    assert [r[0] for r in rows] == [
        "proven identical",
        "missing from the bucket",
        "not checked yet",
    ]
