"""Issue 13, item 6: the task table's indexes after the audit (placeholder until filled in)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0009_stage_bounds")]

    operations: list = []
