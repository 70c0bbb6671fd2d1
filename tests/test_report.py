"""report: frames, figures, watch snapshots and audit files from a real migrated sample."""

from __future__ import annotations

import csv
import hashlib
import json

import psycopg
import pytest

import r2migrate.report.audit as report
from r2migrate import inventory, plan
from r2migrate import run as run_batches
from r2migrate.errors import BatchNotFound, ConfigError
from r2migrate.s3.bucket import Bucket
from r2migrate.stages.rollback import rollback
from r2migrate.stages.transfer import Progress
from r2migrate.stages.verify import key_space, verify
from r2migrate.store.ledger import BatchStatus, FileStatus, MediaFile, State

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def migrated(settings, sample):
    """The sample inventoried, planned in batches of 50 and uploaded; yields an open State."""
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        plan(settings, state, batch_size=50)
        result = run_batches(settings, state)
        assert result.failed == 0
        yield state


def _table_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM r2migrate.{table}").fetchone()[0]
            for table in ("batches", "files", "events", "inventory_runs")
        }


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_frames_describe_every_batch_and_file(migrated, sample):
    batches = migrated.list_batches()
    frame = report.batches_frame(migrated)
    assert list(frame.batch_id) == [b.batch_id for b in batches]
    assert set(frame.status) == {"completed"}
    assert frame.files.sum() == sample.referenced_files
    files = report.files_frame(migrated)
    assert len(files) == sample.referenced_files
    assert set(files.status) == {"uploaded"}
    assert set(files.verify_outcome) == {report.NOT_CHECKED}
    one = report.files_frame(migrated, [batches[0].batch_id])
    assert set(one.batch_id) == {batches[0].batch_id}
    assert len(one) == batches[0].total_files


def test_summary_before_and_after_verify(migrated, settings, sample):
    before = report.summary_dict(migrated)
    assert before["files"] == before["files_done"] == sample.referenced_files
    assert before["bytes"] == sample.referenced_bytes
    assert before["files_proven"] == 0
    assert before["files_not_checked"] == sample.referenced_files
    assert before["failures"] == 0
    # one PUT per small file; create + parts + complete for the multipart one
    assert before["cost_so_far"]["class_a_ops"] > sample.referenced_files
    assert before["cost_so_far"]["class_b_ops"] == 0

    verify(settings, migrated, all_batches=True)
    after = report.summary_dict(migrated)
    assert after["files_proven"] == sample.referenced_files
    assert after["bytes_proven"] == sample.referenced_bytes
    assert after["verify_outcomes"] == {"match": sample.referenced_files}
    assert after["cost_so_far"]["class_b_ops"] == sample.referenced_files  # one HEAD each
    rows = list(report.audit_rows(migrated))
    assert all(r.last_verified_at is not None and r.status == "verified" for r in rows)
    assert report.outcome_counts(rows) == {"match": sample.referenced_files}


def test_a_deleted_object_is_a_failure_with_its_reason(migrated, settings):
    bucket = Bucket(settings)
    batch = migrated.list_batches()[0]
    victim = migrated.batch_files(batch.batch_id)[3]
    bucket.client.delete_object(Bucket=bucket.name, Key=victim.object_key)
    verify(settings, migrated, batch_id=batch.batch_id)
    rows = list(report.audit_rows(migrated, [batch.batch_id]))
    failures = report.failures_frame(rows)
    assert list(failures.object_key) == [victim.object_key]
    assert list(failures.verify_outcome) == ["missing"]
    assert "no object" in failures.reason.iloc[0]
    summary = report.summary_dict(migrated, [batch.batch_id])
    assert summary["failures"] == 1
    assert summary["verify_outcomes"] == {"match": batch.total_files - 1, "missing": 1}


def test_audit_report_files_and_manifest_hashes(migrated, settings, sample, media_root, tmp_path):
    verify(settings, migrated, all_batches=True)
    out = tmp_path / "audit"
    audit = report.write_audit_report(migrated, out)
    assert sorted(p.name for p in out.iterdir()) == ["files.csv", "manifest.json", "summary.json"]
    with audit.csv_path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == report.AUDIT_CSV_COLUMNS
    assert len(rows) == audit.rows == sample.referenced_files
    for row in rows:
        assert row["sha256"] == _sha256(media_root / row["relative_path"])
        assert int(row["size_bytes"]) == (media_root / row["relative_path"]).stat().st_size
        assert row["status"] == "verified"
        assert row["verify_outcome"] == "match"
        assert row["last_verified_at"].endswith("Z")
    manifest = json.loads(audit.manifest_path.read_text())
    assert manifest["format"] == report.AUDIT_FORMAT
    assert [f["name"] for f in manifest["files"]] == ["files.csv", "summary.json"]
    for entry in manifest["files"]:
        data = (out / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size_bytes"] == len(data)
    summary = json.loads(audit.summary_path.read_text())
    assert summary["files_proven"] == sample.referenced_files
    assert summary["bytes_proven"] == sample.referenced_bytes
    assert len(summary["batches"]) == len(migrated.list_batches())


def test_audit_report_never_overwrites(migrated, tmp_path):
    out = tmp_path / "audit"
    first = report.write_audit_report(migrated, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="never overwrites"):
        report.write_audit_report(migrated, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        report.write_audit_report(migrated, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.write_audit_report(migrated, empty).rows == first.rows


def test_audit_report_of_an_unknown_batch_writes_nothing(migrated, tmp_path):
    out = tmp_path / "audit"
    with pytest.raises(BatchNotFound):
        report.write_audit_report(migrated, out, batch_ids=["no-such-batch"])
    assert not out.exists()


def test_reading_changes_nothing(migrated, settings, tmp_path):
    before = _table_counts(settings.database_url)
    rows = list(report.audit_rows(migrated))
    report.summary_dict(migrated, rows=rows)
    report.batches_frame(migrated)
    report.files_frame(rows=rows)
    report.progress_frame(rows)
    report.progress_snapshot(migrated)
    report.write_audit_report(migrated, tmp_path / "audit")
    assert _table_counts(settings.database_url) == before


def test_progress_snapshot_after_and_during_a_run(settings, sample, media_root):
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        summary = plan(settings, state, batch_size=50)
        # a file that vanishes after planning fails for good: a recent failure to report
        first = state.batch_files(summary.batch_ids[0])[0]
        (media_root / first.relative_path).unlink()
        seen: list[report.BatchProgress] = []

        def watch(p: Progress) -> None:
            if not seen:  # from another connection, as `r2migrate watch` would
                with State.open(settings.database_url) as other:
                    seen.extend(report.progress_snapshot(other, p.batch_id))

        run_batches(settings, state, on_progress=watch)
        snapshot = report.progress_snapshot(state)
    assert seen[0].status == BatchStatus.RUNNING.value and seen[0].active
    assert seen[0].files_total == 50
    by_id = {p.batch_id: p for p in snapshot}
    assert list(by_id) == list(summary.batch_ids)
    broken = by_id[summary.batch_ids[0]]
    assert broken.files_failed == 1 and broken.files_done == broken.files_total - 1
    assert broken.recent_failures[0].object_key == first.object_key
    assert broken.recent_failures[0].final
    assert not any(p.active for p in snapshot)
    total = report.total_progress(snapshot)
    assert total.files_total == sample.referenced_files
    assert total.files_done == sample.referenced_files - 1
    assert total.files_left == 0 and total.eta_s == 0.0


def test_inventory_plan_and_run_frames(settings, sample):
    with State.open(settings.database_url, migrate=False) as state:
        items: list[MediaFile] = []
        inv = inventory(settings, state, save=False, on_file=items.append)
        dry = plan(settings, state, items=items, dry_run=True, batch_size=50)
    frame = report.inventory_frame(items)
    assert len(frame) == sample.rows + sample.orphans
    assert frame.orphan.sum() == sample.orphans
    problems = report.problem_counts_frame(frame)
    assert dict(zip(problems.problem, problems.files, strict=True)) == inv.problems
    assert set(problems.meaning) != {""}
    assert set(frame.year.dropna()) <= set(range(2019, 2031))
    actions = report.plan_frame(dry)
    assert len(actions) == sum(dry.actions.values())
    batches = report.planned_batches_frame(dry)
    assert len(batches) == dry.batches_needed
    assert batches.files.sum() == dry.upload_files


def test_figures_are_png_images(migrated, settings, sample):
    with State.open(settings.database_url, migrate=False) as state:
        inv = inventory(settings, state, save=False)
    rows = list(report.audit_rows(migrated))
    figures = [
        report.size_histogram_figure(inv),
        report.progress_figure(report.progress_frame(rows)),
        report.progress_figure(report.progress_frame([])),
        report.bar_figure(report.status_counts(rows), title="status"),
        report.bar_figure({}, title="nothing"),
    ]
    for fig in figures:
        png = report.figure_png(fig)
        assert png.startswith(PNG_SIGNATURE)
        assert len(png) > 2_000


def test_statuses_come_from_the_ledger(migrated):
    batch = migrated.list_batches()[0]
    rows = list(report.audit_rows(migrated, [batch.batch_id]))
    assert report.status_counts(rows) == {FileStatus.UPLOADED.value: batch.total_files}
    cost = report.cost_so_far(rows)
    assert cost.stored_bytes == batch.total_bytes
    assert cost.operations_usd == pytest.approx(cost.class_a_usd + cost.class_b_usd)


def test_rolled_back_files_are_never_proven_and_every_table_agrees(
    migrated, settings, sample, tmp_path
):
    first = verify(settings, migrated, all_batches=True)
    assert first.counts["match"] == sample.referenced_files
    batch = migrated.list_batches()[0]
    assert rollback(settings, migrated, batch.batch_id).batch_status is BatchStatus.ROLLED_BACK
    live = sample.referenced_files - batch.total_files

    check = verify(settings, migrated, all_batches=True)  # what a report's "check made" shows
    rows = list(report.audit_rows(migrated))
    summary = report.summary_dict(migrated, rows=rows)
    assert summary["files_proven"] == live == check.counts["match"]
    assert summary["bytes_proven"] == check.bytes_proven
    assert summary["files_rolled_back"] == batch.total_files
    assert summary["verify_outcomes"] == {"match": live, "rolled_back": batch.total_files}
    assert summary["verdicts"]["proven"] == live
    assert summary["failures"] == 0 and summary["ok"] is True
    assert "not counted" in report.verdict_text(summary)
    # the answer table, the failures table, the progress figure and the audit files agree
    assert report.outcome_counts(rows) == summary["verify_outcomes"]
    assert report.failures_frame(rows).empty
    assert report.progress_frame(rows)["files_proven"].iloc[-1] == live
    assert report.batches_frame(migrated)["verified"].sum() == live
    assert {r.verify_outcome for r in rows if r.batch_id == batch.batch_id} == {"rolled_back"}
    audit = report.write_audit_report(migrated, tmp_path / "audit")
    assert audit.summary["files_proven"] == live
    with audit.csv_path.open(newline="", encoding="utf-8") as fh:
        csv_rows = list(csv.DictReader(fh))
    proven = [r for r in csv_rows if r["verify_outcome"] == "match"]
    assert len(proven) == live
    assert all(r["batch_id"] != batch.batch_id for r in proven)
    # a report on the rolled-back batch alone proves nothing, and says so
    alone = report.summary_dict(migrated, [batch.batch_id])
    assert alone["files_proven"] == 0 and alone["bytes_proven"] == 0
    assert report.verdict_text(alone).startswith("Nothing to prove")


def test_a_report_counts_the_extras_of_the_last_check_only(migrated, settings):
    bucket = Bucket(settings)
    batch = migrated.list_batches()[0]
    keys = [f.object_key for f in migrated.batch_files(batch.batch_id)]
    stray = key_space(keys) + "not-from-any-batch.txt"
    # r2migrate's metadata but in no batch: an extra (a plain object is the application's)
    meta = {"sha256": "ab" * 32}
    bucket.client.put_object(Bucket=bucket.name, Key=stray, Body=b"stray", Metadata=meta)
    for _ in range(2):
        check = verify(settings, migrated, batch_id=batch.batch_id)
        assert check.counts["extra"] == 1
        summary = report.summary_dict(migrated, [batch.batch_id])
        assert summary["extra_objects"] == 1 == summary["failures"]
    bucket.client.delete_object(Bucket=bucket.name, Key=stray)
    assert verify(settings, migrated, batch_id=batch.batch_id).ok
    summary = report.summary_dict(migrated, [batch.batch_id])
    assert summary["extra_objects"] == 0 and summary["ok"] is True
