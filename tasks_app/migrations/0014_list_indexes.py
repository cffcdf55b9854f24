# Placeholder reserved for helper H1 (lookup and sort indexes); filled in by that helper.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0013_workerprocess_verbose_name_plural"),
    ]

    operations: list = []
