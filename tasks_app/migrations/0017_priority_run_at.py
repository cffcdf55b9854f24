"""Priority (issue 15): Task.priority, Stage.default_priority and Stage.priority_from; the claim's index
gets priority in its keys.

The claim serves `priority DESC, id`, so task_claim_idx becomes (stage_id,
priority DESC, id), same INCLUDE and predicate. The columns are added with a
database default (no table rewrite on PostgreSQL 11+: a constant default is
stored in the catalogue), so raw INSERTs and bulk loads need not name them.

PostgreSQL: as in 0016, the new index is built under a temporary name, then
swapped in, in the migration's transaction, so the claim never runs without
its index. (A plain CREATE INDEX, not CONCURRENTLY: that can't run in a
transaction; the table is locked against writes while it is built, about as
long as 0016's build: the index holds only the live tasks.) SQLite has no
INCLUDE; its index gets the same keys.
"""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import migrations, models

import tasks_app.models

PG_NEW = """
CREATE INDEX task_claim_idx_new ON tasks_app_task (stage_id, priority DESC, id) INCLUDE (status, attempts, created_at)
WHERE status IN ('pending', 'locked');
DROP INDEX task_claim_idx;
ALTER INDEX task_claim_idx_new RENAME TO task_claim_idx;
"""

PG_OLD = """
CREATE INDEX task_claim_idx_old ON tasks_app_task (stage_id, id) INCLUDE (status, attempts, created_at)
WHERE status IN ('pending', 'locked');
DROP INDEX task_claim_idx;
ALTER INDEX task_claim_idx_old RENAME TO task_claim_idx;
"""

SQLITE_NEW = [
    "DROP INDEX task_claim_idx",
    "CREATE INDEX task_claim_idx ON tasks_app_task (stage_id, priority DESC, id) WHERE status IN ('pending', 'locked')",
]

SQLITE_OLD = [
    "DROP INDEX task_claim_idx",
    "CREATE INDEX task_claim_idx ON tasks_app_task (stage_id, id) WHERE status IN ('pending', 'locked')",
]


def swap(pg, sqlite):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(pg)
        else:
            for sql in sqlite:
                schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0016_overview_counts"),
    ]

    operations = [
        migrations.AddField(
            model_name="stage",
            name="default_priority",
            field=models.IntegerField(
                db_default=0,
                default=0,
                help_text="Priority of tasks created at this stage (-1000 to 1000, higher runs first); tasks sent "
                "by a task inherit the sender's.",
                validators=[MinValueValidator(-1000), MaxValueValidator(1000)],
            ),
        ),
        migrations.AddField(
            model_name="stage",
            name="priority_from",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="A payload field holding the priority of tasks created at this stage (an integer, "
                "clamped to -1000..1000); anything else there falls back to the default priority.",
                max_length=100,
                validators=[tasks_app.models.NO_NUL],
            ),
        ),
        migrations.AddField(
            model_name="task",
            name="priority",
            field=models.IntegerField(
                db_default=0,
                default=0,
                help_text="Higher runs first (-1000 to 1000); ties run oldest first.",
                validators=[MinValueValidator(-1000), MaxValueValidator(1000)],
            ),
        ),
        migrations.AddConstraint(
            model_name="stage",
            constraint=models.CheckConstraint(
                condition=models.Q(("default_priority__gte", -1000), ("default_priority__lte", 1000)),
                name="stage_default_priority_range",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(model_name="task", name="task_claim_idx"),
                migrations.AddIndex(
                    model_name="task",
                    index=models.Index(
                        fields=["stage", "-priority", "id"],
                        condition=models.Q(("status__in", ["pending", "locked"])),
                        include=("status", "attempts", "created_at"),
                        name="task_claim_idx",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(swap(PG_NEW, SQLITE_NEW), swap(PG_OLD, SQLITE_OLD))],
        ),
    ]
