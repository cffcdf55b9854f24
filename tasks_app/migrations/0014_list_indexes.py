# The task list's sorts (issue 14): every sort's first and next pages are a range of an index.
# task_finished_updated_idx (partial): the sorts by updated for completed and failed tasks; live ones
# (pending, locked) are read apart through task_claim_idx (selectors.tasks._rows). The other sorts
# already had theirs (the primary key; task_created_idx). Building it reads the table once; on a large
# installation run it in a quiet moment.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0013_workerprocess_verbose_name_plural"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(("status__in", ["completed", "failed"])),
                fields=["updated_at", "id"],
                name="task_finished_updated_idx",
            ),
        ),
    ]
