"""Dedupe on every arrival (issue 15): Stage.dedupe_on, Task.dedupe_key, the `deduplicated` event and
the unique partial index task_dedupe_live on (stage, dedupe_key) among pending and locked tasks with a key.

The index starts empty (every existing task has dedupe_key ''), so building it is a scan with no entries.
"""

from django.db import migrations, models

import tasks_app.dedupe_keys


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0021_concurrency")]

    operations = [
        migrations.AddField(
            model_name="stage",
            name="dedupe_on",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text='JSON pointers into the payload, e.g. ["/order_id"]: a task arriving while a pending or '
                "locked task here has the same values is not created; the arrival gets that task. Empty: no dedupe.",
                validators=[tasks_app.dedupe_keys.validate_dedupe_on],
            ),
        ),
        migrations.AddField(
            model_name="task",
            name="dedupe_key",
            field=models.CharField(blank=True, db_default="", default="", editable=False, max_length=100),
        ),
        migrations.AlterField(
            model_name="taskevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("created", "Created"),
                    ("claimed", "Claimed"),
                    ("completed", "Completed"),
                    ("released", "Released"),
                    ("lock_extended", "Lock extended"),
                    ("lock_expired", "Lock expired"),
                    ("failed", "Failed"),
                    ("retried", "Retried"),
                    ("force_released", "Force-released"),
                    ("marked_completed", "Marked completed"),
                    ("duplicated", "Duplicated"),
                    ("edited", "Payload edited"),
                    ("cancel_requested", "Cancel requested"),
                    ("cancelled", "Cancelled"),
                    ("wait_exceeded", "Wait exceeded"),
                    ("deduplicated", "Deduplicated"),
                ],
                max_length=20,
            ),
        ),
        migrations.AddConstraint(
            model_name="task",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status__in", ["pending", "locked"]), models.Q(("dedupe_key", ""), _negated=True)),
                fields=("stage", "dedupe_key"),
                name="task_dedupe_live",
            ),
        ),
    ]
