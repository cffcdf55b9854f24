"""Join stages (issue 15): Stage.kind 'join' with its rule (join_rule, join_key, join_count, join_timeout,
join_type, bounded by check constraints), and each task's fan-out (Task.fanout_id, Task.fanout_size).

Only nullable columns or columns with a database default: adding them rewrites no rows. No index: a join
pass reads the fan-out fields of a join stage's pending tasks, which task_claim_idx finds.
"""

import django.core.validators
from django.db import migrations, models

import tasks_app.models


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0022_dedupe")]

    operations = [
        migrations.AddField(
            model_name="stage",
            name="join_count",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="Join stages, rule 'count': arrivals that make a group (1 to 10000).",
                null=True,
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(10000),
                ],
            ),
        ),
        migrations.AddField(
            model_name="stage",
            name="join_key",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="Join stages, rule 'count': a JSON pointer into the payload, e.g. /order_id; arrivals with equal values there form a group. Blank: all arrivals do.",
                max_length=200,
                validators=[tasks_app.models.validate_json_pointer],
            ),
        ),
        migrations.AddField(
            model_name="stage",
            name="join_rule",
            field=models.CharField(
                blank=True,
                choices=[("siblings", "All siblings of a fan-out"), ("count", "N arrivals with the same key")],
                db_default="",
                default="",
                help_text="Join stages: 'siblings' (every task of a fan-out) or 'count' (join_count arrivals with the same join_key).",
                max_length=10,
            ),
        ),
        migrations.AddField(
            model_name="stage",
            name="join_timeout",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="Join stages: seconds after a group's first arrival (1 to 31536000) after which what arrived is sent on as a join_timeout task. Blank: a group waits until it is complete.",
                null=True,
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(31536000),
                ],
            ),
        ),
        migrations.AddField(
            model_name="stage",
            name="join_type",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="Join stages: the type of the merged task. Blank: the type of the group's first arrival.",
                max_length=100,
                validators=[tasks_app.models.validate_task_type],
            ),
        ),
        migrations.AddField(
            model_name="task",
            name="fanout_id",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="task",
            name="fanout_size",
            field=models.PositiveIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AlterField(
            model_name="stage",
            name="kind",
            field=models.CharField(
                choices=[("script", "Script"), ("form", "Form"), ("hook", "Hook"), ("job", "Job"), ("join", "Join")],
                default="script",
                max_length=10,
            ),
        ),
        migrations.AddConstraint(
            model_name="stage",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("join_count__isnull", True),
                    models.Q(("join_count__gte", 1), ("join_count__lte", 10000)),
                    _connector="OR",
                ),
                name="stage_join_count_range",
            ),
        ),
        migrations.AddConstraint(
            model_name="stage",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("join_timeout__isnull", True),
                    models.Q(("join_timeout__gte", 1), ("join_timeout__lte", 31536000)),
                    _connector="OR",
                ),
                name="stage_join_timeout_range",
            ),
        ),
        # The history of a join: "joined" (a group merged and sent on) and "join_timed_out" (its timeout
        # sent what arrived), one per group, on its first arrival; /metrics counts them.
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
                    ("joined", "Joined"),
                    ("join_timed_out", "Join timed out"),
                ],
                max_length=20,
            ),
        ),
    ]
