"""Benchmark data: many realistic tasks and their history, written fast (the seed_tasks command's engine).

For benchmarking the monitoring pages on a big table: a million tasks (and
their ~2 million events) take about a minute on PostgreSQL on 2 cores.

- generator.py makes the rows (what the data looks like) from one
  random.Random(seed), the same on both databases;
- writers.py writes them: COPY on PostgreSQL (then ANALYZE), bulk_create on
  SQLite, and takes the task ids from the table's sequence before the first
  chunk (parents and events need them up front), so other writers can go on
  inserting meanwhile;
- pipeline.py picks the stages (loading the demo workflow if needed) and runs
  the two: each chunk in its own transaction, the next one made in a thread
  while the database writes the last (on PostgreSQL the server is the
  bottleneck). Stopping it keeps the chunks already written.

It writes rows directly, bypassing the services (no notifications, no
routing): a tool for benchmarks and demos, not a way to create real work.
"""

from __future__ import annotations

from tasks_app.seeding.pipeline import SeedResult, UnknownStages, seed_stages, seed_tasks

__all__ = ["SeedResult", "UnknownStages", "seed_stages", "seed_tasks"]
