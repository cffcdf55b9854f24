"""task_claim_idx INCLUDEs status, attempts and created_at: the overview's live counts become an index-only scan.

Before, counting the pending and locked tasks per stage (with the retries and
the oldest pending) fetched every live task's heap row: 166-174 ms over 80,039
live tasks at 1M tasks (seed_tasks). With the three columns in the index's
leaf entries the count reads the index alone (where the visibility map
allows; a backlog that waits untouched is all-visible after autovacuum): 44 ms,
or 29-33 ms as the overview counts (capped per stage, selectors.overview).

What it costs: every claim, release and completion already writes an entry
into this index (status is in its predicate, so none of them is a HOT
update); each entry grows from 24 to about 48 bytes, so the index (only the
live tasks are in it) nearly doubles (2.4 MB -> 4.5 MB for those 80,039 live
tasks) and each such write logs ~24 more bytes. No
column a heartbeat writes (locked_until, updated_at) is in it, so heartbeats
stay HOT-capable. B-tree deduplication does not apply to indexes with INCLUDE
columns; this index's keys (stage_id, id) are unique per task anyway.

PostgreSQL: the new index is built under a temporary name, then swapped in, in
the migration's transaction, so the claim never runs without its index.
SQLite has no INCLUDE: nothing changes there.
"""

from django.db import migrations, models

NEW = """
CREATE INDEX task_claim_idx_new ON tasks_app_task (stage_id, id) INCLUDE (status, attempts, created_at)
WHERE status IN ('pending', 'locked');
DROP INDEX task_claim_idx;
ALTER INDEX task_claim_idx_new RENAME TO task_claim_idx;
"""

OLD = """
CREATE INDEX task_claim_idx_old ON tasks_app_task (stage_id, id) WHERE status IN ('pending', 'locked');
DROP INDEX task_claim_idx;
ALTER INDEX task_claim_idx_old RENAME TO task_claim_idx;
"""


def swap(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0015_hourly_rollups"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(model_name="task", name="task_claim_idx"),
                migrations.AddIndex(
                    model_name="task",
                    index=models.Index(
                        condition=models.Q(("status__in", ["pending", "locked"])),
                        fields=["stage", "id"],
                        include=("status", "attempts", "created_at"),
                        name="task_claim_idx",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(swap(NEW), swap(OLD))],
        ),
    ]
