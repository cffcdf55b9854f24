# Hourly roll-ups of the history (issue 14: the workflow's figures and history charts), filled by the
# counters' fold (services.rollups). Starts empty: the fold adds the events after its cursor from now on.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0014_list_indexes"),
    ]

    operations = [
        migrations.CreateModel(
            name="StageHour",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hour", models.DateTimeField(help_text="The hour's start (UTC).")),
                ("completed", models.PositiveIntegerField(default=0)),
                ("failed", models.PositiveIntegerField(default=0)),
                ("retried", models.PositiveIntegerField(default=0)),
                ("errors", models.PositiveIntegerField(default=0)),
                ("ended", models.PositiveIntegerField(default=0)),
                ("wait_buckets", models.JSONField(default=list)),
                ("work_buckets", models.JSONField(default=list)),
                ("stage_seconds", models.FloatField(default=0.0)),
                ("slowest", models.JSONField(default=list)),
                (
                    "stage",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="hours",
                        to="tasks_app.stage",
                    ),
                ),
            ],
            options={
                "ordering": ["stage", "hour"],
                "indexes": [models.Index(fields=["hour"], name="stagehour_hour_idx")],
                "constraints": [models.UniqueConstraint(fields=("stage", "hour"), name="stagehour_unique")],
            },
        ),
        migrations.CreateModel(
            name="TransitionHour",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hour", models.DateTimeField(help_text="The hour's start (UTC).")),
                ("taken", models.PositiveIntegerField(default=0)),
                (
                    "transition",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="hours",
                        to="tasks_app.transition",
                    ),
                ),
            ],
            options={
                "ordering": ["transition", "hour"],
                "indexes": [models.Index(fields=["hour"], name="transitionhour_hour_idx")],
                "constraints": [models.UniqueConstraint(fields=("transition", "hour"), name="transitionhour_unique")],
            },
        ),
    ]
