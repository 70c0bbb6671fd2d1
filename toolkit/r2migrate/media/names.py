"""The text rules of a Django file name: what a row's name may be before any disk or URL is
asked, and the file Django would serve for it.

Must never touch the disk, the network or the database: names only.
"""

from __future__ import annotations

import os
import re

from r2migrate.errors import Problem, UnsafePath

__all__ = ["check_name", "media_name"]

_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[/\\]")
_HINT_UNSAFE = (
    "r2migrate reads only files inside MEDIA_ROOT and never follows a symlink out of it; "
    "fix the row's name or the symlink."
)
_HINT_NOT_REGULAR = "Only regular files can be migrated; fix the row or replace the entry."


def media_name(name: str | None) -> str:
    """The file a Django row names today: ``FileSystemStorage.path`` rules, without the disk.

    Django joins MEDIA_ROOT and the name and normalises the result lexically (``safe_join``), so
    ``a//b.txt``, ``./a/b.txt`` and ``a/drafts/../b.txt`` are all the file ``a/b.txt``, whatever
    ``drafts`` is on disk; django-storages' ``clean_name`` normalises the same way, so the key
    names the same file. A trailing '/' is kept (it names a directory; the read refuses it).
    Backslashes are ordinary characters on disk. Refused (``UnsafePath``) with a precise code:
    ``EMPTY_NAME``, ``ABSOLUTE_PATH``, ``TRAVERSAL`` (climbs out, or a '..' between
    backslashes, which django-storages would turn into a climb), ``KEY_INVALID`` (NUL),
    ``NOT_REGULAR_FILE`` (MEDIA_ROOT itself).
    """
    text = check_name(name, allow_dotdot=True)
    cleaned = os.path.normpath(text)
    if cleaned == ".." or cleaned.startswith("../"):
        raise UnsafePath(
            f"{text!r} climbs out of MEDIA_ROOT", problem=Problem.TRAVERSAL, hint=_HINT_UNSAFE
        )
    if cleaned == ".":
        raise UnsafePath(
            f"{text!r} names MEDIA_ROOT itself, not a file under it",
            problem=Problem.NOT_REGULAR_FILE,
            hint=_HINT_NOT_REGULAR,
        )
    return cleaned + "/" if text.endswith("/") else cleaned


def check_name(name: str | None, *, allow_dotdot: bool = False) -> str:
    """``name`` when its text is safe to resolve (not empty, no NUL, not absolute, no ``..``
    segment unless ``allow_dotdot``, spellable as a file name); else ``UnsafePath``."""
    if name is None or not name.strip():
        raise UnsafePath(
            f"empty file name {name!r}",
            problem=Problem.EMPTY_NAME,
            hint="The row holds no file name; fix or delete the row.",
        )
    reason = None
    problem = Problem.TRAVERSAL
    if "\0" in name:
        reason, problem = "contains a NUL byte", Problem.KEY_INVALID
    elif name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        reason, problem = "is absolute", Problem.ABSOLUTE_PATH
    elif ".." in name.split("/") and not allow_dotdot:
        reason = "has a '..' segment"
    elif any(".." in part.split("\\") for part in name.split("/") if "\\" in part):
        reason = "has a '..' segment between backslashes"
    else:
        try:
            os.fsencode(name)
        except UnicodeEncodeError:
            reason = "cannot be spelled as a file name (lone surrogate)"
            problem = Problem.NAME_NOT_UTF8
    if reason is not None:
        raise UnsafePath(f"{name!r} {reason}", problem=problem, hint=_HINT_UNSAFE)
    return name
