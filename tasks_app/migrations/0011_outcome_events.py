"""Issue 13, item 5: history without a separate `claimed` row (placeholder until filled in)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0010_task_index_audit")]

    operations: list = []
