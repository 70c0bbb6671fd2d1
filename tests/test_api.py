"""api.py over a real uvicorn server on 127.0.0.1, the real stack behind it, and headless Chromium.

The server runs in a thread on a socket bound here (port 0, so no race for a port); S3 traffic
goes through ``FaultProxy`` so a test can slow uploads down and catch a runner while it runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from r2migrate.api.app import check_exposure, create_app, serve
from r2migrate.errors import ConfigError
from r2migrate.settings.config import Settings
from r2migrate.store.ledger import State
from tests.helpers.proxy import FaultProxy

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yields the base URL; stops it (and its runners)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, ws="none", lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def proxy(stack) -> Iterator[FaultProxy]:
    host, port = stack.endpoint_url.rsplit("//", 1)[1].split(":")
    with FaultProxy(host, int(port)) as p:
        yield p


@pytest.fixture
def api_settings(make_settings, proxy) -> Settings:
    return make_settings(endpoint_url=proxy.url, api_token=TOKEN, workers=4)


@pytest.fixture
def base_url(api_settings, sample) -> Iterator[str]:
    State.open(api_settings.database_url).close()  # `r2migrate db upgrade`: the API makes none
    with running(create_app(api_settings)) as url:
        yield url


@pytest.fixture
def client(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=120) as c:
        yield c


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "hint"}, body
    assert body["code"] == code, body
    assert "Traceback" not in response.text
    return body


def _plan(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/batches", json=body)
    assert response.status_code == (200 if body.get("dry_run") else 201), response.text
    return response.json()


def _wait_for(
    client: httpx.Client, batch_id: str, done: Callable[[dict[str, Any]], bool], timeout_s=120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.get(f"/batches/{batch_id}").json()
        if done(batch):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)


def _finished(batch: dict[str, Any]) -> bool:
    return batch["job"] is not None and batch["job"]["state"] not in ("running", "stopping")


# -- start-up refusals --------------------------------------------------------------------------


def test_refuses_to_start_without_a_token_unless_no_auth_on_loopback(make_settings):
    settings = make_settings()
    with pytest.raises(ConfigError, match="No API token"):
        create_app(settings)
    with pytest.raises(ConfigError, match="No API token"):
        check_exposure(settings, host="127.0.0.1", no_auth=False)
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):
        with pytest.raises(ConfigError, match="loopback"):
            check_exposure(settings, host=host, no_auth=True)
        with pytest.raises(ConfigError, match="loopback"):
            serve(settings, host=host, no_auth=True)  # refused before binding anything
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(settings, host=host, no_auth=True)


def test_a_short_token_is_refused_without_echoing_it(make_settings):
    with pytest.raises(ConfigError) as info:
        create_app(make_settings(api_token="short-secret"))
    assert "short-secret" not in f"{info.value} {info.value.hint}"
    assert "16 characters" in info.value.message


def test_the_token_is_a_secret_setting(make_settings):
    settings = make_settings(api_token=TOKEN)
    assert TOKEN not in repr(settings)
    assert settings.redacted()["api_token"] == "***"
    assert TOKEN in settings.secret_values()


def test_no_auth_on_loopback_serves_without_a_token(make_settings, sample):
    with running(create_app(make_settings(), no_auth=True)) as url:
        missing = httpx.get(f"{url}/batches")  # no ledger yet: said so (409), never made
        State.open(make_settings().database_url).close()
        response = httpx.get(f"{url}/batches")
    assert missing.status_code == 409, missing.text
    assert missing.json()["code"] == "schema_not_ready"
    assert "r2migrate db upgrade" in missing.json()["hint"]
    assert response.status_code == 200, response.text
    assert response.json() == {"batches": []}


# -- authentication -----------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/batches"),
    ("POST", "/batches"),
    ("GET", "/batches/b1"),
    ("POST", "/batches/b1/process"),
    ("POST", "/batches/b1/stop"),
    ("POST", "/batches/b1/verify"),
    ("POST", "/batches/b1/rollback"),
    ("GET", "/batches/b1/files"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "longer", "basic", "empty"],
)
def test_missing_or_wrong_token_is_401_everywhere(base_url, headers):
    with httpx.Client(base_url=base_url, headers=headers) as anonymous:
        for method, path in PROTECTED:
            response = anonymous.request(method, path, json={"dry_run": True})
            body = _error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer", path
            assert TOKEN not in response.text
            assert body["hint"]


def test_health_needs_no_token_and_shows_no_secret(base_url, api_settings):
    response = httpx.get(f"{base_url}/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True, "error": None}
    assert body["bucket"] == {"ok": True, "error": None}
    for secret in api_settings.secret_values():
        assert secret not in response.text


def test_health_is_503_when_the_database_and_bucket_are_unreachable(
    make_settings, unused_port, sample
):
    settings = make_settings(
        api_token=TOKEN,
        database_url=f"postgresql://app:hunter2-password@127.0.0.1:{unused_port}/nothing",
        bucket_name="no-such-bucket-here",
        connect_timeout_s=2,
    )
    with running(create_app(settings)) as url:
        health = httpx.get(f"{url}/health", timeout=60)
        listing = httpx.get(f"{url}/batches", headers=AUTH, timeout=60)
    assert health.status_code == 503, health.text
    body = health.json()
    assert body["status"] == "unavailable"
    assert body["database"] == {"ok": False, "error": "database_unavailable"}
    assert body["bucket"] == {"ok": False, "error": "no_such_bucket"}
    err = _error(listing, 503, "database_unavailable")
    assert "hunter2" not in health.text + listing.text
    assert err["hint"]


# -- the dashboard shell and OpenAPI --------------------------------------------------------------


def test_dashboard_shell_is_public_and_never_holds_the_token(base_url):
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "/static/dashboard.js" in page.text
    script = httpx.get(f"{base_url}/static/dashboard.js")
    style = httpx.get(f"{base_url}/static/dashboard.css")
    assert script.status_code == style.status_code == 200
    assert "sessionStorage" in script.text
    for text in (page.text, script.text, style.text):
        assert TOKEN not in text
        assert "http://" not in text.replace("http://www.w3.org", "")  # nothing from elsewhere


def test_openapi_describes_every_endpoint_behind_bearer_auth(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert set(spec["paths"]) == {
        "/health",
        "/batches",
        "/batches/{batch_id}",
        "/batches/{batch_id}/process",
        "/batches/{batch_id}/enqueue",
        "/batches/{batch_id}/stop",
        "/batches/{batch_id}/verify",
        "/batches/{batch_id}/rollback",
        "/batches/{batch_id}/files",
    }
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "401" in spec["paths"]["/batches"]["get"]["responses"]


def test_docs_page_and_openapi_document_every_request_body(client, base_url):
    spec = client.get("/openapi.json").json()
    bodies = {"CreateBatches", "ProcessBatch", "VerifyBatch", "RollbackBatch"}
    schemas = spec["components"]["schemas"]
    for name in bodies:
        assert schemas[name].get("description"), name
        for field, prop in schemas[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} is not described"
    verify = spec["paths"]["/batches/{batch_id}/verify"]["post"]
    assert {p["name"] for p in verify["parameters"] if p["in"] == "query"} >= {"deep", "sample"}
    assert "409" in spec["paths"]["/batches/{batch_id}/stop"]["post"]["responses"]

    page = client.get("/docs")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    text = page.text
    for path in spec["paths"]:
        assert path in text, path
    assert "POST /batches/{batch_id}/rollback" in text
    assert "true: only report what would be deleted" in text
    assert "JSON body (optional)" in text  # verify's and process's bodies may be left out
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert httpx.get(f"{base_url}/docs").status_code == 401


# -- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"batch_size": 0},
        {"batch_size": 10_001},
        {"batch_size": "50"},
        {"max_files": 0},
        {"dry_run": "yes"},
        {"batch_size": 10, "filters": {"user": 1}},
        [],
    ],
)
def test_bad_plan_input_is_422(client, body):
    err = _error(client.post("/batches", json=body), 422, "invalid_request")
    assert err["message"]


def test_bad_input_elsewhere_is_422_and_too_big_is_413(client):
    _error(client.post("/batches", content=b"{not json", headers=AUTH), 422, "invalid_request")
    for query in ("limit=0", "limit=1001", "offset=-1", "status=lost", "limit=ten"):
        _error(client.get(f"/batches/b1/files?{query}"), 422, "invalid_request")
    _error(client.post("/batches/b1/verify", json={"deep": 1}), 422, "invalid_request")
    _error(client.post("/batches/b1/verify", json={"sample": -1}), 422, "invalid_request")
    _error(client.post("/batches/b1/process", json={"processes": 999}), 422, "invalid_request")
    _error(client.post("/batches/b1/rollback", json={}), 422, "invalid_request")
    _error(
        client.post("/batches/b1/rollback", json={"dry_run": False, "x": 1}), 422, "invalid_request"
    )
    big = b'{"batch_size": 5, "pad": "' + b"x" * 70_000 + b'"}'
    _error(client.post("/batches", content=big), 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"pad": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}'

    _error(client.post("/batches", content=chunks()), 413, "body_too_large")


def test_unknown_batch_is_404_everywhere(client):
    for method, path, body in [
        ("GET", "/batches/nope", None),
        ("GET", "/batches/nope/files", None),
        ("POST", "/batches/nope/process", None),
        ("POST", "/batches/nope/enqueue", None),
        ("POST", "/batches/nope/stop", None),
        ("POST", "/batches/nope/verify", {"deep": False}),
        ("POST", "/batches/nope/rollback", {"dry_run": True}),
    ]:
        err = _error(client.request(method, path, json=body), 404, "batch_not_found")
        assert "nope" in err["message"]
        assert err["hint"]
    _error(client.get("/no/such/route"), 404, "not_found")


# -- the stages over HTTP -----------------------------------------------------------------------


def test_plan_dry_run_stores_nothing_then_plan_creates_batches(client, sample):
    dry = _plan(client, dry_run=True, batch_size=25)
    assert dry["dry_run"] is True
    assert dry["batch_ids"] == []
    uploads = dry["actions"]["upload"]
    assert dry["batches_needed"] == -(-uploads // 25)
    assert {p["action"] for p in dry["problems"]} >= {"refuse"}
    assert client.get("/batches").json() == {"batches": []}

    real = _plan(client, batch_size=25, max_files=60)
    assert len(real["batch_ids"]) == 3
    listed = client.get("/batches").json()["batches"]
    assert [b["batch_id"] for b in listed] == real["batch_ids"]
    assert sum(b["total_files"] for b in listed) == 60
    first = client.get(f"/batches/{real['batch_ids'][0]}").json()
    assert first["status"] == "planned"
    assert first["progress"]["files_total"] == 25
    assert first["progress"]["files_done"] == 0
    assert first["job"] is None


def test_files_are_paged_and_filtered(client, sample):
    (batch_id,) = _plan(client, batch_size=40, max_files=40)["batch_ids"]
    page1 = client.get(f"/batches/{batch_id}/files", params={"limit": 15}).json()
    page3 = client.get(f"/batches/{batch_id}/files", params={"limit": 15, "offset": 30}).json()
    assert page1["total"] == page3["total"] == 40
    assert len(page1["files"]) == 15
    assert len(page3["files"]) == 10
    ids = [f["id"] for f in page1["files"] + page3["files"]]
    assert ids == sorted(ids)
    assert len(set(ids)) == 25
    pending = client.get(f"/batches/{batch_id}/files", params={"status": "pending"}).json()
    verified = client.get(f"/batches/{batch_id}/files", params={"status": "verified"}).json()
    assert pending["total"] + verified["total"] <= 40
    assert verified["files"] == []
    assert {f["status"] for f in pending["files"]} == {"pending"}


def test_processing_over_http_completes_verifies_and_rolls_back(client, sample):
    (batch_id,) = _plan(client, batch_size=1000)["batch_ids"]
    started = client.post(f"/batches/{batch_id}/process")
    assert started.status_code == 202, started.text
    assert started.json()["state"] in ("running", "completed")
    batch = _wait_for(client, batch_id, _finished)
    assert batch["job"]["state"] == "completed", batch["job"]
    assert batch["status"] == "completed"
    assert batch["job"]["failed"] == 0
    assert batch["progress"]["files_done"] == batch["total_files"]
    assert batch["progress"]["eta_s"] == 0
    assert batch["uploaded_bytes"] == batch["total_bytes"]

    cheap = client.post(f"/batches/{batch_id}/verify", json={"deep": False})
    assert cheap.status_code == 200, cheap.text
    result = cheap.json()
    assert result["ok"] is True
    assert result["counts"]["match"] == batch["total_files"]
    assert result["problems"] == []
    deep = client.post(f"/batches/{batch_id}/verify", json={"deep": True}).json()
    assert deep["ok"] is True
    assert deep["deep_checked"] == batch["total_files"]
    _error(
        client.post(f"/batches/{batch_id}/verify", json={"deep": True, "sample": 3}),
        400,
        "config_error",
    )
    verified = client.get(f"/batches/{batch_id}/files", params={"status": "verified"}).json()
    assert verified["total"] == batch["total_files"]
    assert client.get(f"/batches/{batch_id}").json()["verified_files"] == batch["total_files"]

    dry = client.post(f"/batches/{batch_id}/rollback", json={"dry_run": True}).json()
    assert dry["dry_run"] is True
    assert dry["counts"]["would_delete"] == len(dry["would_delete"]) > 0
    assert dry["deleted"] == []  # nothing was deleted
    undo = client.post(f"/batches/{batch_id}/rollback", json={"dry_run": False}).json()
    assert undo["ok"] is True
    assert sorted(undo["deleted"]) == sorted(dry["would_delete"])
    assert undo["would_delete"] == []
    assert undo["batch_status"] == "rolled_back"
    assert client.get(f"/batches/{batch_id}").json()["status"] == "rolled_back"


def test_second_process_call_while_running_is_409_and_stop_resumes_later(client, proxy, sample):
    release = threading.Event()
    proxy.rule = lambda r: ("delay", 0.5) if r.method == "PUT" and not release.is_set() else None
    try:
        (batch_id,) = _plan(client, batch_size=1000)["batch_ids"]
        first = client.post(f"/batches/{batch_id}/process")
        assert first.status_code == 202, first.text
        assert first.json()["state"] == "running"
        busy = _error(client.post(f"/batches/{batch_id}/process"), 409, "batch_busy")
        assert "/stop" in busy["hint"]
        _error(
            client.post(f"/batches/{batch_id}/rollback", json={"dry_run": True}), 409, "batch_busy"
        )
        running_batch = _wait_for(client, batch_id, lambda b: b["status"] == "running")
        assert running_batch["job"]["state"] == "running"

        stopping = client.post(f"/batches/{batch_id}/stop")
        assert stopping.status_code == 202, stopping.text
        assert stopping.json()["state"] == "stopping"
        stopped = _wait_for(client, batch_id, _finished)
        assert stopped["job"]["state"] == "interrupted"
        assert stopped["job"]["error"]["code"] == "interrupted"
        assert stopped["progress"]["files_done"] < stopped["total_files"]
        idle = _error(client.post(f"/batches/{batch_id}/stop"), 409, "not_running")
        assert "interrupted" in idle["message"]
    finally:
        release.set()
    again = client.post(f"/batches/{batch_id}/process")
    assert again.status_code == 202, again.text
    done = _wait_for(client, batch_id, _finished)
    assert done["job"]["state"] == "completed"
    assert done["status"] == "completed"
    result = client.post(f"/batches/{batch_id}/verify", json={}).json()
    assert result["ok"] is True
    assert result["counts"]["match"] == done["total_files"]


def test_stop_on_an_idle_batch_is_409_not_null(client, sample):
    (batch_id,) = _plan(client, batch_size=1000, max_files=5)["batch_ids"]
    err = _error(client.post(f"/batches/{batch_id}/stop"), 409, "not_running")
    assert batch_id in err["message"]
    assert f"/batches/{batch_id}/process" in err["hint"]


def test_verify_takes_deep_and_sample_from_the_query_as_well(client, sample):
    (batch_id,) = _plan(client, batch_size=1000, max_files=10)["batch_ids"]
    assert client.post(f"/batches/{batch_id}/process").status_code == 202
    assert _wait_for(client, batch_id, _finished)["status"] == "completed"
    deep = client.post(f"/batches/{batch_id}/verify?deep=true")
    assert deep.status_code == 200, deep.text
    assert deep.json()["deep"] is True
    assert deep.json()["deep_checked"] == 10
    sampled = client.post(f"/batches/{batch_id}/verify", params={"sample": 3, "seed": 7}).json()
    assert (sampled["sample"], sampled["sample_seed"], sampled["deep_checked"]) == (3, 7, 3)
    cheap = client.post(f"/batches/{batch_id}/verify").json()
    assert cheap["deep"] is False and cheap["deep_checked"] == 0
    _error(client.post(f"/batches/{batch_id}/verify?deep=maybe"), 422, "invalid_request")


def test_an_interrupted_job_reports_the_files_it_uploaded(client, proxy, sample):
    proxy.rule = lambda r: ("delay", 0.2) if r.method == "PUT" else None
    (batch_id,) = _plan(client, batch_size=1000, max_files=100)["batch_ids"]
    assert client.post(f"/batches/{batch_id}/process").status_code == 202
    _wait_for(client, batch_id, lambda b: b["uploaded_files"] >= 8)
    assert client.post(f"/batches/{batch_id}/stop").status_code == 202
    stopped = _wait_for(client, batch_id, _finished)
    proxy.rule = None
    assert stopped["job"]["state"] == "interrupted"
    assert stopped["uploaded_files"] < stopped["total_files"]
    assert stopped["job"]["uploaded"] == stopped["uploaded_files"] >= 8


def test_a_failing_runner_reports_a_json_error_not_a_traceback(client, proxy, sample):
    (batch_id,) = _plan(client, batch_size=1000, max_files=5)["batch_ids"]
    proxy.rule = lambda r: "503"  # every request, HEAD bucket included
    started = client.post(f"/batches/{batch_id}/process")
    assert started.status_code == 202
    batch = _wait_for(client, batch_id, _finished)
    proxy.rule = None
    assert batch["job"]["state"] == "failed"
    assert batch["job"]["error"]["code"] == "bucket_unavailable"
    assert "Traceback" not in str(batch)


# -- the dashboard in a real browser --------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = [
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
    ]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root inside its sandbox
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (CI: `apt-get install -y chromium`)",
)
def test_dashboard_in_headless_chromium_shows_the_batch_progress(client, base_url, tmp_path):
    (batch_id,) = _plan(client, batch_size=1000, max_files=30)["batch_ids"]
    assert client.post(f"/batches/{batch_id}/process").status_code == 202
    assert _wait_for(client, batch_id, _finished)["status"] == "completed"

    page = f"{base_url}/#token={TOKEN}"
    dom = _chromium(tmp_path, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert batch_id in dom.stdout
    assert "100%" in dom.stdout
    assert "30 / 30" in dom.stdout
    assert "an API token is needed" not in dom.stdout

    shot = tmp_path / "dashboard.png"
    taken = _chromium(tmp_path, f"--screenshot={shot}", page)
    assert taken.returncode == 0, taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None
    assert len(colours) > 10, "the screenshot is blank"


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (CI: `apt-get install -y chromium`)",
)
def test_dashboard_without_a_token_asks_for_one(base_url, tmp_path, sample):
    dom = _chromium(tmp_path, "--dump-dom", f"{base_url}/")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "an API token is needed" in dom.stdout
    assert 'id="login"' in dom.stdout
    assert "Sign in to watch the migration" in dom.stdout
    assert '<section id="welcome" class="welcome">' in dom.stdout  # shown, not hidden
    assert "`" not in dom.stdout  # no developer hint with literal backticks
    assert "Authorization" not in dom.stdout
    shot = tmp_path / "dashboard-no-token.png"
    assert _chromium(tmp_path, f"--screenshot={shot}", f"{base_url}/").returncode == 0
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (CI: `apt-get install -y chromium`)",
)
def test_dashboard_shows_verification_queue_and_leaves_rolled_back_batches_out(
    client, base_url, api_settings, s3_admin, tmp_path
):
    import re

    proven, undone, queued, broken = _plan(client, batch_size=10, max_files=40)["batch_ids"]
    for batch_id in (proven, undone, broken):
        assert client.post(f"/batches/{batch_id}/process").status_code == 202
        assert _wait_for(client, batch_id, _finished)["status"] == "completed"
    assert client.post(f"/batches/{proven}/verify").json()["ok"] is True
    assert client.post(f"/batches/{undone}/rollback", json={"dry_run": False}).json()["ok"]
    assert client.post(f"/batches/{queued}/enqueue").json()["queued"] is True
    gone = client.get(f"/batches/{broken}/files", params={"limit": 1}).json()["files"][0]
    s3_admin.delete_object(Bucket=api_settings.bucket_name, Key=gone["object_key"])
    assert client.post(f"/batches/{broken}/verify").json()["counts"]["missing"] == 1
    listed = {b["batch_id"]: b for b in client.get("/batches").json()["batches"]}
    assert listed[broken]["verify_problems"] == {"missing": 1}
    assert listed[queued]["queued"] is True and listed[proven]["queued"] is False

    dom = _chromium(tmp_path, "--dump-dom", f"{base_url}/#token={TOKEN}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout

    def row(batch_id: str) -> str:
        found = re.search(rf'<tr[^>]*data-batch-id="{batch_id}">(.*?)</tr>', page, re.S)
        assert found, batch_id
        return found.group(1)

    assert "verified 10/10" in row(proven)
    assert "1 missing" in row(broken)
    assert ">queued<" in row(queued)
    assert ">process<" not in row(queued)  # the workers have it
    assert ">rolled back<" in row(undone)
    assert ">verify<" not in row(undone) and ">verify<" in row(proven)
    assert ">roll back…<" in row(proven)  # opens a dry-run preview, then asks to confirm
    assert ">roll back…<" not in row(undone) + row(queued)
    assert '<section id="rollback" class="rollback" hidden="">' in page
    assert api_settings.bucket_name in row(proven)
    # the header counts what is being migrated: the rolled-back batch's 10 files are left out
    assert "3 batch(es), 20 / 30 files done" in page
    assert "1 queued for workers" in page and "1 rolled back, not counted" in page
    total = re.search(r'<div id="total-bar">(.*?)</div>\s*<span', page, re.S)
    assert total and ">67%<" in total.group(1)
    assert 'aria-label="files per second over time"' in page  # the throughput chart is drawn

    shot = tmp_path / "dashboard-mixed.png"
    taken = _chromium(tmp_path, f"--screenshot={shot}", f"{base_url}/#token={TOKEN}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_enqueue_hands_the_batch_to_the_workers_once(client, api_settings, sample):
    from r2migrate.worker import run_workers

    batch_ids = _plan(client, batch_size=50)["batch_ids"]
    first = client.post(f"/batches/{batch_ids[0]}/enqueue")
    assert first.status_code == 202, first.text
    assert first.json() == {"batch_id": batch_ids[0], "queued": True, "jobs": {"todo": 1}}
    again = client.post(f"/batches/{batch_ids[0]}/enqueue").json()
    assert again["queued"] is False and again["jobs"] == {"todo": 1}
    _error(client.post("/batches/b20990101-000000-000000/enqueue"), 404, "batch_not_found")
    # nothing is sent by the API server itself; a worker takes the job
    assert client.get(f"/batches/{batch_ids[0]}").json()["status"] == "planned"
    summary = run_workers(api_settings, processes=1, once=True, poll_s=0.2, stop=threading.Event())
    assert summary.failed == 0
    done = client.get(f"/batches/{batch_ids[0]}").json()
    assert done["status"] == "completed"
    assert done["uploaded_bytes"] == done["total_bytes"]


def test_a_batch_of_another_target_is_refused_with_409_and_nothing_is_deleted(
    make_settings, sample, stack
):
    """The server's settings name one bucket; a batch planned for another is left alone."""
    import uuid

    from r2migrate.dev import stack as devstack
    from r2migrate.s3.bucket import Bucket
    from r2migrate.stages.inventory import inventory
    from r2migrate.stages.plan import plan
    from r2migrate.stages.transfer import run as run_batches
    from r2migrate.store.ledger import State

    planned_for = make_settings()
    other = f"t3-{uuid.uuid4().hex[:14]}"
    devstack.create_bucket(stack, other)
    with State.open(planned_for.database_url) as state:
        inventory(planned_for, state)
        (batch_id, *_) = plan(planned_for, state, batch_size=500).batch_ids
        run_batches(planned_for, state)
    before = set(Bucket(planned_for).iter_objects())
    served = make_settings(bucket_name=other, api_token=TOKEN)
    with (
        running(create_app(served)) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=60) as c,
    ):
        listed = c.get(f"/batches/{batch_id}").json()
        assert listed["bucket_name"] == planned_for.bucket_name
        for path, body in (
            ("/rollback", {"dry_run": False}),
            ("/verify", {}),
            ("/process", {}),
        ):
            body_out = _error(
                c.post(f"/batches/{batch_id}{path}", json=body), 409, "target_mismatch"
            )
            assert other in body_out["message"] and planned_for.bucket_name in body_out["message"]
    assert set(Bucket(planned_for).iter_objects()) == before
