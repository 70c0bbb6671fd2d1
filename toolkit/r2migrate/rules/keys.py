"""Pure rules: a Django file name → the object key and headers django-storages' S3Storage uses.

Must not do any I/O, and imports nothing from the package but ``r2migrate.errors``.

Everything here re-implements django-storages 1.14.6 (``storages/utils.py`` ``clean_name`` and
``safe_join``, ``storages/backends/s3.py`` ``S3Storage._normalize_name`` and
``_get_write_parameters``) so the toolkit needs neither Django nor django-storages at runtime;
``tests/test_keys.py`` compares both against the real ``S3Storage`` with Hypothesis.

Behaviour of django-storages worth knowing, kept here on purpose:

- Backslashes become ``/`` only *after* ``posixpath.normpath`` in ``clean_name``, so ``a\\..\\b`` is
  not normalised there; ``safe_join`` normalises it again and the key is ``b``.
- With an empty ``location`` nothing can escape: ``../a`` and ``/a`` both become ``a`` (a rooted
  path swallows ``..``). Only a non-empty location makes ``..`` raise, and there a leading
  slash raises too (``/a`` replaces the location in ``posixpath.join``). Refusing names that
  escape ``MEDIA_ROOT`` on disk is ``source.py``'s job, not ours.
- ``location`` is used as given apart from trailing slashes: a location that is not already
  normalised (``media//x``, ``./media``) makes *every* name raise ``SuspiciousOperation``, and one
  with a leading slash is refused when the storage is built.
- No Unicode normalisation: NFC and NFD spellings give different keys, exactly as django-storages
  asks for them. ``key_problems`` flags non-NFC keys because R2 folds the two spellings together.
"""

from __future__ import annotations

import mimetypes
import posixpath
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from r2migrate.errors import ConfigError, Problem, UnsafePath

__all__ = [
    "MAX_KEY_BYTES",
    "ContentHeaders",
    "content_headers_for",
    "escape_name",
    "is_gzip_trap",
    "key_problems",
    "normalization_form",
    "object_key_for",
    "printable_name",
    "unescape_name",
]

MAX_KEY_BYTES = 1024
"""Largest object key S3 and R2 accept, in bytes of UTF-8."""

DEFAULT_CONTENT_TYPE = "application/octet-stream"  # S3Storage.default_content_type


def _clean_name(name: str) -> str:
    """``storages.utils.clean_name``, step for step."""
    # normpath runs before the backslash replacement, so '\\..\\' survives this step.
    cleaned = posixpath.normpath(name).replace("\\", "/")
    if name.endswith("/") and not cleaned.endswith("/"):
        cleaned += "/"
    if cleaned == ".":
        cleaned = ""
    return cleaned


def _safe_join(base: str, path: str) -> str:
    """``storages.utils.safe_join`` for one path; ``ValueError`` where it raises one."""
    base_path = base.rstrip("/")
    final_path = base_path + "/"
    joined = posixpath.normpath(posixpath.join(final_path, path))
    # normpath strips the trailing '/', which marks a "directory" name; put it back.
    if path.endswith("/") or joined + "/" == final_path:
        joined += "/"
    final_path = joined
    if final_path == base_path:
        final_path += "/"
    if not final_path.startswith(base_path) or final_path[len(base_path)] != "/":
        raise ValueError("the joined path is located outside of the base path component")
    return final_path.lstrip("/")


def object_key_for(name: str, *, location: str = "") -> str:
    """The object key ``S3Storage(location=location)`` reads and writes for a stored name.

    This is ``storage._normalize_name(clean_name(name))``, which ``_open``, ``exists``, ``url``,
    ``size``, ``delete`` and ``_save`` all use. A row's existing name never goes through
    ``get_available_name`` again (that happens only when Django saves a new upload), so this is
    the key django-storages will look up after the switch.

    Raises ``UnsafePath`` (problem ``TRAVERSAL``, or ``ABSOLUTE_PATH`` for a rooted name) where
    django-storages raises ``SuspiciousOperation``: the name leaves ``location``. Raises
    ``ConfigError`` for a location starting with '/', which ``S3Storage`` refuses with
    ``ImproperlyConfigured``.
    """
    if location.startswith("/"):
        raise ConfigError(
            f"location cannot begin with a leading slash: {location!r}",
            hint=f"Use location = {location.lstrip('/')!r} (django-storages refuses it too).",
        )
    cleaned = _clean_name(name)
    try:
        return _safe_join(location, cleaned)
    except ValueError:
        raise UnsafePath(
            f"{name!r} leaves the storage location {location!r}",
            problem=Problem.ABSOLUTE_PATH if cleaned.startswith("/") else Problem.TRAVERSAL,
            hint="django-storages would refuse this name (SuspiciousOperation); fix the row.",
        ) from None


def key_problems(key: str) -> tuple[Problem, ...]:
    """What makes ``key`` unusable or risky as an object key, in ``Problem`` declaration order.

    ``KEY_TOO_LONG``: above ``MAX_KEY_BYTES`` of UTF-8 (a lone surrogate counted as 3 bytes).
    ``KEY_INVALID``: empty, or a NUL character (no file system or HTTP header can carry one).
    ``NAME_NOT_UTF8``: a lone surrogate, which is how Python spells a byte that is not UTF-8.
    ``CONTROL_CHARACTERS`` (a warning): tab, newline, ... (C0, DEL, C1); S3, R2 and
    django-storages handle them, so they migrate, but every place that prints them escapes them.
    ``NOT_NFC``: the NFC spelling differs; R2 would treat it as the same key as its NFC twin.
    """
    if key and key.isascii() and key.isprintable():  # most keys: one C pass decides all
        return (Problem.KEY_TOO_LONG,) if len(key) > MAX_KEY_BYTES else ()
    found: set[Problem] = set()
    if not key or "\0" in key:
        found.add(Problem.KEY_INVALID)
    if any(_is_surrogate(ch) for ch in key):
        found.add(Problem.NAME_NOT_UTF8)
    if any(_is_control(ch) for ch in key if ch != "\0"):
        found.add(Problem.CONTROL_CHARACTERS)
    # 'surrogatepass' so an unencodable key still gets a length verdict instead of an exception.
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        found.add(Problem.KEY_TOO_LONG)
    if normalization_form(key) != key:
        found.add(Problem.NOT_NFC)
    return tuple(p for p in Problem if p in found)


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


def _is_surrogate(ch: str) -> bool:
    return 0xD800 <= ord(ch) <= 0xDFFF


def escape_name(name: str) -> str:
    """A name read from disk (``os.fsdecode``) as valid text that can be turned back losslessly.

    Each byte that is not UTF-8 (Python's surrogate escape U+DC80..U+DCFF) becomes ``\\xNN`` and
    a backslash becomes ``\\\\``; nothing else changes. Only names flagged ``NAME_NOT_UTF8`` are
    stored this way (the flag says how to read them back), so every other name stays as spelled.
    """
    out = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif _is_surrogate(ch):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_name(text: str) -> str:
    """``escape_name`` reversed: the ``os.fsdecode`` spelling (``os.fsencode`` gives the bytes)."""
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1 : i + 2] == "\\":
            out.append("\\")
            i += 2
        elif ch == "\\" and text[i + 1 : i + 2] == "x":
            out.append(chr(0xDC00 + int(text[i + 2 : i + 4], 16)))
            i += 4
        elif ch == "\\" and text[i + 1 : i + 2] == "u":
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_CONTROL_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable_name(name: str | None) -> str:
    """A name as a terminal, a log line or a CSV cell shows it: one line, nothing invisible.

    Control characters become ``\\t``, ``\\n``, ``\\r`` or ``\\xNN`` and bytes that are not UTF-8
    become ``\\xNN`` (``caf\\xe9 latin1.txt``); everything else, backslashes included, is shown
    as it is. For display only: ``escape_name`` is the lossless form.
    """
    if name is None:
        return ""
    out = []
    for ch in name:
        code = ord(ch)
        if ch in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[ch])
        elif _is_control(ch):
            out.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif _is_surrogate(ch):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def normalization_form(name: str) -> str:
    """The NFC spelling of ``name``: equal for two rows that R2 would store as one object."""
    return unicodedata.normalize("NFC", name)


@dataclass(frozen=True)
class ContentHeaders:
    """The object parameters django-storages' ``_save`` would send, split for reading.

    ``extra`` holds every other entry of ``AWS_S3_OBJECT_PARAMETERS`` (``CacheControl``,
    ``ContentDisposition``, ...), read-only, keyed by boto3's ``ExtraArgs`` names.
    """

    content_type: str
    content_encoding: str | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def as_params(self) -> dict[str, str]:
        """The boto3 ``ExtraArgs`` dict, equal to ``S3Storage._get_write_parameters``'s result."""
        params = dict(self.extra)
        params["ContentType"] = self.content_type
        if self.content_encoding is not None:
            params["ContentEncoding"] = self.content_encoding
        return params


def content_headers_for(
    name: str,
    *,
    location: str = "",
    object_parameters: Mapping[str, str] | None = None,
    default_content_type: str = DEFAULT_CONTENT_TYPE,
) -> ContentHeaders:
    """Content type and encoding ``S3Storage._save`` sends for ``name`` (gzip off, no ACL).

    ``object_parameters`` is ``AWS_S3_OBJECT_PARAMETERS``. When it has no ``ContentType``, the type
    and encoding come from ``mimetypes.guess_type`` on the object key (``_save`` guesses on the
    key, location included), so ``photo.txt.gz`` gets ``text/plain`` + ``gzip``, ``x.tar.gz`` and
    ``x.tgz`` get ``application/x-tar`` + ``gzip``, and an unknown extension gets
    ``default_content_type``. The file is treated as a plain ``File`` (no browser-supplied
    ``content_type``), which is what a file saved from disk looks like to django-storages.

    The guess uses the stdlib module-level ``mimetypes`` database, as django-storages does, so it
    depends on the host's MIME tables (``/etc/mime.types`` and friends): run the migration where
    the tables match the Django host's, or pin ``ContentType`` in ``object_parameters``.

    Raises ``UnsafePath`` like ``object_key_for``. ``name`` may also be a key already computed by
    ``object_key_for``, passed with the default empty location: for a location without
    backslashes or empty, '.' or '..' segments the key of a key is the key itself.
    """
    key = object_key_for(name, location=location)
    params = dict(object_parameters or {})
    content_type = params.pop("ContentType", None)
    content_encoding = params.pop("ContentEncoding", None)
    if content_type is None:
        guessed_type, guessed_encoding = mimetypes.guess_type(key)
        content_type = guessed_type or default_content_type
        # django-storages only replaces ContentEncoding when the guess found one.
        if guessed_encoding:
            content_encoding = guessed_encoding
    return ContentHeaders(
        content_type=content_type,
        content_encoding=content_encoding,
        extra=MappingProxyType(params),
    )


def is_gzip_trap(
    name: str,
    *,
    location: str = "",
    object_parameters: Mapping[str, str] | None = None,
) -> bool:
    """True when django-storages would set Content-Encoding for this name.

    Clients then decode the body on download (``gzip``, ``br``) or mislabel it (``bzip2``, ``xz``,
    ``compress``), so the user gets other bytes than the ones uploaded. Flag it as
    ``Problem.GZIP_ENCODING``. Raises ``UnsafePath`` like ``object_key_for``.
    """
    headers = content_headers_for(name, location=location, object_parameters=object_parameters)
    return headers.content_encoding is not None
