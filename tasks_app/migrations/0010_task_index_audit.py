"""Issue 13, item 6: the task table's indexes after the audit (docs/scaling.md, "Indexes of the task table").

Every claim and completion changes `status`, which task_claim_idx's predicate
reads, so neither can be a HOT update and each writes an entry into every full
index of the table (and into each partial one whose predicate the new row
version meets). Before: seven full indexes (primary key, stage, status+stage,
type, created_at, parent, source_stage), so nine index entries per claim and
eight per completion. After: four full ones (primary key, stage, type,
created_at), so six per claim and five per completion for a task nobody sent
(eight and seven for one another task sent). What changed:

- task_status_stage_idx (status, stage_id) goes: pending and locked tasks are
  found through task_claim_idx and task_locked_idx, completed ones are most of
  the table (the primary key), failed ones through the new task_failed_idx
  (id) WHERE status = 'failed' (retention's failed batches, the failed filter),
  a stage's through Django's index on stage_id.
- task_lock_expiry_idx (locked_until) WHERE locked becomes task_locked_idx (id)
  WHERE locked: the sweep reads the locked tasks in id order (few: the ones
  held), and a heartbeat, which changes only locked_until and updated_at, can
  then be a HOT update.
- Django's indexes on parent_id and source_stage_id become partial
  (IS NOT NULL): tasks nobody sent are not in them. The foreign keys keep
  their constraints; only their own indexes go (db_index=False).

Building the four indexes takes a few seconds per million tasks, during which
the table takes no writes.
"""

from django.db import migrations, models
from django.db.models.deletion import SET_NULL

# Django's own indexes on the foreign keys (0001_initial), as it names them.
FOREIGN_KEY_INDEXES = [
    ("tasks_app_task_parent_id_2602f296", "parent_id"),
    ("tasks_app_task_source_stage_id_b6c5d4f8", "source_stage_id"),
]


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0009_stage_bounds")]

    operations = [
        migrations.RemoveIndex(model_name="task", name="task_lock_expiry_idx"),
        migrations.RemoveIndex(model_name="task", name="task_status_stage_idx"),
        # The two foreign keys' own indexes go first, by the names Django gave them (the same on both
        # databases). Only the model state's AlterField: run for real, it would also drop and re-add each
        # foreign key constraint, checking every row of the table again for nothing.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="task",
                    name="parent",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=SET_NULL,
                        related_name="children",
                        to="tasks_app.task",
                    ),
                ),
                migrations.AlterField(
                    model_name="task",
                    name="source_stage",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=SET_NULL,
                        related_name="sent_tasks",
                        to="tasks_app.stage",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{name}"',
                    reverse_sql=f'CREATE INDEX IF NOT EXISTS "{name}" ON "tasks_app_task" ("{column}")',
                    elidable=False,
                )
                for name, column in FOREIGN_KEY_INDEXES
            ],
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(condition=models.Q(status="locked"), fields=["id"], name="task_locked_idx"),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(condition=models.Q(status="failed"), fields=["id"], name="task_failed_idx"),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(condition=models.Q(parent__isnull=False), fields=["parent"], name="task_parent_idx"),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(source_stage__isnull=False), fields=["source_stage"], name="task_source_stage_idx"
            ),
        ),
    ]
