"""Issue 13, item 5: history without a separate `claimed` row per claim.

A claim now writes no event: the event that ends it carries its facts
(services.events.attempt_details: attempt, worker, claimed_at,
reclaimed_from), and Task.reclaimed_from holds whose expired lock the current
claim took over. This migration adds the column and rewrites old history into
the new shape, so old and new tasks read alike:

- each old `claimed` event's facts are folded into the event that ended that
  claim (completed, failed, released, lock_expired, force_released,
  marked_completed), and the `claimed` row is deleted;
- a `claimed` event that took over a lock still open from an earlier claim (a
  reclaim after expiry) becomes the `lock_expired` event that ends the earlier
  claim, as a claim writes it now;
- the claim a locked task holds now loses its `claimed` row (the row has the
  holder and time) and its reclaimed_from goes to the new column;
- /metrics' claims counter (services.counters.claim_counts) now counts each
  claim by the event that ends it, or while it is live: a claim whose
  `claimed` event was already folded into the `claimed` counter but whose end
  was not (or which is live) would be counted twice, so it is taken off that
  counter here.

Tasks are read in chunks of task ids, so memory stays bounded on any history;
plain ORM queries, so it runs on SQLite and PostgreSQL alike. Reversing
removes the column and leaves the history in its new shape.
"""

from collections import Counter
from typing import Any

from django.db import migrations, models
from django.db.models import F, Min

CLAIMED = "claimed"
# The kinds of event that end a claim when one is open.
OUTCOMES = ("completed", "failed", "released", "lock_expired", "force_released", "marked_completed")
CHUNK_TASKS = 500  # task ids per chunk
CURSOR_PK = 1  # services.counters.CURSOR_PK


def _facts(event: tuple[Any, ...]) -> dict[str, Any]:
    """The claim facts of an old `claimed` event (id, task_id, kind, at, actor, details, stage_id)."""
    details = event[5] or {}
    return {
        "attempt": details.get("attempt"),
        "worker": event[4],
        "claimed_at": event[3].isoformat(),  # services.events.event_time
        "reclaimed_from": details.get("reclaimed_from") or None,
    }


class _Fold:
    """The rewrite of one chunk of tasks' events, and what it owes the claims counter."""

    def __init__(self, folded_upto: int) -> None:
        self.folded_upto = folded_upto
        self.updates: dict[int, tuple[str, str, dict[str, Any]]] = {}  # id -> (kind, actor, details)
        self.deletes: list[int] = []
        self.reclaimed_from: dict[int, str] = {}  # locked task -> whose lock its claim took over
        self.over_counted: Counter[int] = Counter()  # stage -> claims now counted twice

    def _closed(self, claim: tuple[Any, ...], closing_id: int | None) -> None:
        # Counted in the `claimed` counter already, and again by its end (not folded yet) or while live.
        if claim[0] <= self.folded_upto and (closing_id is None or closing_id > self.folded_upto):
            self.over_counted[claim[6]] += 1

    def task(self, events: list[tuple[Any, ...]], locked: bool) -> None:
        """Rewrite one task's events (claimed and outcome kinds, in id order)."""
        open_claim: tuple[Any, ...] | None = None
        for event in events:
            event_id, task_id, kind, _at, actor, details = event[:6]
            if kind == CLAIMED:
                if open_claim is not None:
                    # A reclaim of an expired lock: this row now ends the earlier claim.
                    new = {**_facts(open_claim), "now": "reclaimed"}
                    self.updates[event_id] = ("lock_expired", actor, new)
                    self._closed(open_claim, event_id)
                open_claim = event
            elif open_claim is not None:
                merged = {**(details or {}), **_facts(open_claim)}
                merged.pop("locked_by", None)  # old lock_expired events: now `worker`
                self.updates[event_id] = (kind, actor, merged)
                self._closed(open_claim, event_id)
                open_claim = None
        # A claim that nothing ended on a task that isn't locked (no path does that) stays as it was.
        keep = open_claim[0] if open_claim is not None and not locked else None
        for event in events:
            if event[2] == CLAIMED and event[0] not in self.updates and event[0] != keep:
                self.deletes.append(event[0])
        if open_claim is not None and locked:
            # The claim the task holds now: the row has its holder and time; its reclaimed_from goes there too.
            self._closed(open_claim, None)
            reclaimed = _facts(open_claim)["reclaimed_from"]
            if reclaimed:
                self.reclaimed_from[open_claim[1]] = reclaimed


def fold_claimed_events(apps: Any, schema_editor: Any) -> None:
    db = schema_editor.connection.alias
    Task = apps.get_model("tasks_app", "Task")
    TaskEvent = apps.get_model("tasks_app", "TaskEvent")
    StageCounter = apps.get_model("tasks_app", "StageCounter")
    CounterCursor = apps.get_model("tasks_app", "CounterCursor")
    cursor = CounterCursor.objects.using(db).filter(pk=CURSOR_PK).first()
    over_counted: Counter[int] = Counter()
    # Only tasks that have a claimed event need a rewrite.
    claims = TaskEvent.objects.using(db).filter(kind=CLAIMED)
    relevant = TaskEvent.objects.using(db).filter(kind__in=(CLAIMED, *OUTCOMES))
    start = claims.aggregate(first=Min("task_id"))["first"]
    while start is not None:
        end = start + CHUNK_TASKS
        rows = list(
            relevant.filter(task_id__gte=start, task_id__lt=end)
            .order_by("task_id", "id")
            .values_list("id", "task_id", "kind", "at", "actor", "details", "task__stage_id")
        )
        by_task: dict[int, list[tuple[Any, ...]]] = {}
        for row in rows:
            by_task.setdefault(row[1], []).append(row)
        locked = set(Task.objects.using(db).filter(pk__in=list(by_task), status="locked").values_list("id", flat=True))
        fold = _Fold(cursor.last_event_id if cursor else 0)
        for task_id, events in by_task.items():
            if any(e[2] == CLAIMED for e in events):
                fold.task(events, task_id in locked)
        _write(apps, db, fold)
        over_counted.update(fold.over_counted)
        start = claims.filter(task_id__gte=end).aggregate(first=Min("task_id"))["first"]
    for stage_id, n in over_counted.items():
        StageCounter.objects.using(db).filter(stage_id=stage_id, kind=CLAIMED).update(value=F("value") - n)


def _write(apps: Any, db: str, fold: _Fold) -> None:
    Task = apps.get_model("tasks_app", "Task")
    TaskEvent = apps.get_model("tasks_app", "TaskEvent")
    changed = [
        TaskEvent(id=event_id, kind=kind, actor=actor, details=details)
        for event_id, (kind, actor, details) in fold.updates.items()
    ]
    TaskEvent.objects.using(db).bulk_update(changed, ["kind", "actor", "details"], batch_size=500)
    if fold.deletes:
        TaskEvent.objects.using(db).filter(id__in=fold.deletes).delete()
    for task_id, holder in fold.reclaimed_from.items():
        Task.objects.using(db).filter(pk=task_id, status="locked").update(reclaimed_from=holder)


class Migration(migrations.Migration):
    dependencies = [("tasks_app", "0010_task_index_audit")]

    operations = [
        migrations.AddField(
            model_name="task",
            name="reclaimed_from",
            field=models.CharField(blank=True, db_default="", default="", max_length=200),
        ),
        migrations.RunPython(fold_claimed_events, migrations.RunPython.noop, elidable=True),
    ]
