"""Originals and their renditions, written as Wagtail and easy-thumbnails write them.

Never used outside tests. A rendition's name comes from its original's base name and the spec,
converted to JPEG (``images/<stem>.<spec>.jpg``): two originals ``cat.png`` and ``cat.gif`` ask
for the same rendition name, and so does a later upload of another ``cat.png``. The storage's
``get_available_name`` decides what happens then: FileSystemStorage (and S3Storage with
``file_overwrite=False``) picks a free name; S3Storage with ``file_overwrite=True`` writes over
the existing object, so another image's rendition (or original) is served from then on.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

from django.core.files.base import ContentFile
from django.db import models
from PIL import Image


class Photo(models.Model):
    title = models.CharField(max_length=100, blank=True)
    file = models.ImageField(upload_to="original_images", max_length=255)


class Rendition(models.Model):
    photo = models.ForeignKey(Photo, on_delete=models.CASCADE, related_name="renditions")
    spec = models.CharField(max_length=50)
    file = models.ImageField(upload_to="images", max_length=255)


def render(photo: Photo, spec: str = "fill-8x8") -> Rendition:
    """Make a rendition of ``photo`` through the default storage, as an image library does."""
    width = int(spec.rsplit("-", 1)[1].split("x")[0])
    with photo.file.open("rb") as fh:
        image = Image.open(fh)
        image.load()
    out = io.BytesIO()
    image.convert("RGB").resize((width, width)).save(out, format="JPEG", quality=90)
    stem = PurePosixPath(photo.file.name).stem
    rendition = Rendition(photo=photo, spec=spec)
    rendition.file.save(f"{stem}.{spec}.jpg", ContentFile(out.getvalue()), save=True)
    return rendition
