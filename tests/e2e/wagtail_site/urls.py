"""The e2e site's URLs: Wagtail's document view, and MEDIA_URL served from MEDIA_ROOT (before the
switch; what a web server in front of the site does)."""

from django.conf import settings
from django.urls import include, path, re_path
from django.views.static import serve
from wagtail.documents import urls as wagtaildocs_urls

urlpatterns = [
    path("documents/", include(wagtaildocs_urls)),
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
]
