"""The ``Settings`` object: every field with its unit and cost, derived values, and presentation.

Must never read a file, the environment or the network: ``layers.py`` gathers the values and
``checks.py`` validates them (``Settings.__post_init__`` runs the checks, so an invalid object
cannot exist). A secret never appears in ``repr``, ``describe()``, ``redacted()`` or a message.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, is_dataclass
from datetime import date, datetime, time
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from r2migrate.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
    "SECRET_FIELDS",
    "STACK_FILE_NAME",
    "STANDARD_ENV",
    "Settings",
    "jsonable",
    "redact_url",
]

ENV_PREFIX = "R2MIGRATE_"
CONFIG_ENV = "R2MIGRATE_CONFIG"  # path of the toml file; not a setting itself
CONFIG_FILE_NAME = "r2migrate.toml"
STACK_FILE_NAME = "stack.json"  # written by devstack into state_dir

SECRET_FIELDS: frozenset[str] = frozenset(
    {"database_url", "access_key", "secret_key", "session_token", "api_token", "media_auth_header"}
)

# Names other tools already use. Checked in order; an R2MIGRATE_<FIELD> variable beats them all.
STANDARD_ENV: Mapping[str, tuple[str, ...]] = {
    "database_url": ("DATABASE_URL",),
    "access_key": ("AWS_ACCESS_KEY_ID",),
    "secret_key": ("AWS_SECRET_ACCESS_KEY",),
    "session_token": ("AWS_SESSION_TOKEN",),
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region_name": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "bucket_name": ("AWS_STORAGE_BUCKET_NAME",),
    "ca_bundle": ("AWS_CA_BUNDLE",),
}
_AWS_CA_BUNDLE = "AWS_CA_BUNDLE"

_REDACTED = "***"
_MIB = 1024**2
_GIB = 1024**3
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Keys of put_object that bucket.py sets itself; letting object_parameters set them would break
# create-only writes or the checksum proof.
# RFC 9110 field-name token, a colon, then a value on one line.
_HEADER_LINE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n\x00]*[^\s][^\r\n\x00]*")
_RESERVED_OBJECT_PARAMETERS = frozenset(
    {"Bucket", "Key", "Body", "IfNoneMatch", "IfMatch", "ChecksumSHA256", "ChecksumAlgorithm"}
    | {"ContentMD5", "ContentLength", "Metadata"}
)


class _FrozenMap(Mapping[str, str]):
    """Immutable, hashable ``str -> str`` mapping (sorted keys); keeps ``Settings`` hashable."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(sorted((data or {}).items()))

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


_EMPTY_MAP = _FrozenMap()


@dataclass(frozen=True, repr=False)
class Settings:
    """Every setting of r2migrate, validated once. Build it with ``load_settings()``.

    Storage names follow django-storages' S3 settings without the ``AWS_``/``AWS_S3_`` prefix, so
    the values can be copied into ``settings.py`` after the switch.

    ==========================  =================================================================
    field                       unit, meaning and cost
    ==========================  =================================================================
    database_url                PostgreSQL URL of the application (secret: its password).
    state_schema                schema of the toolkit's own tables; a plain SQL identifier.
    media_root                  folder Django's ``MEDIA_ROOT`` points at; read-only.
    source                      where file bytes are read: ``disk`` (media_root) or ``http``
                                (GET media_url + name, for a worker that cannot see the disk;
                                one HEAD per file in inventory, one GET per upload, two for
                                multipart files, which then hold one part in memory per thread).
    media_url                   the running application's ``MEDIA_URL`` as an absolute http(s)
                                URL (``https://app.example.com/media/``); used by ``source=http``,
                                its TLS certificate checked unless ``verify`` is false.
    media_auth_header           one ``Name: value`` header sent with every media request, such as
                                ``Authorization: Bearer ...`` (secret: only its name is shown).
    references                  ``table.column`` / ``schema.table.column`` holding file names.
    reference_id_column         primary-key column of each referencing table.
    models                      Django only: ``app_label.Model`` / ``app_label.Model.field``
                                entries; only those FileFields become references (empty = all
                                discovered). Outside Django the CLI refuses it: list the
                                columns in ``references`` instead.
    exclude                     Django only: the same forms, left out of the discovered
                                FileFields (applied after ``models``; refused outside Django).
    write_back                  also fill the original migration columns of the app's table.
    bucket_name                 target bucket (S3 naming rules: 3-63 lowercase chars).
    location                    key prefix, as django-storages' ``AWS_LOCATION``.
    endpoint_url                S3 endpoint (http/https). Unset + r2_account_id: R2's endpoint.
    region_name                 signing region; R2 uses ``auto``.
    r2_account_id               Cloudflare account id (32 hex chars); derives endpoint + region.
    access_key                  S3 access key id (shown as its last 4 characters only).
    secret_key                  S3 secret access key (secret).
    session_token               temporary-credential session token (secret).
    addressing_style            ``path`` or ``virtual`` host addressing.
    verify                      verify TLS certificates; off only for a self-signed test server.
    ca_bundle                   PEM file of the CA certificates trusted for the endpoint, instead
                                of certifi's (django-storages' ``verify`` given a path; set by
                                an embedded stack started with TLS, for its endpoint only).
                                Unset = certifi's bundle.
    object_parameters           extra put_object arguments (e.g. CacheControl) for every object.
    batch_size                  files per batch (1-10000); one ledger transaction per batch.
    workers                     upload threads per process; memory at most ~ workers x
                                multipart_threshold_bytes per process (a file up to the
                                threshold is read whole; a multipart part is streamed from the
                                file, 1 MiB per thread).
    fast_put                    send small-object PUTs through fastput.py's own SigV4 signer
                                and keep-alive sockets (about a tenth of boto3's client CPU);
                                false = boto3 for everything.
    processes                   upload processes (each with ``workers`` threads); 0 = one per
                                CPU core when a run has 500+ files to send, else 1.
    max_attempts                tries per file (1-20); each retry is one more Class A request.
    backoff_base_s              seconds before the first retry; doubles per attempt, jittered.
    backoff_max_s               ceiling of one backoff wait, in seconds.
    multipart_threshold_bytes   bytes from which a file goes multipart (5 MiB-5 GiB); also the
                                most one thread holds in memory.
    multipart_chunksize_bytes   part size in bytes (5 MiB-5 GiB); one Class A request per part.
                                Costs no memory: one pass hashes every part and the whole file,
                                then each part goes from the file (fast_put: sendfile); up to 4
                                parts of one file are sent at once.
    connect_timeout_s           seconds to open a connection to the endpoint.
    read_timeout_s              seconds to wait for a response byte before retrying.
    lease_s                     seconds a claimed file stays reserved for one runner before
                                another may take it over; longer = slower recovery after a crash.
    stalled_worker_s            seconds without a heartbeat after which ``r2migrate worker``
                                hands a worker's batch job to another worker (a killed
                                machine's batch restarts after this; the ledger's leases still
                                decide which of its files may be taken).
    state_dir                   local folder for logs and the embedded stack (``stack.json``).
    log_level                   DEBUG, INFO, WARNING or ERROR.
    log_file                    log path; unset means ``state_dir / "r2migrate.log"``.
    log_format                  ``text`` or ``json`` (one object per line).
    api_token                   bearer token ``r2migrate serve`` requires on its API (secret;
                                at least 16 characters); unset = serve refuses to start unless
                                bound to loopback with ``--no-auth``.
    ==========================  =================================================================

    ``sources`` maps each field to where its value came from: ``default``,
    ``embedded stack (<path>)``, ``r2migrate.toml (<path>)``, ``env <NAME>``, ``--set`` or
    ``override`` (or the label the caller gave an override, such as ``option --bucket``).
    """

    database_url: str | None = None
    state_schema: str = "r2migrate"
    media_root: Path | None = None
    source: str = "disk"
    media_url: str | None = None
    media_auth_header: str | None = None
    references: tuple[str, ...] = ("list_cutter_savedfile.file_path",)
    reference_id_column: str = "id"
    models: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    write_back: bool = False
    bucket_name: str | None = None
    location: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None
    r2_account_id: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    addressing_style: str = "path"
    verify: bool = True
    ca_bundle: Path | None = None
    object_parameters: Mapping[str, str] = _EMPTY_MAP
    batch_size: int = 50
    workers: int = 16
    processes: int = 0
    fast_put: bool = True
    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    multipart_threshold_bytes: int = 8 * _MIB
    multipart_chunksize_bytes: int = 8 * _MIB
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    lease_s: float = 300.0
    stalled_worker_s: float = 30.0
    state_dir: Path = Path(".r2migrate")
    log_level: str = "INFO"
    log_file: Path | None = None
    log_format: str = "text"
    api_token: str | None = None
    sources: Mapping[str, str] = field(default=_EMPTY_MAP, compare=False)

    def __post_init__(self) -> None:
        # Normalise containers handed in by Python callers so the object stays immutable.
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "object_parameters", _FrozenMap(self.object_parameters))
        object.__setattr__(self, "sources", _FrozenMap(self.sources))
        from r2migrate.settings.checks import check_settings  # checks reads this module's names

        problems = []
        for name, message in check_settings(self):
            source = self.sources.get(name, "") if name else ""
            label = f"{name} ({source})" if source and source != "default" else name
            problems.append(f"{label}: {message}" if label else message)
        if problems:
            raise ConfigError(problems)

    # -- derived values ---------------------------------------------------------------------

    @property
    def effective_endpoint_url(self) -> str | None:
        """``endpoint_url``, else R2's endpoint for ``r2_account_id``, else None (AWS default)."""
        if self.endpoint_url:
            return self.endpoint_url
        if self.r2_account_id:
            return f"https://{self.r2_account_id}.r2.cloudflarestorage.com"
        return None

    @property
    def effective_region_name(self) -> str | None:
        """``region_name``, else ``auto`` when the endpoint is R2's, else None."""
        if self.region_name:
            return self.region_name
        endpoint = self.effective_endpoint_url or ""
        if (urlsplit(endpoint).hostname or "").endswith(".r2.cloudflarestorage.com"):
            return "auto"
        return None

    @property
    def source_settings(self) -> tuple[str, ...]:
        """The settings the configured ``source`` reads from (for ``require``)."""
        return ("media_url",) if self.source == "http" else ("media_root",)

    @property
    def effective_log_file(self) -> Path:
        """``log_file``, else ``state_dir / "r2migrate.log"``."""
        return self.log_file if self.log_file is not None else self.state_dir / "r2migrate.log"

    # -- presentation -----------------------------------------------------------------------

    def redacted(self) -> dict[str, object]:
        """Every field as JSON-serialisable values, secrets redacted (safe to store or show)."""
        out: dict[str, object] = {}
        for name in _FIELD_NAMES:
            out[name] = _redact_field(name, jsonable(getattr(self, name)))
        return out

    def describe(self) -> list[tuple[str, str, str]]:
        """``(field, redacted display value, source)`` rows for ``r2migrate config show``."""
        derived = {
            "endpoint_url": self.effective_endpoint_url,
            "region_name": self.effective_region_name,
            "log_file": str(self.effective_log_file),
        }
        rows = []
        for name, value in self.redacted().items():
            if value is None:
                effective = derived.get(name)
                shown = f"{effective} (derived)" if effective else "(not set)"
            elif isinstance(value, list):
                shown = ", ".join(str(v) for v in value)
            elif isinstance(value, dict):
                shown = json.dumps(value, sort_keys=True)
            else:
                shown = str(value) if value != "" else "(empty)"
            rows.append((name, shown, self._source_of(name)))
        return rows

    def secret_values(self) -> tuple[str, ...]:
        """The secret strings themselves, for ``logs.configure_logging(secrets=...)``."""
        values = [self.access_key, self.secret_key, self.session_token, self.api_token]
        if self.media_auth_header:
            # The header value alone (it may be logged without its name) and the whole line.
            values += [self.media_auth_header, self.media_auth_header.partition(":")[2].strip()]
        if self.database_url:
            try:
                password = urlsplit(self.database_url).password
            except ValueError:
                password = None
            values.append(password)
        return tuple(v for v in values if v)

    def require(self, *names: str) -> None:
        """Raise one ``ConfigError`` naming every missing setting and how to set each."""
        unknown = [n for n in names if n not in _FIELD_NAMES]
        if unknown:
            raise ValueError(f"not settings: {', '.join(unknown)}")
        effective: dict[str, object] = {
            "endpoint_url": self.effective_endpoint_url,
            "region_name": self.effective_region_name,
        }
        missing = []
        for name in names:
            value = effective[name] if name in effective else getattr(self, name)
            if value is None or value in ("", ()):
                missing.append(f"{name} is not set: {_how_to_set(name)}")
        if missing:
            raise ConfigError(missing)

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={value!r}" for name, value in self.redacted().items())
        return f"Settings({body})"

    def _source_of(self, name: str) -> str:
        source = self.sources.get(name)
        if source:
            return source
        default = _FIELDS[name].default
        return "default" if getattr(self, name) == default else "argument"


_FIELDS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(Settings) if f.name != "sources"
}
_FIELD_NAMES: tuple[str, ...] = tuple(_FIELDS)

# How a value of each annotated type is parsed. A new field with a new type fails at import.
_KIND_BY_ANNOTATION = {
    "str": "str",
    "str | None": "opt_str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "Path": "path",
    "Path | None": "opt_path",
    "tuple[str, ...]": "tuple",
    "Mapping[str, str]": "mapping",
}
_KINDS: dict[str, str] = {
    name: ("bytes" if name.endswith("_bytes") else _KIND_BY_ANNOTATION[str(f.type)])
    for name, f in _FIELDS.items()
}


def redact_url(url: str) -> str:
    """``url`` with the password (userinfo or ``password=`` query) replaced by ``***``.

    Deliberately blunt: everything between the user name and the last ``@`` goes, so a password
    holding an unencoded ``/``, ``?`` or ``@`` cannot leak through a URL parser's reading of it.
    """
    match = _URL_USERINFO.match(url)
    if match and ":" in match.group("userinfo"):
        user = match.group("userinfo").partition(":")[0]
        url = f"{match.group('scheme')}{user}:{_REDACTED}@{match.group('rest')}"
    return _URL_PASSWORD_PARAM.sub(rf"\1{_REDACTED}", url)


_URL_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@(?P<rest>.*)", re.S
)
_URL_PASSWORD_PARAM = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")


def _how_to_set(name: str) -> str:
    env_names = [ENV_PREFIX + name.upper(), *STANDARD_ENV.get(name, ())]
    alternative = " (or r2_account_id for R2)" if name in ("endpoint_url", "region_name") else ""
    return (
        f"add `{name} = ...` to {CONFIG_FILE_NAME}, set {' or '.join(env_names)}, "
        f"or pass it as an option{alternative}"
    )


# -- presentation helpers -----------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types, recursively: a dataclass or mapping becomes a dict, a tuple,
    list or set a list, a ``Path`` a string, a datetime/date its ISO text, an enum its value, a
    numpy/pandas scalar its Python value. Anything else is returned as it is."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    item = getattr(value, "item", None)  # numpy / pandas scalars
    if callable(item) and not isinstance(value, str | bytes | int | float | bool):
        return item()
    return value


def _redact_field(name: str, value: object) -> object:
    if value is None or (name not in SECRET_FIELDS and name not in ("endpoint_url", "media_url")):
        return value
    text = str(value)
    if name in ("database_url", "endpoint_url", "media_url"):
        return redact_url(text)
    if name == "media_auth_header":
        header, sep, _ = text.partition(":")
        return f"{header}: {_REDACTED}" if sep and _HEADER_LINE.fullmatch(text) else _REDACTED
    if name == "access_key":
        return "…" + text[-4:] if len(text) > 8 else _REDACTED
    return _REDACTED
