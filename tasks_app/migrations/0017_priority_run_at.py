# Placeholder reserved for helper P (priority and run-at, issue 15); filled in by that helper.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0016_overview_counts"),
    ]

    operations: list = []
