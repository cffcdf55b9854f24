# Placeholder: filled by the helper building this part of issue 15.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0020_live_updated_idx")]

    operations: list[migrations.operations.base.Operation] = []
