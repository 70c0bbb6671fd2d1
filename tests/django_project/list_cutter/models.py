"""``SavedFile`` shaped like the original ``list_cutter_savedfile``, and ``ProfileImage``.

Never used outside tests. ``SavedFile`` carries the write-back columns through the adapter's
``R2MigrationFields`` mixin, as a project that wants them would.
"""

from django.db import models

from r2migrate.django.models import R2MigrationFields


def user_directory_path(instance: "SavedFile", filename: str) -> str:
    """A callable upload_to, nested per user, as the original system's."""
    return f"uploads/user_{instance.user_id}/{filename}"


class SavedFile(R2MigrationFields, models.Model):
    user_id = models.IntegerField(default=1)
    file_id = models.CharField(max_length=64, blank=True)
    file_name = models.CharField(max_length=255)
    file_path = models.FileField(upload_to=user_directory_path, max_length=500)
    uploaded_at = models.DateTimeField(auto_now_add=True)
    system_tags = models.JSONField(default=list, blank=True)
    user_tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "list_cutter_savedfile"


class ProfileImage(models.Model):
    caption = models.CharField(max_length=100, blank=True)
    image = models.ImageField(upload_to="avatars/%Y/%m/", max_length=300)
