"""keys.py against the real django-storages S3Storage (no network: only its pure methods run).

What we compare is what S3Storage computes for a row's existing name: ``_open``, ``exists``,
``url``, ``size`` and ``_save`` all use ``_normalize_name(clean_name(name))`` and ``_save`` sends
``_get_write_parameters(key)``. ``Storage.save`` also calls ``get_available_name`` first, but only
for a new upload; a migrated row keeps its name, and for names ``get_available_name`` accepts it
changes nothing the key depends on (checked below).
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections.abc import Mapping

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.utils.encoding import filepath_to_uri
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

from r2migrate.errors import ConfigError, Problem, UnsafePath
from r2migrate.rules.keys import (
    MAX_KEY_BYTES,
    ContentHeaders,
    content_headers_for,
    escape_name,
    is_gzip_trap,
    key_problems,
    normalization_form,
    object_key_for,
    printable_name,
    unescape_name,
)

# S3Storage reads its defaults from Django settings; none of them matter here (every setting the
# key or headers depend on is passed explicitly below), but they must be configured.
if not django_settings.configured:
    django_settings.configure(USE_TZ=True)

RAISES = object()  # what either side returns where the name is refused

NFC_E = "\u00e9"  # é as one code point
NFD_E = "e\u0301"  # é as e + combining acute

SEGMENTS = st.sampled_from(
    [
        "a",
        "b",
        "file name.txt",
        " ",
        ".",
        "..",
        "...",
        "",
        f"caf{NFC_E}.png",
        f"caf{NFD_E}.png",
        "日本語.pdf",
        "x.gz",
        "x.tar.gz",
        "a\\b",
        "\\..\\",
        "..\\x",
        "media",
        "uploads",
        "~",
        "data:image",
    ]
)
SEPARATORS = st.sampled_from(["/", "//", "\\", "/./", "/../"])


@st.composite
def names(draw: st.DrawFn) -> str:
    """Path-like names: segments, odd separators, leading and trailing slashes."""
    parts = draw(st.lists(SEGMENTS, max_size=6))
    seps = draw(st.lists(SEPARATORS, min_size=len(parts), max_size=len(parts)))
    body = "".join(sep + part for sep, part in zip(seps, parts, strict=True))
    if not draw(st.booleans()):
        body = body.lstrip("/\\")
    lead = draw(st.sampled_from(["", "/", "//", "///", "./", "../", "\\"]))
    trail = draw(st.sampled_from(["", "/", "//", "\\", "/.", "/.."]))
    return lead + body + trail


ANY_NAMES = st.one_of(names(), st.text(), st.text(alphabet="/\\.a é"))

LOCATIONS = st.one_of(
    st.sampled_from(
        [
            "",
            "media",
            "media/",
            "media//",
            "media/uploads",
            "media/uploads/",
            "a b",
            f"m{NFC_E}dia",
            f"m{NFD_E}dia",
            "media//uploads",
            "./media",
            "media/..",
            ".",
            "..",
            "me",  # a prefix of 'media': 'media/x' must not count as inside 'me'
        ]
    ),
    st.text(alphabet="ab./\\ ").filter(lambda s: not s.startswith("/")),
)


@functools.cache
def storage(location: str) -> S3Storage:
    return S3Storage(
        bucket_name="b",
        location=location,
        object_parameters={},
        gzip=False,
        default_acl=None,
        file_overwrite=True,
        custom_domain="cdn.example",
        querystring_auth=False,
    )


def storages_key(name: str, location: str) -> object:
    try:
        return storage(location)._normalize_name(clean_name(name))
    except SuspiciousOperation:
        return RAISES


def our_key(name: str, location: str) -> object:
    try:
        return object_key_for(name, location=location)
    except UnsafePath as exc:
        # Anything but the two escape codes would make the comparison with RAISES fail.
        return RAISES if exc.problem in (Problem.TRAVERSAL, Problem.ABSOLUTE_PATH) else exc.problem


# --- object_key_for against S3Storage ------------------------------------------------------


@settings(max_examples=1000)
@given(name=ANY_NAMES, location=LOCATIONS)
@example(name="a\\..\\b", location="")
@example(name="../etc/passwd", location="")
@example(name="../etc/passwd", location="media")
@example(name="/etc/passwd", location="media")
@example(name="media/../../x", location="media")
@example(name="//a", location="")
@example(name="x", location="media//uploads")
@example(name="", location="media")
@example(name=".", location="media/")
@example(name="dir/", location="media")
@example(name=f"caf{NFD_E}.png", location=f"m{NFC_E}dia")
def test_object_key_matches_s3storage(name: str, location: str) -> None:
    assert our_key(name, location) == storages_key(name, location)


@given(name=names(), location=LOCATIONS)
def test_object_key_is_what_url_reads(name: str, location: str) -> None:
    """The public read path (url with a custom domain) asks for the same key."""
    key = our_key(name, location)
    try:
        url = storage(location).url(name)
    except SuspiciousOperation:
        assert key is RAISES
        return
    assert isinstance(key, str)
    assert url == f"https://cdn.example/{filepath_to_uri(key)}"


@given(name=names(), location=LOCATIONS)
def test_get_available_name_does_not_change_the_key(name: str, location: str) -> None:
    """Storage.save runs get_available_name first; for names it accepts the key is the same."""
    try:
        available = storage(location).get_available_name(name)
    except SuspiciousOperation:
        assume(False)
        return
    assert storages_key(available, location) == our_key(name, location)


def is_plain_location(location: str) -> bool:
    """No backslash (kept as is in a location) and no '', '.' or '..' segment."""
    parts = location.rstrip("/").split("/")
    return location == "" or ("\\" not in location and not {"", ".", ".."} & set(parts))


@given(name=ANY_NAMES, location=LOCATIONS)
def test_key_of_a_key_is_the_key(name: str, location: str) -> None:
    key = our_key(name, location)
    if not is_plain_location(location):
        return
    assume(isinstance(key, str))
    assert isinstance(key, str)
    assert object_key_for(key) == key


@given(name=st.text())
def test_no_unicode_normalisation_of_our_own(name: str) -> None:
    nfd = unicodedata.normalize("NFD", name)
    key = our_key(nfd, "")
    if isinstance(key, str):
        assert unicodedata.normalize("NFD", key) == key


@pytest.mark.parametrize(
    ("name", "location", "key"),
    [
        ("photos/a b.jpg", "", "photos/a b.jpg"),
        ("photos/a b.jpg", "media", "media/photos/a b.jpg"),
        ("photos/a b.jpg", "media/", "media/photos/a b.jpg"),
        ("photos/a b.jpg", "media/uploads//", "media/uploads/photos/a b.jpg"),
        ("/photos/a.jpg", "", "photos/a.jpg"),
        ("./photos/./a.jpg", "", "photos/a.jpg"),
        ("photos\\a.jpg", "", "photos/a.jpg"),
        ("a\\..\\b", "", "b"),  # backslashes turn into '/' after normpath; safe_join resolves '..'
        ("../x", "", "x"),  # nothing above an empty location: '..' is swallowed, not refused
        ("//x", "", "x"),
        ("dir/", "media", "media/dir/"),
        ("", "media", "media/"),
        ("", "", ""),
        (f"caf{NFD_E}.png", "", f"caf{NFD_E}.png"),
        (f"caf{NFC_E}.png", "", f"caf{NFC_E}.png"),
        ("x", "a\\b", "a\\b/x"),  # backslashes in the location are kept
        ("", ".", "./"),  # a '.' location keys only the empty name; every other name raises
    ],
)
def test_object_key_examples(name: str, location: str, key: str) -> None:
    assert object_key_for(name, location=location) == key
    assert storages_key(name, location) == key


@pytest.mark.parametrize(
    ("name", "location"),
    [
        ("../x", "media"),
        ("a/../../x", "media"),
        ("..\\x", "media"),
        ("/photos/a.jpg", "media"),  # a rooted name replaces the location in posixpath.join
        ("x", "media//uploads"),  # an un-normalised location refuses every name
        ("x", "./media"),
    ],
)
def test_escaping_names_raise_traversal_or_absolute_path(name: str, location: str) -> None:
    with pytest.raises(UnsafePath) as info:
        object_key_for(name, location=location)
    rooted = name.startswith("/")
    assert info.value.problem is (Problem.ABSOLUTE_PATH if rooted else Problem.TRAVERSAL)
    assert storages_key(name, location) is RAISES


def test_location_with_leading_slash_is_a_config_error() -> None:
    with pytest.raises(ImproperlyConfigured):
        S3Storage(bucket_name="b", location="/media")
    with pytest.raises(ConfigError, match="leading slash"):
        object_key_for("x", location="/media")


# --- content headers against S3Storage -----------------------------------------------------

OBJECT_PARAMETERS: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}),
    st.dictionaries(
        st.sampled_from(["ContentType", "ContentEncoding", "CacheControl", "ContentDisposition"]),
        st.sampled_from(["text/plain", "gzip", "max-age=86400", "attachment", ""]),
    ),
)
SUFFIXES = st.sampled_from(
    [
        "",
        ".txt",
        ".gz",
        ".txt.gz",
        ".tar.gz",
        ".tgz",
        ".svgz",
        ".bz2",
        ".xz",
        ".br",
        ".Z",
        ".GZ",
        ".JPG",
        ".png",
        ".css",
        ".js",
        ".nosuchext",
        ".tar",
        ".",
    ]
)


def storages_params(name: str, location: str, object_parameters: Mapping[str, str]) -> object:
    s3 = S3Storage(bucket_name="b", location=location, object_parameters=dict(object_parameters))
    try:
        key = s3._normalize_name(clean_name(name))
    except SuspiciousOperation:
        return RAISES
    # _save: params = self._get_write_parameters(name, content) with the normalised key; the gzip
    # branch after it is off. content=None is a plain File: no browser-supplied content_type.
    return s3._get_write_parameters(key)


def our_params(name: str, location: str, object_parameters: Mapping[str, str]) -> object:
    try:
        headers = content_headers_for(name, location=location, object_parameters=object_parameters)
    except UnsafePath:
        return RAISES
    return headers.as_params()


@given(
    stem=names(),
    suffix=SUFFIXES,
    location=LOCATIONS,
    object_parameters=OBJECT_PARAMETERS,
)
@example(stem="data:image/png;base64,xx", suffix="", location="", object_parameters={})
@example(stem="data:image/png;base64,xx", suffix="", location="m", object_parameters={})
def test_content_headers_match_s3storage(
    stem: str, suffix: str, location: str, object_parameters: dict[str, str]
) -> None:
    name = stem + suffix
    assert our_params(name, location, object_parameters) == storages_params(
        name, location, object_parameters
    )


@given(stem=names(), suffix=SUFFIXES, location=LOCATIONS)
def test_gzip_trap_is_content_encoding(stem: str, suffix: str, location: str) -> None:
    params = storages_params(stem + suffix, location, {})
    assume(isinstance(params, dict))
    assert isinstance(params, dict)
    assert is_gzip_trap(stem + suffix, location=location) == ("ContentEncoding" in params)


def test_gz_gets_gzip_encoding_and_default_type() -> None:
    headers = content_headers_for("backups/dump.gz")
    assert headers == ContentHeaders("application/octet-stream", "gzip")
    assert is_gzip_trap("backups/dump.gz")


def test_tar_gz_gets_inner_type() -> None:
    assert content_headers_for("a.tar.gz") == ContentHeaders("application/x-tar", "gzip")
    assert content_headers_for("a.tgz") == ContentHeaders("application/x-tar", "gzip")
    assert content_headers_for("notes.txt.gz") == ContentHeaders("text/plain", "gzip")
    assert is_gzip_trap("a.tar.gz")


def test_plain_names_are_not_traps() -> None:
    assert content_headers_for("a.png") == ContentHeaders("image/png", None)
    assert not is_gzip_trap("a.png")
    assert not is_gzip_trap("gz")


def test_unknown_extension_gets_default_type() -> None:
    assert content_headers_for("a.nosuchext").content_type == "application/octet-stream"
    assert content_headers_for("noext").content_type == "application/octet-stream"
    custom = content_headers_for("a.nosuchext", default_content_type="binary/x")
    assert custom.content_type == "binary/x"


def test_object_parameters_content_type_overrides_guess() -> None:
    params = {"ContentType": "text/plain", "CacheControl": "max-age=60"}
    headers = content_headers_for("a.tar.gz", object_parameters=params)
    # No guess at all: the '.gz' encoding is not set either, so no trap.
    assert headers == ContentHeaders("text/plain", None, {"CacheControl": "max-age=60"})
    assert headers.extra == {"CacheControl": "max-age=60"}
    assert not is_gzip_trap("a.tar.gz", object_parameters=params)
    assert headers.as_params() == storages_params("a.tar.gz", "", params)


def test_object_parameters_encoding_kept_unless_guessed() -> None:
    params = {"ContentEncoding": "identity"}
    assert content_headers_for("a.png", object_parameters=params).content_encoding == "identity"
    assert content_headers_for("a.gz", object_parameters=params).content_encoding == "gzip"


def test_content_headers_extra_is_read_only() -> None:
    params = {"CacheControl": "no-cache"}
    headers = content_headers_for("a.png", object_parameters=params)
    params["CacheControl"] = "changed"
    assert headers.extra["CacheControl"] == "no-cache"
    with pytest.raises(TypeError):
        headers.extra["CacheControl"] = "x"  # type: ignore[index]
    assert hash(headers) == hash(ContentHeaders("image/png", None))


def test_content_headers_of_escaping_name_raise() -> None:
    with pytest.raises(UnsafePath):
        content_headers_for("../x.gz", location="media")


# --- key_problems --------------------------------------------------------------------------


def test_1024_byte_key_is_fine_and_1025_is_too_long() -> None:
    assert key_problems("a" * MAX_KEY_BYTES) == ()
    assert key_problems("a" * (MAX_KEY_BYTES + 1)) == (Problem.KEY_TOO_LONG,)


def test_key_length_counts_utf8_bytes() -> None:
    two_byte = NFC_E  # 2 bytes in UTF-8
    assert key_problems(two_byte * 512) == ()
    assert key_problems(two_byte * 512 + "a") == (Problem.KEY_TOO_LONG,)
    assert key_problems("日" * 341 + "a") == ()  # 1024 bytes
    assert key_problems("日" * 342) == (Problem.KEY_TOO_LONG,)  # 1026 bytes


@pytest.mark.parametrize("char", ["\x01", "\t", "\n", "\r", "\x1f", "\x7f", "\x80", "\x9f"])
def test_control_characters_are_a_warning(char: str) -> None:
    assert key_problems(f"a{char}b.txt") == (Problem.CONTROL_CHARACTERS,)
    assert not Problem.CONTROL_CHARACTERS.blocking


def test_nul_is_invalid() -> None:
    assert key_problems("a\x00b.txt") == (Problem.KEY_INVALID,)


@pytest.mark.parametrize("char", [" ", "~", "\xa0", "\u200b", "\U0001f600"])
def test_printable_and_non_ascii_characters_are_fine(char: str) -> None:
    assert key_problems(f"a{char}b.txt") == ()


def test_empty_key_is_invalid() -> None:
    assert key_problems("") == (Problem.KEY_INVALID,)


def test_lone_surrogate_is_not_utf8() -> None:
    assert key_problems("a\udcff.txt") == (Problem.NAME_NOT_UTF8,)
    assert key_problems("\ud800" * 342) == (Problem.KEY_TOO_LONG, Problem.NAME_NOT_UTF8)


def test_nfd_is_flagged_not_nfc() -> None:
    assert key_problems(f"caf{NFD_E}.png") == (Problem.NOT_NFC,)
    assert key_problems(f"caf{NFC_E}.png") == ()
    assert normalization_form(f"caf{NFD_E}.png") == f"caf{NFC_E}.png"


def test_problems_combine_in_declaration_order() -> None:
    key = "\x00\t" + NFD_E * 400
    assert key_problems(key) == (
        Problem.KEY_TOO_LONG,
        Problem.KEY_INVALID,
        Problem.CONTROL_CHARACTERS,
        Problem.NOT_NFC,
    )


@given(key=st.text(max_size=1100))
def test_key_problems_agree_with_their_definitions(key: str) -> None:
    problems = key_problems(key)
    assert (Problem.KEY_TOO_LONG in problems) == (
        len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
    )
    assert (Problem.NOT_NFC in problems) == (unicodedata.normalize("NFC", key) != key)
    try:
        key.encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    has_control = any(unicodedata.category(c) == "Cc" and c != "\x00" for c in key)
    assert (Problem.KEY_INVALID in problems) == (not key or "\x00" in key)
    assert (Problem.CONTROL_CHARACTERS in problems) == has_control
    assert (Problem.NAME_NOT_UTF8 in problems) == (not encodable)
    assert len(set(problems)) == len(problems)


@given(raw=st.binary(max_size=60))
def test_escaped_names_turn_back_into_their_bytes(raw: bytes) -> None:
    name = os.fsdecode(raw)
    escaped = escape_name(name)
    escaped.encode("utf-8")  # valid text for PostgreSQL, CSV and JSON
    assert os.fsencode(unescape_name(escaped)) == raw


def test_printable_names_are_one_line_and_escaped() -> None:
    assert printable_name(os.fsdecode(b"caf\xe9 latin1.txt")) == "caf\\xe9 latin1.txt"
    assert printable_name("a\tb\nc\x1b.txt") == "a\\tb\\nc\\x1b.txt"
    assert printable_name("résumé.pdf") == "résumé.pdf"


@given(name=st.text())
def test_normalization_form_is_nfc_and_idempotent(name: str) -> None:
    nfc = normalization_form(name)
    assert nfc == unicodedata.normalize("NFC", name)
    assert normalization_form(nfc) == nfc
    assert normalization_form(unicodedata.normalize("NFD", name)) == nfc
