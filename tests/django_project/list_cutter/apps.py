"""App config of the test app (label ``list_cutter``, as the original system's)."""

from django.apps import AppConfig


class ListCutterConfig(AppConfig):
    name = "tests.django_project.list_cutter"
    label = "list_cutter"
