# Placeholder reserved for helper X (cancel, issue 15); filled in by that helper.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0017_priority_run_at"),
    ]

    operations: list = []
