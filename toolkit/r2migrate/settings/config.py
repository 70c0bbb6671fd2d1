"""One frozen ``Settings``: defaults < embedded stack < ``r2migrate.toml`` < env < --set < flags.

Never opens connections or touches the network; it only reads ``r2migrate.toml`` and the embedded
stack's ``stack.json``. Every problem is collected and raised at once as one ``ConfigError``, and a
secret never appears in ``repr``, ``describe()``, ``redacted()`` or an error message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from r2migrate.errors import ConfigError
from r2migrate.errors import SettingValueError as _ParseError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
    "SECRET_FIELDS",
    "STACK_FILE_NAME",
    "STANDARD_ENV",
    "Settings",
    "load_settings",
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
        object.__setattr__(self, "object_parameters", _FrozenMap(self.object_parameters))
        object.__setattr__(self, "sources", _FrozenMap(self.sources))
        problems = []
        for name, message in _check(self):
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
            out[name] = _redact_field(name, _jsonable(getattr(self, name)))
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


# -- public helpers -----------------------------------------------------------------------------


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


def load_settings(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    set_values: Mapping[str, object] | None = None,
    overrides: Mapping[str, object] | None = None,
    override_labels: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge defaults < embedded stack < toml < env < set_values < overrides; validate; return.

    ``env=None`` reads ``os.environ``. ``set_values`` are the CLI's ``--set KEY=VALUE`` (text,
    parsed like the environment's); ``overrides`` are explicit values that beat everything, such
    as a command's flags, each shown as coming from ``override_labels[name]`` (default
    ``override``). An override or --set value of None counts as not given. Raises one
    ``ConfigError`` listing every problem found.
    """
    cwd = (cwd or Path.cwd()).absolute()
    env = os.environ if env is None else env
    problems: list[str] = []

    # Each layer: source label per field, raw value per field, folder relative paths start from.
    toml_layer = _read_toml_layer(config_file, env, cwd, problems)
    env_layer = _read_env_layer(env, cwd, problems)
    set_layer = _read_override_layer(set_values or {}, cwd, problems, {}, default_label="--set")
    override_layer = _read_override_layer(overrides or {}, cwd, problems, override_labels or {})
    upper_layers = [override_layer, set_layer, env_layer, toml_layer]  # highest first

    # The stack file lives in state_dir, which any higher layer may move.
    state_dir = cwd / Settings.state_dir
    for layer in upper_layers:
        if "state_dir" in layer.values:
            with contextlib.suppress(_ParseError):  # reported below with the other parse errors
                state_dir = _parse("state_dir", layer.values["state_dir"], layer.base_dir)
            break
    stack_layer = _read_stack_layer(Path(state_dir) / STACK_FILE_NAME, problems)

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    failed: set[str] = set()
    for layer in (stack_layer, toml_layer, env_layer, set_layer, override_layer):  # lowest first
        for name, raw in layer.values.items():
            try:
                values[name] = _parse(name, raw, layer.base_dir)
                sources[name] = layer.sources[name]
                failed.discard(name)
            except _ParseError as exc:
                problems.append(f"{name} ({layer.sources[name]}): {exc}")
                failed.add(name)
    for name in failed:  # keep the error list about the real problem, not a knock-on one
        values.pop(name, None)
        sources.pop(name, None)
    # The embedded stack's self-signed CA vouches for the stack alone: not for another endpoint.
    stack_label = stack_layer.sources.get("ca_bundle")
    if stack_label and sources.get("ca_bundle") == stack_label != sources.get("endpoint_url"):
        values.pop("ca_bundle", None)
        sources.pop("ca_bundle", None)
    # ...and for the stack's own endpoint it wins over a bundle the machine's environment
    # carries for everything else (AWS_CA_BUNDLE): that one cannot know the stack's CA.
    inherited = sources.get("ca_bundle") == f"env {_AWS_CA_BUNDLE}"
    if stack_label and inherited and sources.get("endpoint_url") == stack_label:
        with contextlib.suppress(_ParseError):  # a broken stack.json was reported above
            values["ca_bundle"] = _parse(
                "ca_bundle", stack_layer.values["ca_bundle"], stack_layer.base_dir
            )
            sources["ca_bundle"] = stack_label
    # `verify = false` alone turns checks off: a bundle from the environment or the stack is
    # then dropped instead of refused (one set on purpose in toml, --set or R2MIGRATE_* stays
    # a contradiction, reported below).
    if values.get("verify") is False and sources.get("ca_bundle") in (
        f"env {_AWS_CA_BUNDLE}",
        stack_label,
    ):
        values.pop("ca_bundle", None)
        sources.pop("ca_bundle", None)
    if "state_dir" not in values:
        values["state_dir"] = state_dir
    sources = {name: sources.get(name, "default") for name in _FIELD_NAMES}

    try:
        settings = Settings(**values, sources=sources)  # type: ignore[arg-type]
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return settings


# -- layers -------------------------------------------------------------------------------------


@dataclass
class _Layer:
    values: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    base_dir: Path = Path()


def _read_toml_layer(
    config_file: Path | None, env: Mapping[str, str], cwd: Path, problems: list[str]
) -> _Layer:
    if config_file is not None:
        named, required = Path(config_file), True
    elif env.get(CONFIG_ENV):
        named, required = Path(env[CONFIG_ENV]), True
    else:
        named, required = Path(CONFIG_FILE_NAME), False
    path = cwd / named.expanduser()  # an absolute path on the right replaces cwd
    layer = _Layer(base_dir=path.parent)
    if not required and not path.is_file():
        return layer
    label = f"{CONFIG_FILE_NAME} ({path})"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        via = "config_file" if config_file is not None else f"env {CONFIG_ENV}"
        problems.append(f"{label}: file not found (named by {via})")
        return layer
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{label}: cannot read: {getattr(exc, 'strerror', None) or exc}")
        return layer
    except tomllib.TOMLDecodeError as exc:  # message carries "(at line N, column M)", no value
        problems.append(f"{label}: not valid TOML: {exc}")
        return layer
    for key, value in data.items():
        if key in _FIELDS:
            layer.values[key] = value
            layer.sources[key] = label
        else:
            flat = " (settings are flat top-level keys, not tables)" if _is_table(value) else ""
            problems.append(f"{label}: unknown key {key!r}{_did_you_mean(key)}{flat}")
    return layer


def _read_env_layer(env: Mapping[str, str], cwd: Path, problems: list[str]) -> _Layer:
    layer = _Layer(base_dir=cwd)
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name in _FIELDS:
            layer.values[name] = env[var]
            layer.sources[name] = f"env {var}"
        else:
            guess = _closest(name)
            hint = f"; did you mean {ENV_PREFIX}{guess.upper()}?" if guess else ""
            problems.append(f"env {var}: unknown setting{hint}")
    for name, names in STANDARD_ENV.items():
        if name in layer.values:
            continue  # R2MIGRATE_<FIELD> wins over the standard name
        for var in names:
            if env.get(var):  # an empty standard variable is someone else's "unset"
                layer.values[name] = env[var]
                layer.sources[name] = f"env {var}"
                break
    return layer


def _read_override_layer(
    overrides: Mapping[str, object],
    cwd: Path,
    problems: list[str],
    labels: Mapping[str, str],
    *,
    default_label: str = "override",
) -> _Layer:
    layer = _Layer(base_dir=cwd)
    for key, value in overrides.items():
        if key not in _FIELDS:
            problems.append(f"{default_label} {key!r}: unknown setting{_did_you_mean(key)}")
        elif value is not None:
            layer.values[key] = value
            layer.sources[key] = labels.get(key, default_label)
    return layer


def _read_stack_layer(path: Path, problems: list[str]) -> _Layer:
    layer = _Layer(base_dir=path.parent)
    if not path.is_file():
        return layer
    label = f"embedded stack ({path})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{label}: cannot read: {exc.strerror or exc}")
        return layer
    except json.JSONDecodeError as exc:
        problems.append(f"{label}: not valid JSON at line {exc.lineno}, column {exc.colno}")
        return layer
    except UnicodeDecodeError:
        problems.append(f"{label}: not UTF-8 text")
        return layer
    if not isinstance(data, dict):
        problems.append(f"{label}: expected a JSON object")
        return layer
    # Machine-written by devstack, which may keep its own bookkeeping (pids, ports) beside the
    # settings: keys that are not settings are its business, not a typo to report.
    for key, value in data.items():
        if key in _FIELDS and value is not None:
            layer.values[key] = value
            layer.sources[key] = label
    return layer


def _did_you_mean(key: str) -> str:
    guess = _closest(key)
    return f"; did you mean {guess!r}?" if guess else ""


def _closest(key: str) -> str | None:
    lowered = key.lower()
    # django-storages names (AWS_STORAGE_BUCKET_NAME, AWS_S3_ENDPOINT_URL, AWS_LOCATION, ...).
    for prefix in ("aws_s3_", "aws_storage_", "aws_"):
        if lowered.startswith(prefix) and lowered[len(prefix) :] in _FIELDS:
            return lowered[len(prefix) :]
    matches = difflib.get_close_matches(lowered, _FIELD_NAMES, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _is_table(value: object) -> bool:
    return isinstance(value, dict)


def _how_to_set(name: str) -> str:
    env_names = [ENV_PREFIX + name.upper(), *STANDARD_ENV.get(name, ())]
    alternative = " (or r2_account_id for R2)" if name in ("endpoint_url", "region_name") else ""
    return (
        f"add `{name} = ...` to {CONFIG_FILE_NAME}, set {' or '.join(env_names)}, "
        f"or pass it as an option{alternative}"
    )


# -- parsing ------------------------------------------------------------------------------------


# Choices compared case-insensitively; stored in the spelling the rest of the code expects.
_NORMALISE = {
    "log_level": str.upper,
    "log_format": str.lower,
    "addressing_style": str.lower,
    "source": str.lower,
}
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": _MIB, "gib": _GIB}
_SIZE_UNITS |= {"kb": 1000, "mb": 1000**2, "gb": 1000**3}


def _parse(name: str, raw: object, base_dir: Path) -> Any:
    """``raw`` (text from env, a TOML/JSON value, or a Python value) as the field's type."""
    kind = _KINDS[name]
    shown = "" if name in SECRET_FIELDS else f", got {raw!r}"
    if kind in ("str", "opt_str"):
        if not isinstance(raw, str):
            raise _ParseError(f"expected a string, got {_type_name(raw)}")
        if kind == "opt_str" and raw == "":
            return None
        return _NORMALISE[name](raw) if name in _NORMALISE else raw
    if kind in ("int", "bytes"):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            text = raw.strip().replace("_", "")
            match = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", text) if kind == "bytes" else None
            if match and match.group(2).lower() in _SIZE_UNITS:
                return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
            if re.fullmatch(r"[+-]?\d+", text):
                return int(text)
        unit = " (bytes; KiB/MiB/GiB suffixes allowed)" if kind == "bytes" else ""
        raise _ParseError(f"expected an integer{unit}{shown}")
    if kind == "float":
        number: float | None = None
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            number = float(raw)
        elif isinstance(raw, str):
            try:
                number = float(raw.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise _ParseError(f"expected a number of seconds{shown}")
        return number
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower() if isinstance(raw, str | int) else None
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise _ParseError(f"expected true/false, 1/0 or yes/no{shown}")
    if kind in ("path", "opt_path"):
        if isinstance(raw, str) and raw == "" and kind == "opt_path":
            return None
        if not isinstance(raw, str | os.PathLike) or str(raw) == "":
            raise _ParseError(f"expected a path{shown}")
        path = Path(raw).expanduser()
        return path if path.is_absolute() else base_dir / path
    if kind == "tuple":
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        raise _ParseError(f"expected a list of strings or a comma-separated string{shown}")
    if kind == "mapping":
        data = raw
        if isinstance(raw, str):
            try:
                data = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                raise _ParseError(
                    f"expected a JSON object: {exc.msg} at column {exc.colno}"
                ) from exc
        if isinstance(data, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            return _FrozenMap(data)
        raise _ParseError(f"expected a table of string values{shown}")
    raise AssertionError(f"no parser for {kind}")  # pragma: no cover


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


# -- validation ---------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_ACCOUNT_ID = re.compile(r"[0-9a-f]{32}")
_PARAMETER_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")
# RFC 9110 field-name token, a colon, then a value on one line.
_HEADER_LINE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n\x00]*[^\s][^\r\n\x00]*")


def _check(s: Settings) -> Iterable[tuple[str, str]]:
    """``(field, message)`` for every invalid value; ``field`` is '' for cross-field problems."""
    if s.database_url is not None:
        scheme = s.database_url.partition("://")[0].lower() if "://" in s.database_url else ""
        if scheme not in ("postgresql", "postgres"):
            # Never echo the value: a malformed URL may still hold a password.
            yield "database_url", "must be a postgresql:// or postgres:// URL (value not shown)"
    if not _IDENTIFIER.fullmatch(s.state_schema):
        yield (
            "state_schema",
            f"must be a SQL identifier (letters, digits, _), got {s.state_schema!r}",
        )
    if not s.references:
        yield "references", "needs at least one table.column"
    for ref in s.references:
        names = ref.split(".")
        if len(names) not in (2, 3) or not all(_IDENTIFIER.fullmatch(n) for n in names):
            yield "references", f"{ref!r} is not table.column or schema.table.column"
    if len(set(s.references)) != len(s.references):
        yield "references", "lists the same column twice"
    if not _IDENTIFIER.fullmatch(s.reference_id_column):
        yield "reference_id_column", f"must be a SQL identifier, got {s.reference_id_column!r}"
    if s.bucket_name is not None:
        name = s.bucket_name
        if not _BUCKET.fullmatch(name) or ".." in name or _IPV4.fullmatch(name):
            yield (
                "bucket_name",
                f"{name!r} is not a valid bucket name (3-63 characters: lowercase letters, "
                "digits, dots and hyphens, starting and ending with a letter or digit)",
            )
    if "\x00" in s.location or s.location.startswith("/"):
        yield "location", f"must be a relative key prefix, got {s.location!r}"
    if s.endpoint_url is not None:
        try:
            parts = urlsplit(s.endpoint_url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            yield "endpoint_url", f"must be an http(s) URL, got {redact_url(s.endpoint_url)!r}"
    yield from _check_source(s)
    if s.region_name is not None and not re.fullmatch(r"[a-z0-9-]+", s.region_name):
        yield "region_name", f"must look like 'auto' or 'us-east-1', got {s.region_name!r}"
    if s.r2_account_id is not None and not _ACCOUNT_ID.fullmatch(s.r2_account_id):
        yield "r2_account_id", f"must be 32 lowercase hex characters, got {s.r2_account_id!r}"
    if bool(s.access_key) != bool(s.secret_key):
        given, absent = (
            ("access_key", "secret_key") if s.access_key else ("secret_key", "access_key")
        )
        yield "", f"{given} is set but {absent} is not: set both or neither"
    if s.session_token and not s.access_key:
        yield "", "session_token is set without access_key and secret_key"
    if s.addressing_style not in ("path", "virtual"):
        yield "addressing_style", f"must be 'path' or 'virtual', got {s.addressing_style!r}"
    if s.ca_bundle is not None and not s.verify:
        yield (
            "ca_bundle",
            "is set but verify is false, so no certificate would be checked: unset one of them",
        )
    for key in s.object_parameters:
        if key in _RESERVED_OBJECT_PARAMETERS:
            yield (
                "object_parameters",
                f"{key!r} is set by r2migrate itself and cannot be overridden",
            )
        elif not _PARAMETER_NAME.fullmatch(key):
            yield "object_parameters", f"{key!r} is not a put_object parameter name (CacheControl)"
    yield from _check_range("batch_size", s.batch_size, 1, 10_000)
    yield from _check_range("workers", s.workers, 1, 1024)
    yield from _check_range("processes", s.processes, 0, 256)
    yield from _check_range("max_attempts", s.max_attempts, 1, 20)
    yield from _check_range("backoff_base_s", s.backoff_base_s, 0, 3600)
    yield from _check_range("backoff_max_s", s.backoff_max_s, 0, 3600)
    if s.backoff_max_s < s.backoff_base_s:
        yield "backoff_max_s", f"must be at least backoff_base_s ({s.backoff_base_s})"
    yield from _check_range(
        "multipart_threshold_bytes", s.multipart_threshold_bytes, 5 * _MIB, 5 * _GIB
    )
    yield from _check_range(
        "multipart_chunksize_bytes", s.multipart_chunksize_bytes, 5 * _MIB, 5 * _GIB
    )
    yield from _check_positive("connect_timeout_s", s.connect_timeout_s)
    yield from _check_positive("read_timeout_s", s.read_timeout_s)
    yield from _check_positive("lease_s", s.lease_s)
    if s.lease_s <= s.read_timeout_s:
        # Otherwise another runner may take a file over while its PUT is still legitimately waiting.
        yield "lease_s", f"must be longer than read_timeout_s ({s.read_timeout_s})"
    if s.stalled_worker_s < 1:
        # Heartbeats go every third of it; below a second they would cost more than they tell.
        yield "stalled_worker_s", f"must be at least 1 second, got {s.stalled_worker_s}"
    if s.log_level not in _LOG_LEVELS:
        yield "log_level", f"must be one of {', '.join(_LOG_LEVELS)}, got {s.log_level!r}"
    if s.log_format not in ("text", "json"):
        yield "log_format", f"must be 'text' or 'json', got {s.log_format!r}"


def _check_source(s: Settings) -> Iterable[tuple[str, str]]:
    if s.source not in ("disk", "http"):
        yield "source", f"must be 'disk' or 'http', got {s.source!r}"
    if s.media_url is not None:
        try:
            parts = urlsplit(s.media_url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            userinfo = "@" in parts.netloc
            extra = bool(parts.query or parts.fragment)
        except ValueError:
            ok, userinfo, extra = False, False, False
        shown = redact_url(s.media_url)
        if not ok:
            yield "media_url", f"must be an absolute http(s) URL, got {shown!r}"
        elif userinfo:
            yield (
                "media_url",
                "must not hold a user or password (value not shown); put credentials in "
                "media_auth_header (R2MIGRATE_MEDIA_AUTH_HEADER), which is kept secret",
            )
        elif extra:
            yield "media_url", f"must not have a query or fragment, got {shown!r}"
    if s.media_auth_header is not None and not _HEADER_LINE.fullmatch(s.media_auth_header):
        yield (
            "media_auth_header",
            "must be one 'Header-Name: value' line, such as 'Authorization: Bearer ...' "
            "(value not shown)",
        )
    if s.source == "http" and s.media_url is None:
        yield (
            "media_url",
            "is required when source is 'http': the application's MEDIA_URL as an absolute URL "
            "(--media-url https://app.example.com/media/)",
        )


def _check_range(name: str, value: float, low: float, high: float) -> Iterable[tuple[str, str]]:
    if not low <= value <= high:
        yield name, f"must be between {low:,} and {high:,}, got {value:,}"


def _check_positive(name: str, value: float) -> Iterable[tuple[str, str]]:
    if not value > 0:
        yield name, f"must be more than 0 seconds, got {value}"


# -- presentation helpers -----------------------------------------------------------------------


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
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
