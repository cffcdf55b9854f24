"""Cancel (issue 15): the terminal status `cancelled`, Task.cancel_requested, and their indexes.

- `cancelled` joins the status check constraint and task_finished_updated_idx
  (the list's sort by updated reads finished tasks through it, cancelled ones
  included: selectors.tasks.FINISHED).
- task_cancelled_idx (id, cancelled rows only): retention's cancelled batches
  walk it newest first, as task_failed_idx for failed ones, and the list's
  "cancelled" filter. Only a cancel writes an entry.
- cancel_requested (false by default, db_default too so raw INSERTs need not
  name it): a cancel asked of a locked task; the completion that ends the
  claim cancels the task instead (services.complete).
- TaskEvent kinds cancel_requested and cancelled (choices only, no SQL).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0017_priority_run_at"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="task", name="task_status_valid"),
        migrations.RemoveIndex(model_name="task", name="task_finished_updated_idx"),
        migrations.AddField(
            model_name="task",
            name="cancel_requested",
            field=models.BooleanField(db_default=False, default=False),
        ),
        migrations.AlterField(
            model_name="task",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("locked", "Locked"),
                    ("completed", "Completed"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                ],
                default="pending",
                max_length=10,
            ),
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
                ],
                max_length=20,
            ),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(("status__in", ["completed", "failed", "cancelled"])),
                fields=["updated_at", "id"],
                name="task_finished_updated_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(condition=models.Q(("status", "cancelled")), fields=["id"], name="task_cancelled_idx"),
        ),
        migrations.AddConstraint(
            model_name="task",
            constraint=models.CheckConstraint(
                condition=models.Q(("status__in", ["pending", "locked", "completed", "failed", "cancelled"])),
                name="task_status_valid",
            ),
        ),
    ]
