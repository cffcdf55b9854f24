"""Autovacuum settings for the task table and its history (PostgreSQL only; nothing on SQLite).

tasks_app_task is a queue table. Every task is inserted once and then updated
several times (claimed, lock extended by heartbeats, completed or released),
and none of those updates can be HOT because each changes an indexed column
(status, locked_until), so each leaves a dead row version in the heap and in
every index. The default autovacuum_vacuum_scale_factor of 0.2 waits for dead
rows worth 20% of the table: on a table of 10 million tasks, 2 million dead
versions, most of them in the small, hot region the claim reads. The claim's
partial index (task_claim_idx: pending and locked tasks only) then fills with
dead entries every claim has to step over, and the planner's statistics
(how many rows are pending, how old the oldest one is) lag behind a table
whose live part changes completely within minutes. So:

- autovacuum_vacuum_scale_factor = 0.01: vacuum after 1% of the table is
  dead (100,000 versions at 10 million rows), keeping the hot indexes lean;
- autovacuum_analyze_scale_factor = 0.02: fresh statistics for the claim's
  and the monitoring pages' plans.

tasks_app_taskevent is insert-mostly, and pruning (prune_tasks, or workers
with TASKS_RETENTION_DAYS) deletes it in bulk:

- autovacuum_vacuum_scale_factor = 0.02: space freed by a prune is made
  reusable soon, so the table stops growing at its retention size instead of
  carrying up to 20% dead rows between vacuums;
- autovacuum_vacuum_insert_scale_factor = 0.05 (PostgreSQL 13+; Django 5.2
  needs 14): vacuum after 5% new rows, not 20%, so the visibility map stays
  current for index-only scans of a task's history and rows are frozen in
  small steps rather than by one large anti-wraparound vacuum.

The cost limits stay at the server's defaults (since PostgreSQL 12 the 2 ms
autovacuum_vacuum_cost_delay lets frequent small vacuums finish quickly). If
pg_stat_user_tables shows n_dead_tup on tasks_app_task staying high, raise
autovacuum_vacuum_cost_limit for the table (e.g. 1000) or the server.
"""

from django.db import migrations

TASK_OPTIONS = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_analyze_scale_factor": "0.02",
}
EVENT_OPTIONS = {
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_insert_scale_factor": "0.05",
}


def _tables(apps):
    return [
        (apps.get_model("tasks_app", "Task")._meta.db_table, TASK_OPTIONS),
        (apps.get_model("tasks_app", "TaskEvent")._meta.db_table, EVENT_OPTIONS),
    ]


def set_options(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for table, options in _tables(apps):
        pairs = ", ".join(f"{name} = {value}" for name, value in options.items())
        schema_editor.execute(f"ALTER TABLE {quote(table)} SET ({pairs})")


def reset_options(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for table, options in _tables(apps):
        schema_editor.execute(f"ALTER TABLE {quote(table)} RESET ({', '.join(options)})")


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0007_metrics_counters"),
    ]

    operations = [
        migrations.RunPython(set_options, reset_options, elidable=False),
    ]
