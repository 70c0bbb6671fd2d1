"""Every batch is bound to the target and source it was planned for (issue 14).

Real PostgreSQL, real SeaweedFS: two buckets, one ledger. Each test names the trial that found
the defect: a rollback that deleted in another bucket, a verify that read the configured bucket,
a second target that could not be planned, a run that sent to the wrong bucket or read the
wrong MEDIA_ROOT, a changed file sent under the planned key.
"""

from __future__ import annotations

import json
import uuid
from importlib import resources

import pytest
from click.testing import CliRunner
from psycopg import sql

from r2migrate.cli.main import main
from r2migrate.dev import stack as devstack
from r2migrate.errors import BatchRolledBack, ConfigError, StateError, TargetMismatch
from r2migrate.rules import binding
from r2migrate.rules.binding import normalize_endpoint
from r2migrate.s3.bucket import Bucket
from r2migrate.stages.inventory import inventory
from r2migrate.stages.plan import Action, plan
from r2migrate.stages.rollback import rollback
from r2migrate.stages.transfer import run as run_batches
from r2migrate.stages.verify import VerifyOutcome, verify
from r2migrate.store.ledger import SCHEMA_VERSION, BatchStatus, FileStatus, State, connect
from tests.cli_env import cli_env as _env


def _cli(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


@pytest.fixture
def second_bucket(stack) -> str:
    name = f"t2-{uuid.uuid4().hex[:14]}"
    devstack.create_bucket(stack, name)
    return name


def _migrate(settings, state, *, batch_size: int = 40) -> list[str]:
    inventory(settings, state)
    batch_ids = list(plan(settings, state, batch_size=batch_size).batch_ids)
    assert run_batches(settings, state).failed == 0
    return batch_ids


def _keys(settings) -> set[str]:
    return {key for key, _ in Bucket(settings).iter_objects()}


def _copy_with_metadata(src, dst) -> None:
    """What `aws s3 sync` does: the objects and their metadata, into another bucket."""
    a, b = Bucket(src), Bucket(dst)
    for key, _ in a.iter_objects():
        got = a.client.get_object(Bucket=a.name, Key=key)
        b.client.put_object(
            Bucket=b.name, Key=key, Body=got["Body"].read(), Metadata=got["Metadata"]
        )


# -- pure rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, ""),
        ("", ""),
        ("HTTP://127.0.0.1:80/", "http://127.0.0.1"),
        ("https://ACCT.r2.cloudflarestorage.com:443", "https://acct.r2.cloudflarestorage.com"),
        ("http://127.0.0.1:8333", "http://127.0.0.1:8333"),
        ("https://host:8443/base//", "https://host:8443/base"),
    ],
)
def test_endpoints_have_one_spelling(given, expected):
    assert normalize_endpoint(given) == expected


def test_a_set_value_that_differs_is_refused_and_an_unset_one_is_taken(make_settings, sample):
    settings = make_settings()
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id, *_) = plan(settings, state, batch_size=200).batch_ids
        batch = state.get_batch(batch_id)
    # nothing about the target set: the batch's own values are taken
    bare = make_settings(bucket_name=None, endpoint_url=None, media_root=None)
    bound = binding.settings_for_batch(bare, batch)
    assert bound.bucket_name == settings.bucket_name
    assert normalize_endpoint(bound.effective_endpoint_url) == batch.endpoint_url
    assert str(bound.media_root) == batch.media_root
    assert bound.sources["bucket_name"] == f"batch {batch_id}"
    # each differing value is named, both sides
    with pytest.raises(TargetMismatch) as info:
        binding.settings_for_batch(
            make_settings(bucket_name="other-bucket", location="elsewhere"), batch
        )
    text = str(info.value)
    assert "bucket: " in text and "other-bucket" in text and settings.bucket_name in text
    assert "location: ''" in text
    assert info.value.exit_code == 2 and "plan again" in info.value.hint


# -- 1, 2: rollback and verify act on the batch's bucket ---------------------------------------


def test_rollback_refuses_another_bucket_even_one_holding_a_copy(
    make_settings, sample, second_bucket
):
    settings = make_settings()
    copy = make_settings(bucket_name=second_bucket)
    with State.open(settings.database_url) as state:
        batch_ids = _migrate(settings, state)
    _copy_with_metadata(settings, copy)
    before_a, before_b = _keys(settings), _keys(copy)
    assert before_a and before_a == before_b

    result = _cli(["rollback", batch_ids[0]], _env(copy))
    assert result.exit_code == 2, result.output
    assert "nothing was done" in result.output and second_bucket in result.output
    with pytest.raises(TargetMismatch), State.open(settings.database_url) as state:
        rollback(copy, state, batch_ids[0])
    assert _keys(settings) == before_a and _keys(copy) == before_b  # nothing deleted anywhere
    with State.open(settings.database_url) as state:
        assert state.get_batch(batch_ids[0]).status is BatchStatus.COMPLETED
        # with no bucket configured, the batch's own bucket is the one acted on
        summary = rollback(make_settings(bucket_name=None), state, batch_ids[0])
        assert summary.ok and summary.batch_status is BatchStatus.ROLLED_BACK
    gone = before_a - _keys(settings)
    assert len(gone) == summary.counts["deleted"] > 0
    assert _keys(copy) == before_b


def test_verify_uses_the_batch_bucket_and_all_keeps_to_the_configured_target(
    make_settings, sample, second_bucket
):
    a = make_settings(batch_size=60)
    b = make_settings(bucket_name=second_bucket)
    with State.open(a.database_url) as state:
        a_batches = _migrate(a, state, batch_size=60)
        b_batches = _migrate(b, state, batch_size=60)
        assert verify(a, state, all_batches=True, deep=True).ok
        with pytest.raises(TargetMismatch):
            verify(b, state, batch_id=a_batches[0])
        summary = verify(b, state, all_batches=True)
        assert summary.ok, summary.problems
        assert set(summary.batch_ids) == set(b_batches)
        assert summary.left_out_batches == len(a_batches)
        assert "left out" in summary.left_out_note
        # the deep proof of A's files was not overwritten by B's verify
        rows = [f for bid in a_batches for f in state.batch_files(bid)]
        assert {f.status for f in rows} == {FileStatus.VERIFIED}
    result = _cli(["verify", "--all"], _env(b))
    assert result.exit_code == 0, result.output
    assert f"{len(a_batches)} batch(es) of another target" in result.output
    result = _cli(["verify", a_batches[0]], _env(b))
    assert result.exit_code == 2 and "bucket" in result.output


# -- 3: a second target is planned apart ---------------------------------------------------------


def test_two_targets_from_one_ledger_each_verified_and_rolled_back_alone(
    make_settings, sample, second_bucket
):
    staging = make_settings()
    production = make_settings(bucket_name=second_bucket)
    with State.open(staging.database_url) as state:
        s_batches = _migrate(staging, state)
        sent = len(_keys(staging))
        inventory(production, state)
        dry = plan(production, state, dry_run=True)
        assert dry.actions.get(Action.ALREADY_PLANNED.value, 0) == 0
        assert dry.actions[Action.UPLOAD.value] == sent
        p_batches = list(plan(production, state, batch_size=40).batch_ids)
        assert p_batches and not set(p_batches) & set(s_batches)
        # planning production again finds its own batches
        again = plan(production, state, dry_run=True)
        assert again.actions[Action.ALREADY_PLANNED.value] == sent
        assert run_batches(production, state).failed == 0
        assert _keys(staging) == _keys(production)
        assert verify(staging, state, all_batches=True, deep=True).ok
        assert verify(production, state, all_batches=True, deep=True).ok
        for bid in p_batches:
            assert rollback(production, state, bid).ok
        assert _keys(production) == set()
        assert verify(staging, state, all_batches=True).ok
        assert len(_keys(staging)) == sent
    listing = _cli(["batches"], _env(staging))
    assert staging.bucket_name in listing.output and second_bucket in listing.output
    status = _cli(["status", p_batches[0]], _env(staging))
    assert f"bucket {second_bucket!r}" in status.output and "MEDIA_ROOT" in status.output


# -- 4: run acts on the batch's target and source -------------------------------------------------


def test_run_of_a_batch_for_another_bucket_refuses_and_run_all_keeps_to_its_own(
    make_settings, sample, second_bucket, tmp_path
):
    a = make_settings()
    b = make_settings(bucket_name=second_bucket)
    with State.open(a.database_url) as state:
        inventory(a, state)
        a_batches = list(plan(a, state, batch_size=40).batch_ids)
        planned = sum(state.get_batch(x).total_files for x in a_batches)
    result = _cli(["run", "--batch", a_batches[0]], _env(b))
    assert result.exit_code == 2, result.output
    assert _keys(b) == set() and _keys(a) == set()
    # another MEDIA_ROOT with the same names: the batch was measured elsewhere
    other_root = tmp_path / "other-media"
    other_root.mkdir()
    result = _cli(["run"], _env(a, R2MIGRATE_MEDIA_ROOT=str(other_root)))
    assert result.exit_code == 0, result.output
    assert "No batch has work left" in result.output
    assert _keys(a) == set()
    with State.open(a.database_url) as state:
        assert {state.get_batch(x).status for x in a_batches} == {BatchStatus.PLANNED}
        summary = run_batches(b, state)
        assert summary.batches == () and "left out" in summary.left_out_note
    result = _cli(["run"], _env(a))
    assert result.exit_code == 0, result.output
    assert len(_keys(a)) == planned and _keys(b) == set()


def test_worker_queues_and_runs_only_its_own_targets_batches(make_settings, sample, second_bucket):
    from r2migrate.worker import run_workers

    a = make_settings(processes=1, workers=4)
    b = make_settings(bucket_name=second_bucket, processes=1, workers=4)
    with State.open(a.database_url) as state:
        inventory(a, state)
        a_batches = list(plan(a, state, batch_size=60).batch_ids)
        inventory(b, state)
        b_batches = list(plan(b, state, batch_size=60).batch_ids)
        planned = sum(state.get_batch(x).total_files for x in b_batches)
    import threading

    summary = run_workers(b, processes=1, once=True, poll_s=0.5, stop=threading.Event())
    assert summary.failed == 0
    with State.open(a.database_url) as state:
        assert {state.get_batch(x).status for x in b_batches} == {BatchStatus.COMPLETED}
        assert {state.get_batch(x).status for x in a_batches} == {BatchStatus.PLANNED}
    assert _keys(a) == set() and len(_keys(b)) == planned


# -- the ledger of the previous release -----------------------------------------------------------


def test_a_version_1_ledger_upgrades_in_place_and_stays_usable(make_settings, sample):
    settings = make_settings()
    conn = connect(settings.database_url)
    schema = sql.Identifier("r2migrate")
    # Version 1 exactly as the previous release made it.
    conn.execute(sql.SQL("CREATE SCHEMA {s}").format(s=schema))
    conn.execute(
        "CREATE TABLE r2migrate.schema_migrations (version integer PRIMARY KEY,"
        " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    v1 = (resources.files("r2migrate.store.migrations") / "001_initial.sql").read_text("utf-8")
    conn.execute(v1.replace("{schema}", '"r2migrate"').encode())
    conn.execute("INSERT INTO r2migrate.schema_migrations VALUES (1, '001_initial.sql')")
    old_settings = settings.redacted()  # what version 1 stored with each batch
    uploads = settings.media_root / "uploads"
    files = [p for p in sorted(uploads.rglob("*")) if p.is_file() and " " not in p.name][:10]
    conn.execute(
        "INSERT INTO r2migrate.batches (batch_id, batch_size, bucket_name, location, settings)"
        " VALUES ('b-old', 10, %s, '', %s)",
        (settings.bucket_name, json.dumps(old_settings)),
    )
    for n, path in enumerate(files):
        name = path.relative_to(settings.media_root).as_posix()
        st = path.stat()
        conn.execute(
            "INSERT INTO r2migrate.files (batch_id, file_id, relative_path, object_key,"
            " size_bytes, mtime_ns, content_type) VALUES ('b-old', %s, %s, %s, %s, %s, %s)",
            (f"t.c:{n}", name, name, st.st_size, st.st_mtime_ns, "application/octet-stream"),
        )
    conn.close()

    with State.open(settings.database_url) as state:
        assert state.schema_version() == SCHEMA_VERSION
        batch = state.get_batch("b-old")
        assert batch.endpoint_url == normalize_endpoint(settings.endpoint_url)
        assert batch.source_kind == "disk" and batch.media_root == str(settings.media_root)
        assert binding.settings_for_batch(settings, batch) == settings
        assert run_batches(settings, state, batch_id="b-old").failed == 0
        assert verify(settings, state, batch_id="b-old", deep=True).ok
        # the new target key space: the old rows count for their own target only
        inventory(settings, state)
        dry = plan(settings, state, dry_run=True)
        assert dry.actions[Action.ALREADY_PLANNED.value] == len(files)


# -- the file sent is the file measured ------------------------------------------------------------


def test_a_file_changed_since_inventory_is_source_changed_and_not_sent(settings, sample):
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        (batch_id, *_) = plan(settings, state, batch_size=500).batch_ids
        rows = state.batch_files(batch_id)
        grown, touched = rows[0], rows[1]
        (settings.media_root / grown.relative_path).write_bytes(b"other bytes entirely")
        path = settings.media_root / touched.relative_path
        st = path.stat()
        import os

        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        summary = run_batches(settings, state, batch_id=batch_id)
        by_id = {f.id: f for f in state.batch_files(batch_id)}
    assert summary.failed == 2
    for rec in (grown, touched):
        assert by_id[rec.id].status is FileStatus.FAILED
        assert by_id[rec.id].error_code == "source_changed"
    assert grown.object_key not in _keys(settings) and touched.object_key not in _keys(settings)


# -- 9, 10: run refuses before touching the ledger -----------------------------------------------


def test_run_with_a_missing_media_root_is_exit_2_and_changes_nothing(settings, sample, tmp_path):
    with State.open(settings.database_url) as state:
        inventory(settings, state)
        batch_ids = plan(settings, state).batch_ids
    # the mount is gone: same settings, no folder
    aside = tmp_path / "aside"
    settings.media_root.rename(aside)
    with State.open(settings.database_url) as state:
        with pytest.raises(ConfigError, match="not a readable directory"):
            run_batches(settings, state, batch_id=batch_ids[0])
        with pytest.raises(ConfigError, match="not a readable directory"):
            run_batches(settings, state)
    result = _cli(["run"], _env(settings))
    assert result.exit_code == 2, result.output
    assert "is it mounted" in result.output
    with State.open(settings.database_url) as state:
        assert {state.get_batch(b).status for b in batch_ids} == {BatchStatus.PLANNED}
        assert {f.status for b in batch_ids for f in state.batch_files(b)} == {FileStatus.PENDING}
    aside.rename(settings.media_root)
    assert _cli(["run"], _env(settings)).exit_code == 0


def test_run_of_a_rolled_back_batch_refuses_with_exit_4(settings, sample):
    with State.open(settings.database_url) as state:
        (batch_id, *_) = _migrate(settings, state, batch_size=500)
        assert rollback(settings, state, batch_id).ok
        with pytest.raises(BatchRolledBack):
            run_batches(settings, state, batch_id=batch_id)
        assert state.get_batch(batch_id).status is BatchStatus.ROLLED_BACK
    result = _cli(["run", "--resume-batch", batch_id], _env(settings))
    assert result.exit_code == 4 and "plan" in result.output
    assert _keys(settings) == set()


def test_verify_outcomes_unchanged_for_a_bound_batch(settings, sample):
    """The binding adds no request: a batch verified under its own settings still matches."""
    with State.open(settings.database_url) as state:
        (batch_id, *_) = _migrate(settings, state, batch_size=500)
        summary = verify(settings, state, batch_id=batch_id)
    assert summary.counts[VerifyOutcome.MATCH.value] == summary.files_checked > 0
    assert summary.left_out_batches == 0 and summary.left_out_note == ""


def test_plan_uses_only_an_inventory_of_its_own_source_and_location(make_settings, sample):
    plain = make_settings()
    prefixed = make_settings(location="media")
    with State.open(plain.database_url) as state:
        inventory(plain, state)
        with pytest.raises(StateError, match="location 'media'") as info:
            plan(prefixed, state)
        assert "r2migrate inventory" in info.value.hint
        inventory(prefixed, state)
        (batch_id, *_) = plan(prefixed, state).batch_ids
        keys = {f.object_key for f in state.batch_files(batch_id)}
    assert keys and all(k.startswith("media/") for k in keys)


def test_report_all_covers_the_configured_target_as_verify_all_does(
    make_settings, sample, second_bucket, tmp_path
):
    a = make_settings()
    b = make_settings(bucket_name=second_bucket)
    with State.open(a.database_url) as state:
        a_batches = _migrate(a, state, batch_size=60)
        b_batches = _migrate(b, state, batch_size=60)
        assert verify(b, state, all_batches=True).ok  # A's files are never verified
    result = _cli(["report", "--all", "--out", str(tmp_path / "audit-b")], _env(b))
    assert result.exit_code == 0, result.output
    assert f"{len(a_batches)} batch(es) of another target" in result.output
    summary = json.loads((tmp_path / "audit-b" / "summary.json").read_text())
    assert {x["batch_id"] for x in summary["batches"]} == set(b_batches)
    assert {x["bucket_name"] for x in summary["batches"]} == {second_bucket}
    # A's report says plainly that nothing of A is proven yet
    result = _cli(["report", "--all", "--out", str(tmp_path / "audit-a")], _env(a))
    assert result.exit_code == 1, result.output
