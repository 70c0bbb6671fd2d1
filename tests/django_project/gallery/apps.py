"""App config of the image-library test app (label ``gallery``)."""

from django.apps import AppConfig


class GalleryConfig(AppConfig):
    name = "tests.django_project.gallery"
    label = "gallery"
