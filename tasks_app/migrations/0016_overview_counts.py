# Placeholder reserved for helper H3 (overview live counts); filled in by that helper.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0015_hourly_rollups"),
    ]

    operations: list = []
