"""Requests failing through the ChaosProxy: 20% (seeded mix), 100%, and single well-aimed faults."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from r2migrate import rollback, run
from r2migrate.s3.bucket import Bucket
from r2migrate.store.ledger import State
from tests.helpers.proxy import Request
from tests.resilience import scenarios
from tests.resilience.faults import ALL_FAULTS
from tests.resilience.harness import World, events, ledger, make_tree, plan_batches, seed_rows

pytestmark = pytest.mark.resilience

FILES = 300
SEED = 7


@pytest.mark.parametrize(
    "world", [{"fast_put": True}, {"fast_put": False}], indirect=True, ids=["fastput", "boto3"]
)
def test_twenty_percent_of_requests_failing_still_completes_with_retries_recorded(
    world: World,
) -> None:
    out = scenarios.flaky(world, files=FILES, seed=SEED, rate=0.2)
    audit, d = out.audit, out.details
    assert d["codes"][-1] == 0, d["outputs"][-1]
    # A run may end 1 when a fault hits the HEAD that resolves a 412 (see the xfail below);
    # the operator's next `r2migrate run` then finishes. Never an outage, never a traceback.
    assert set(d["codes"]) <= {0, 1}, d["outputs"]
    assert not any("Traceback" in text for text in d["outputs"])
    assert set(d["faults_by_kind"]) == set(ALL_FAULTS), d["faults_by_kind"]
    assert audit.faults >= FILES * 0.15  # about one request in five really failed
    # every retry is in the events table with its reason
    assert d["attempt_errors"] > 0
    assert {"SlowDown", "ServiceUnavailable", "InternalError", "network"} <= set(d["retry_codes"])
    assert audit.verified == audit.files == FILES
    assert audit.losses == audit.duplicates == audit.unknown_objects == 0
    assert audit.secret_leaks == 0


@pytest.mark.parametrize(
    "command", [("run",), ("worker", "--once", "--processes", "1")], ids=["run", "worker"]
)
def test_every_request_failing_stops_with_exit_3_and_resumable_state(
    world: World, command: tuple[str, ...]
) -> None:
    out = scenarios.outage(world, files=FILES, seed=SEED, command=command)
    audit, d = out.audit, out.details
    first, second, _ = d["outputs"]
    assert d["codes"] == [3, 3, 0], d["outputs"]
    # all requests failing: the bucket check says so before anything is claimed
    assert "error: Cannot reach the S3 endpoint" in first
    assert "hint: Check endpoint_url" in first
    assert d["statuses_after_first"] == ["pending"]
    assert d["attempts_after_first"] == 0
    # only object requests failing: the run notices the outage and stops, resumable
    assert "the S3 endpoint failed every recent request" in second
    assert "run --batch" in second
    assert d["batch_status_after_second"] == "partial"
    assert d["live_leases_after_second"] == 0
    assert set(d["statuses_after_second"]) <= {"pending", "failed"}
    for text in d["outputs"]:
        assert "Traceback" not in text
    # then nothing fails: the same command finishes everything, nothing twice, nothing lost
    assert audit.verified == audit.files == FILES
    assert audit.losses == audit.duplicates == audit.unknown_objects == audit.secret_leaks == 0


def _one_file(world: World) -> str:
    (name,) = make_tree(world, 1, seed=SEED)
    seed_rows(world, [name])
    plan_batches(world)
    return name


def _nth(rule: dict[tuple[str, str, int], str]):
    """A rule answering the n-th (method, key) request with a fault; keys '' = the bucket."""
    seen: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    def decide(request: Request) -> object:
        with lock:
            seen[(request.method, request.key)] += 1
            n = seen[(request.method, request.key)]
        return rule.get((request.method, request.key, n))

    return decide


def test_an_answer_lost_after_the_put_landed_is_resolved_by_head(world: World) -> None:
    key = _one_file(world)
    world.proxy.rule = _nth({("PUT", key, 1): "reset_after_forward"})
    with State.open(world.database_url) as state:
        summary = run(world.settings, state)
    assert summary.failed == 0
    row = ledger(world)[key]
    assert row["status"] == "uploaded"
    assert row["error_code"] == "resolved_by_head"
    assert world.proxy.landed()[key] == 1
    assert world.proxy.upload_starts()[key] == 2  # the retry was refused 412, not stored again


def test_a_transient_head_failure_while_resolving_a_412_is_retried(world: World) -> None:
    key = _one_file(world)
    world.proxy.rule = _nth({("PUT", key, 1): "reset_after_forward", ("HEAD", key, 1): "503"})
    with State.open(world.database_url) as state:
        summary = run(world.settings, state)
    assert ledger(world)[key]["status"] == "uploaded"
    assert summary.failed == 0


def test_a_head_answer_cut_inside_its_headers_does_not_make_our_object_a_conflict(
    world: World,
) -> None:
    # http.client takes a header block cut by EOF as complete: the first HEAD shows an object
    # without our sha256 metadata. One such answer must not turn our own upload into a conflict.
    key = _one_file(world)
    world.proxy.rule = _nth({("PUT", key, 1): "reset_after_forward", ("HEAD", key, 1): "truncate"})
    with State.open(world.database_url) as state:
        summary = run(world.settings, state)
    assert summary.failed == 0 and summary.batches[0].conflict == 0
    row = ledger(world)[key]
    assert row["status"] == "uploaded" and row["error_code"] == "resolved_by_head"
    (resolved,) = [e for e in events(world, "resolve") if e["outcome"] == "ours"]
    assert resolved["detail"]["looks"] == 2  # the cut answer looked foreign; the next did not
    assert world.proxy.landed()[key] == 1


def test_one_transient_failure_of_the_bucket_check_does_not_abort_the_run(world: World) -> None:
    key = _one_file(world)
    world.proxy.rule = _nth({("HEAD", "", 1): "slowdown"})
    with State.open(world.database_url) as state:
        summary = run(world.settings, state)
    assert summary.failed == 0
    assert ledger(world)[key]["status"] == "uploaded"


def test_rollback_through_failing_requests_deletes_only_what_the_batch_wrote(
    world: World,
) -> None:
    out = scenarios.rollback_under_faults(world, files=120, seed=SEED)
    audit, d = out.audit, out.details
    assert audit.verified == audit.files == 120  # proven before the rollback began
    assert audit.faults > 0
    for text in d["outputs"]:
        assert "Traceback" not in text
    # every object the batch wrote is gone, though requests failed on the way
    assert d["ours_left"] == []
    # the foreign objects, the foreign replacement and the impostor all keep their bytes
    assert audit.foreign_deleted == 0
    assert d["left"] == set(world.foreign)
    # and the two keys that are no longer ours stay in the ledger as refused, not rolled back
    assert set(d["rows_left"]) == {d["replaced"], d["impostor"]}
    assert audit.unknown_objects == audit.secret_leaks == 0


def test_a_delete_whose_answer_was_lost_is_retried_and_counted_deleted_once(
    world: World,
) -> None:
    key = _one_file(world)
    with State.open(world.database_url) as state:
        run(world.settings, state)
        (batch,) = state.list_batches()
        # the DELETE reaches the server and the object goes, but the answer never comes back
        world.proxy.rule = _nth({("DELETE", key, 1): "reset_after_forward"})
        summary = rollback(world.settings, state, batch.batch_id)
        (row,) = state.batch_files(batch.batch_id)
    deletes = [e for e in world.proxy.since(0) if e.method == "DELETE"]
    assert [(e.forwarded, e.status) for e in deletes] == [(True, 204), (True, 412)]
    assert summary.ok and summary.counts["deleted"] == 1, summary.items
    (item,) = summary.items
    assert "lost answer" in item.reason
    assert summary.bytes_deleted == row.size_bytes > 0
    assert row.status.value == "rolled_back"
    assert list(Bucket(world.direct).iter_objects()) == []
