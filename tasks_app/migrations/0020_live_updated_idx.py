# The list's sorts by updated for live tasks (issue 14, measured with bench/pages.py at 1M tasks): with
# task_finished_updated_idx for finished ones, every side of the sort by updated is an index walk that
# stops after a page. Building it reads the table once; on a large installation run it in a quiet moment.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0019_max_wait"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(("status__in", ["pending", "locked"])),
                fields=["updated_at", "id"],
                name="task_live_updated_idx",
            ),
        ),
    ]
