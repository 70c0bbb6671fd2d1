"""What the e2e test does inside the Wagtail site: populate it, and check that it serves every file.

Never run outside tests/e2e/test_wagtail.py; run as ``python site_ops.py populate|check|after``
in the site's folder, with the site's environment. Every file is created and read the way the site
does it: Wagtail's models, ``get_rendition``, and the document serving view. The result is JSON
on stdout.

- ``populate``: images (same names, Unicode, spaces, PNG/JPEG/GIF), two renditions of each (one
  converted to WebP), documents (same names, a ``.csv.gz``); writes ``manifest.json`` with the
  SHA-256 of every file as FileSystemStorage serves it.
- ``check``: every file of the manifest, read through the model's FieldFile and fetched from the
  URL the site hands out (the storage's URL for images and renditions; the document view's
  redirect for documents), must hash as in the manifest.
- ``after``: the site at work after the switch: new renditions of ten images, and a same-named
  image and document upload; then ``check`` again, plus the new files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
django.setup()

from django.core.files.base import ContentFile  # noqa: E402
from django.core.files.images import ImageFile  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from wagtail.documents.models import Document  # noqa: E402
from wagtail.images.models import Image, Rendition  # noqa: E402

MANIFEST = Path("manifest.json")
SPECS = ("fill-80x80", "max-120x120|format-webp")


def _picture(n: int, fmt: str) -> bytes:
    out = io.BytesIO()
    side = 60 + (n * 7) % 140
    color = ((n * 53) % 256, (n * 97) % 256, (n * 193) % 256)
    PILImage.new("RGB", (side, side + n % 5), color).save(out, format=fmt)
    return out.getvalue()


def _image_names() -> list[tuple[str, str]]:
    names = [("photo.jpg", "JPEG")] * 4 + [
        ("café crème.png", "PNG"),
        ("Ünïcode ñame.jpg", "JPEG"),
        ("banner wide.png", "PNG"),
        ("scan.gif", "GIF"),
        ("日本の写真.jpg", "JPEG"),
        ("logo.png", "PNG"),
    ]
    names += [(f"IMG_{n:04d}.jpg", "JPEG") for n in range(40)]
    return names


def _doc_bodies() -> list[tuple[str, bytes]]:
    docs = [
        ("report.pdf", b"%PDF-1.4 first report\n" * 30),
        ("report.pdf", b"%PDF-1.4 second report, same name\n" * 20),
        ("résumé.pdf", b"%PDF-1.4 resume\n" * 10),
        ("notes.txt", "plain notes ✓\n".encode() * 5),
        ("data.csv.gz", gzip.compress(b"a,b\n1,2\n" * 200, mtime=0)),
        ("handbook (final).docx", os.urandom(40_000)),
    ]
    docs += [(f"minutes-{n:02d}.txt", f"minutes {n}\n".encode() * (n + 1)) for n in range(8)]
    return docs


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(field: Any) -> bytes:
    with field.open("rb") as fh:
        return bytes(fh.read())


def _entry(kind: str, obj: Any) -> dict[str, Any]:
    return {"kind": kind, "pk": obj.pk, "name": obj.file.name, "sha256": _sha(_read(obj.file))}


def _upload_image(n: int, name: str, fmt: str) -> Image:
    image = Image(title=f"image {n}", file=ImageFile(io.BytesIO(_picture(n, fmt)), name=name))
    image.save()
    return image


def _upload_document(n: int, name: str, body: bytes) -> Document:
    document = Document(title=f"document {n}", file=ContentFile(body, name=name))
    document.save()
    return document


def populate() -> dict[str, Any]:
    entries = []
    for n, (name, fmt) in enumerate(_image_names()):
        image = _upload_image(n, name, fmt)
        entries.append(_entry("image", image))
        for spec in SPECS:
            entries.append(_entry("rendition", image.get_rendition(spec)))
    for n, (name, body) in enumerate(_doc_bodies()):
        entries.append(_entry("document", _upload_document(n, name, body)))
    MANIFEST.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    kinds = [e["kind"] for e in entries]
    return {k: kinds.count(k) for k in ("image", "rendition", "document")}


def _fetch(url: str, client: Client) -> bytes:
    """GET what a browser would: a bucket URL directly, a site URL through the site."""
    if not url.startswith(("http://", "https://")):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return b"".join(response.streaming_content)
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def _served_by_url(kind: str, obj: Any, client: Client) -> bytes:
    if kind != "document":
        return _fetch(obj.file.url, client)
    response = client.get(reverse("wagtaildocs_serve", args=(obj.pk, obj.filename)))
    if response.status_code in (301, 302):
        return _fetch(response["Location"], client)
    assert response.status_code == 200, response.status_code
    return b"".join(response.streaming_content)


def check(entries: list[dict[str, Any]]) -> dict[str, Any]:
    models = {"image": Image, "rendition": Rendition, "document": Document}
    client = Client()
    bad = []
    for e in entries:
        obj = models[e["kind"]].objects.get(pk=e["pk"])
        if obj.file.name != e["name"]:
            bad.append({**e, "why": f"the row now names {obj.file.name!r}"})
            continue
        for how, data in (
            ("field", _read(obj.file)),
            ("url", _served_by_url(e["kind"], obj, client)),
        ):
            if _sha(data) != e["sha256"]:
                bad.append({**e, "why": f"{how}: {len(data)} bytes hashing to {_sha(data)}"})
    return {"checked": len(entries), "bad": bad}


def after() -> dict[str, Any]:
    entries = json.loads(MANIFEST.read_text(encoding="utf-8"))
    new = []
    for image in Image.objects.order_by("pk")[:10]:
        new.append(_entry("rendition", image.get_rendition("fill-30x30")))
    new.append(_entry("image", _upload_image(999, "photo.jpg", "JPEG")))
    new.append(_entry("document", _upload_document(999, "report.pdf", b"%PDF-1.4 after\n")))
    taken = {e["name"] for e in entries}
    return {
        "old": check(entries),
        "new": check(new),
        "new_names_taken": sorted(e["name"] for e in new if e["name"] in taken),
        "new_objects": len(new),
    }


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "populate":
        result = populate()
    elif command == "check":
        result = check(json.loads(MANIFEST.read_text(encoding="utf-8")))
    else:
        result = after()
    print(json.dumps(result))
