# Placeholder: filled by the helper building this part of issue 15.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0022_dedupe")]

    operations: list[migrations.operations.base.Operation] = []
