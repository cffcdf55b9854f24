"""Waiting-time limit (issue 15): Stage.max_wait and Stage.on_timeout, and the `wait_exceeded` event kind.

- max_wait (seconds, null: no limit) with its range check (1 s to a year),
  for raw SQL as the other stage bounds.
- on_timeout ('' by default, db_default too, so raw INSERTs of stages need
  not name it): the type an overdue task is sent on as (services.waiting).
- TaskEvent kind wait_exceeded (choices only, no SQL).

Adding a nullable column and one with a default is a catalogue change on
PostgreSQL 11+: no table rewrite, and the stage table is small anyway.
"""

import django.core.validators
from django.db import migrations, models

import tasks_app.models


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0018_cancel"),
    ]

    operations = [
        migrations.AddField(
            model_name="stage",
            name="max_wait",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="Seconds a task may wait here, pending, from its arrival (1 to 31536000, a year); past "
                "it the task is overdue. Blank means no limit.",
                null=True,
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(31536000),
                ],
            ),
        ),
        migrations.AddField(
            model_name="stage",
            name="on_timeout",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="A task type: an overdue task is completed and this type is sent on through the stage's "
                "transitions (escalation). Blank: overdue tasks stay pending.",
                max_length=100,
                validators=[tasks_app.models.validate_task_type],
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
                    ("wait_exceeded", "Wait exceeded"),
                ],
                max_length=20,
            ),
        ),
        migrations.AddConstraint(
            model_name="stage",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("max_wait__isnull", True),
                    models.Q(("max_wait__gte", 1), ("max_wait__lte", 31536000)),
                    _connector="OR",
                ),
                name="stage_max_wait_range",
            ),
        ),
    ]
