"""The exception tree, exit codes and per-file problem codes of r2migrate.

Must not import anything from the package: every other module imports this one.

``BucketError.whole_run`` marks the errors that are wrong for every key (credentials, bucket,
certificate): a stage stops on them instead of recording them against one file. Outside the tree,
``SourceShort`` and ``SourceUnreadable`` (OSError: a file read for a multipart part) are signals
between the part reader and ``s3/bucket.py``, never raised to a caller; ``FastPutProtocolError``
and ``FastPutNoResponse`` stay inside ``s3/fastput.py`` (it turns them into BucketErrors), and
``SettingValueError`` inside the settings loader (it becomes one line of a ConfigError).

Whole-run failures are exceptions; per-file trouble is data (a ``Problem`` code on a row) so a
batch goes on past one bad file. The tree (a test keeps this drawing and the classes in step)::

    ToolkitError                      exit 1   root; every error carries .hint and .exit_code
    ├── ConfigError                   exit 2   settings missing, malformed or contradictory
    │   └── TargetMismatch            exit 2   settings name another target or source than a batch
    ├── ServiceUnavailable            exit 3   a service cannot be reached at all
    │   ├── DatabaseUnavailable       exit 3   PostgreSQL refused, timed out or is not running
    │   ├── BucketUnavailable         exit 3   the S3 endpoint refused or timed out
    │   └── SourceUnavailable         exit 3   the media server (media_url) refused, timed out, 5xx
    ├── StateError                    exit 4   the toolkit's own tables say no
    │   ├── SchemaTooNew              exit 4   the database was migrated by a newer r2migrate
    │   ├── SchemaNotReady            exit 4   the ledger is missing or older than this r2migrate
    │   ├── PrivilegeMissing          exit 4   the database role lacks a privilege (GRANT in hint)
    │   ├── BatchNotFound             exit 4   no batch with that id
    │   ├── BatchRolledBack           exit 4   the batch was rolled back; plan again instead
    │   └── BatchBusy                 exit 4   another runner holds the batch
    ├── BucketError                   exit 1   one S3 operation failed; .retryable, .code
    │   ├── AccessDenied              exit 2   credentials wrong or lacking permission
    │   ├── NoSuchBucket              exit 2   the bucket does not exist (R2 never creates one)
    │   ├── CertificateRefused        exit 2   TLS: the endpoint's certificate is not trusted
    │   ├── ObjectExists              exit 1   create-only PUT refused: the key is taken
    │   ├── ObjectChanged             exit 1   If-Match refused: the object is not the one we saw
    │   ├── DigestMismatch            exit 1   the server computed another SHA-256 (BadDigest)
    │   │   └── SourceMoved           exit 1   the file changed before any byte was sent: retried
    │   ├── FastPutUnsupported        exit 1   fast_put cannot send this request; boto3 sends it
    │   └── TransientBucketError      exit 1   5xx, SlowDown, timeout, reset: worth retrying
    ├── SourceError                   exit 1   a source file cannot be read safely; .problem
    │   ├── UnsafePath                exit 1   the name leaves MEDIA_ROOT or is not a plain file
    │   ├── SourceChanged             exit 1   the file changed while it was read: retried
    │   └── SourceRefused             exit 2   the media server answered 401/403: credentials
    ├── NotebookFailed                exit 1   a notebook cell raised (exit code: that error's)
    └── Interrupted                   exit 130 Ctrl-C or SIGTERM; state is saved, resume later
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes, documented in ``r2migrate --help``."""

    OK = 0
    FILES_FAILED = 1
    CONFIG = 2
    UNREACHABLE = 3
    STATE = 4
    INTERRUPTED = 130


class Problem(StrEnum):
    """Why a referenced (or orphaned) file cannot be migrated as it is; stored by value.

    Each code has one meaning (``PROBLEM_MEANINGS``, the one table the CLI, CSV, notebooks and
    reports show next to it) and is either blocking (the file is refused) or a warning.
    """

    EMPTY_NAME = "empty_name"  # NULL or '' in the reference column
    MISSING = "missing"  # no file at the path
    TRAVERSAL = "traversal"  # '..' climbs out of MEDIA_ROOT (or out of the storage location)
    ABSOLUTE_PATH = "absolute_path"  # '/x', '//x', 'C:\x'
    SYMLINK_OUTSIDE = "symlink_outside"  # a symlink on the path leads out of MEDIA_ROOT
    DANGLING_SYMLINK = "dangling_symlink"  # a symlink on the path leads nowhere
    SYMLINK_LOOP = "symlink_loop"  # the symlinks on the path loop
    UNSAFE_PATH = "unsafe_path"  # a symlink appeared on the path while the file was opened
    NOT_REGULAR_FILE = "not_regular_file"  # directory, fifo, device, socket, MEDIA_ROOT itself
    UNREADABLE = "unreadable"  # permission denied
    DUPLICATE_REFERENCE = "duplicate_reference"  # another row points at the same name
    KEY_TOO_LONG = "key_too_long"  # object key above 1024 bytes of UTF-8
    KEY_INVALID = "key_invalid"  # empty key or a NUL character
    NAME_NOT_UTF8 = "name_not_utf8"  # the name's bytes on disk are not UTF-8 (stored escaped)
    CONTROL_CHARACTERS = "control_characters"  # tab, newline, ... in the name: migrated
    NOT_NFC = "not_nfc"  # R2 folds NFC/NFD; the bucket may answer for another spelling
    UNICODE_SPELLING = "unicode_spelling"  # read from the one equivalent spelling on disk
    UNICODE_AMBIGUOUS = "unicode_ambiguous"  # several equivalent spellings on disk
    UNICODE_COLLISION = "unicode_collision"  # another row's name is NFC-equal, other bytes
    GZIP_ENCODING = "gzip_encoding"  # '.gz' gets Content-Encoding: gzip from django-storages
    SIZE_MISMATCH = "size_mismatch"  # media server: body length, Content-Length, inventory differ
    SOURCE_CHANGED = "source_changed"  # the file on disk is not the one inventory measured
    ORPHAN = "orphan"  # on disk, but no row points at it

    @classmethod
    def _missing_(cls, value: object) -> Problem | None:
        # Snapshots taken before the code was renamed still hold the old value.
        return cls.UNICODE_COLLISION if value == "normalization_collision" else None

    @property
    def blocking(self) -> bool:
        """True when a file with this problem must not be uploaded."""
        return self not in _WARNINGS

    @property
    def meaning(self) -> str:
        """One line for people who never saw the tool (``PROBLEM_MEANINGS``)."""
        return PROBLEM_MEANINGS[self.value]


_WARNINGS = frozenset(
    {
        Problem.NOT_NFC,
        Problem.GZIP_ENCODING,
        Problem.DUPLICATE_REFERENCE,
        Problem.CONTROL_CHARACTERS,
        Problem.UNICODE_SPELLING,
    }
)

# The one table of meanings: CLI tables, inventory CSV, notebooks and reports all read it.
PROBLEM_MEANINGS: dict[str, str] = {
    Problem.EMPTY_NAME.value: "the row holds no file name (NULL, empty or blank)",
    Problem.MISSING.value: "the row names a file that is not on disk",
    Problem.TRAVERSAL.value: "'..' in the name climbs out of the media folder or the location",
    Problem.ABSOLUTE_PATH.value: "the name is an absolute path, not one inside the media folder",
    Problem.SYMLINK_OUTSIDE.value: "a symlink on the name's path leads out of the media folder",
    Problem.DANGLING_SYMLINK.value: "a symlink on the name's path points at nothing",
    Problem.SYMLINK_LOOP.value: "the symlinks on the name's path loop",
    Problem.UNSAFE_PATH.value: "a symlink appeared on the path while the file was being read",
    Problem.NOT_REGULAR_FILE.value: "the name is a folder or a special file (fifo, device, socket)",
    Problem.UNREADABLE.value: "the file exists but cannot be read (permissions)",
    Problem.DUPLICATE_REFERENCE.value: "another row names the same file (it is uploaded once)",
    Problem.KEY_TOO_LONG.value: "the object name would exceed the 1024-byte limit",
    Problem.KEY_INVALID.value: "the object name would be empty or hold a NUL character",
    Problem.NAME_NOT_UTF8.value: "the name on disk is not UTF-8; shown and stored escaped (\\xNN)",
    Problem.CONTROL_CHARACTERS.value: "the name holds tabs, newlines or other control characters",
    Problem.NOT_NFC.value: "the name is in a Unicode form R2 folds; uploaded as spelled, flagged",
    Problem.UNICODE_SPELLING.value: "the file on disk is spelled in another Unicode form; "
    "uploaded under the row's spelling",
    Problem.UNICODE_AMBIGUOUS.value: "several files on disk are Unicode spellings of the name",
    Problem.UNICODE_COLLISION.value: "another row's name differs only by Unicode normalisation "
    "and names other bytes; R2 would serve one for both",
    Problem.GZIP_ENCODING.value: "a .gz name gets Content-Encoding: gzip, as django-storages sets",
    Problem.SIZE_MISMATCH.value: "the media server's size differs from the body it sent",
    Problem.SOURCE_CHANGED.value: "the file changed on disk after inventory measured it",
    Problem.ORPHAN.value: "a file on disk that no row references (not migrated)",
}


class ToolkitError(Exception):
    """Root of every error r2migrate raises on purpose."""

    exit_code: ExitCode = ExitCode.FILES_FAILED
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class ConfigError(ToolkitError):
    exit_code = ExitCode.CONFIG
    default_hint = "Run `r2migrate config show` to see every setting and where it came from."

    def __init__(self, problems: list[str] | str, *, hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} configuration problems:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message, hint=hint)


class TargetMismatch(ConfigError):
    """The configured bucket/endpoint/location or source differs from what a batch recorded."""


class ServiceUnavailable(ToolkitError):
    exit_code = ExitCode.UNREACHABLE


class DatabaseUnavailable(ServiceUnavailable):
    default_hint = (
        "Check DATABASE_URL (or database_url in r2migrate.toml) and that PostgreSQL is running; "
        "for the embedded stack run `r2migrate dev up`."
    )


class BucketUnavailable(ServiceUnavailable):
    default_hint = (
        "Check endpoint_url (or r2_account_id) and that the S3 server is reachable; "
        "for the embedded stack run `r2migrate dev up`."
    )


class SourceUnavailable(ServiceUnavailable):
    """The media server (``source = "http"``) cannot be reached or answered 5xx/429; retryable."""

    retryable = True
    default_hint = (
        "Check media_url (the application's MEDIA_URL) and that the application serves it from "
        "this machine; r2migrate retries such failures with backoff."
    )


class StateError(ToolkitError):
    exit_code = ExitCode.STATE


class SchemaTooNew(StateError):
    default_hint = "Upgrade r2migrate to the version that migrated this database."


class SchemaNotReady(StateError):
    """The ledger (schema, tables, job queue) is missing or older than this r2migrate.

    Only ``r2migrate plan``, ``r2migrate db upgrade`` and the SQL of ``r2migrate db sql`` create
    or upgrade it; every other command refuses instead of issuing DDL.
    """

    default_hint = (
        "Create or upgrade it with `r2migrate db upgrade` (needs CREATE), or have a DBA run "
        "the SQL printed by `r2migrate db sql`."
    )


class PrivilegeMissing(StateError):
    """PostgreSQL refused an operation for lack of a privilege; the hint holds the GRANT.

    ``denied`` is the server's own words ("permission denied for table batches"); ``ddl`` says
    whether the refused statements were creating or altering objects.
    """

    default_hint = "Run `r2migrate doctor`: it lists every privilege the next commands need."

    def __init__(
        self, message: str, *, denied: str = "", ddl: bool = False, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.denied = denied
        self.ddl = ddl


class BatchNotFound(StateError):
    default_hint = "List batches with `r2migrate batches`."


class BatchRolledBack(StateError):
    default_hint = "Plan the files again with `r2migrate plan`; a rolled-back batch stays closed."


class BatchBusy(StateError):
    default_hint = (
        "Another runner is working on this batch; watch it with `r2migrate status --batch BATCH`, "
        "or wait for its lease to expire."
    )


class BucketError(ToolkitError):
    """One S3 operation failed. ``retryable`` decides retries, never the message text;
    ``whole_run`` says it is wrong for every key (stop), not for this one (record it)."""

    retryable = False
    whole_run = False

    def __init__(self, message: str, *, code: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class AccessDenied(BucketError):
    exit_code = ExitCode.CONFIG
    whole_run = True
    default_hint = (
        "Check the access key and secret (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and that "
        "the token may read and write this bucket."
    )


class NoSuchBucket(BucketError):
    exit_code = ExitCode.CONFIG
    whole_run = True
    default_hint = (
        "Create the bucket first (R2 never creates one on upload), or fix bucket_name; "
        "for the embedded stack `r2migrate dev up` creates it."
    )


class CertificateRefused(BucketError):
    """The endpoint's TLS certificate failed verification: a setting (ca_bundle), not a fault
    worth retrying; the hint names the bundle in use and where its value came from."""

    exit_code = ExitCode.CONFIG
    whole_run = True
    default_hint = (
        "Point ca_bundle at the PEM file of the CA that signed the endpoint's certificate."
    )


class ObjectExists(BucketError):
    pass


class ObjectChanged(BucketError):
    default_hint = "The object was replaced after it was checked; it was left untouched."


class DigestMismatch(BucketError):
    default_hint = "The file changed while it was read, or the data was corrupted in transit."


class SourceMoved(DigestMismatch):
    """The file changed before any byte of it was sent: worth another try, as for small files."""

    retryable = True


class FastPutUnsupported(BucketError):
    """fast_put cannot send this request (a header value it does not encode); boto3 sends it."""


class TransientBucketError(BucketError):
    retryable = True


class SourceShort(OSError):
    """The file ended before its region did, so the request was cut off: the source shrank."""


class SourceUnreadable(OSError):
    """Reading the file for a part failed (EIO, ...): a source problem, not a network one."""


class SourceError(ToolkitError):
    retryable = False

    def __init__(self, message: str, *, problem: Problem, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problem = problem


class UnsafePath(SourceError):
    pass


class SourceChanged(SourceError):
    """The file changed between the stat before reading and the stat after: tried again."""

    retryable = True

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, problem=Problem.SOURCE_CHANGED, hint=hint)


class SourceRefused(SourceError):
    """The media server answered 401 or 403: the credentials, not the file, are wrong."""

    exit_code = ExitCode.CONFIG
    default_hint = (
        "Set media_auth_header (R2MIGRATE_MEDIA_AUTH_HEADER='Authorization: Bearer ...') to a "
        "header the application accepts for every media file."
    )


class NotebookFailed(ToolkitError):
    """A cell raised. The executed notebook and report.html were saved before this is raised.

    ``run`` is the notebook's ``NotebookRun`` (notebooks/helpers.py). ``exit_code`` is the one of
    the r2migrate error the cell raised (4 for BatchNotFound, ...), else 1.
    """

    def __init__(
        self,
        message: str,
        *,
        run: Any,
        cell_id: str | None,
        cell_number: int | None,
        ename: str,
        evalue: str,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.run = run
        self.cell_id = cell_id
        self.cell_number = cell_number
        self.ename = ename
        self.evalue = evalue
        cls = globals().get(ename)
        if isinstance(cls, type) and issubclass(cls, ToolkitError):
            self.exit_code = cls.exit_code
        else:
            self.exit_code = ExitCode.FILES_FAILED


class Interrupted(ToolkitError):
    exit_code = ExitCode.INTERRUPTED
    default_hint = "Nothing is lost: resume with `r2migrate run --batch BATCH`."


class FastPutProtocolError(Exception):
    """fast_put: the server's answer is not HTTP/1.1 as we read it; the connection is unusable."""


class FastPutNoResponse(ConnectionError):
    """fast_put: the connection failed before a single response byte arrived."""


class SettingValueError(ValueError):
    """One setting's value cannot be parsed; the loader reports it inside a ConfigError."""


# Ledger rows written before outcomes carried ``retryable`` hold it as a prefix of the code.
LEGACY_RETRYABLE_PREFIX = "transient:"


def split_error_code(stored: str | None) -> tuple[str | None, bool]:
    """A ledger row's error code without the prefix older rows hold, and whether they had it
    (the failure was retryable). New rows store the bare code."""
    if stored is not None and stored.startswith(LEGACY_RETRYABLE_PREFIX):
        return stored.removeprefix(LEGACY_RETRYABLE_PREFIX), True
    return stored, False
