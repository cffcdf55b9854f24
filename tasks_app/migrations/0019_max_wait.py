# Placeholder reserved for helper W (waiting-time limit, issue 15); filled in by that helper.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0018_cancel"),
    ]

    operations: list = []
