# Placeholder reserved for helper H4 (hourly roll-ups and workflow figures); filled in by that helper.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0014_list_indexes"),
    ]

    operations: list = []
