# Issue 15: a per-stage concurrency cap and rate limit (services.flow_limits), and the stages' gate rows.
import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

import tasks_app.models


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0020_live_updated_idx")]

    operations = [
        migrations.CreateModel(
            name="StageGate",
            fields=[
                (
                    "stage",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="gate",
                        serialize=False,
                        to="tasks_app.stage",
                    ),
                ),
                ("window_start", models.DateTimeField(blank=True, null=True)),
                ("window_count", models.PositiveIntegerField(default=0)),
                ("throttled", models.BigIntegerField(default=0)),
                ("throttled_at", models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.AddField(
            model_name="stage",
            name="max_concurrency",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="Most tasks locked at this stage at once, across every worker and API client (1 to "
                "10000). Blank means no cap.",
                null=True,
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(10000),
                ],
            ),
        ),
        migrations.AddField(
            model_name="stage",
            name="rate_limit",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="Most tasks claimed at this stage per second, minute or hour, across every worker and "
                "API client: N/second, N/minute or N/hour (a fixed window). Blank means no limit.",
                max_length=30,
                validators=[tasks_app.models.validate_rate_limit],
            ),
        ),
        migrations.AddConstraint(
            model_name="stage",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("max_concurrency__isnull", True),
                    models.Q(("max_concurrency__gte", 1), ("max_concurrency__lte", 10000)),
                    _connector="OR",
                ),  # fmt: skip
                name="stage_max_concurrency_range",
            ),
        ),
    ]
