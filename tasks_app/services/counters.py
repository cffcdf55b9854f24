"""Per-stage counters that outlive a process and a prune: tasks created, completed, failed, ... per stage.

Counters must be right with any number of web and worker processes on any
number of machines, and keep growing when old tasks and their history are
pruned. So they live in the database: `counters_fold()` adds the history
events written since the last fold (CounterCursor) to StageCounter, one row
per (stage, event kind). Events whose task was deleted before they were
folded are skipped: pruning runs on tasks finished days ago, whose events
were folded long before, so in practice nothing is lost. /metrics
(views/prometheus.py) folds, then reads them. The same fold rolls the events
up per hour (services.rollups) for the workflow's figures and charts.

Claims write no event (services.events): a claim is counted by the event that
ends it (its details carry the claim's facts), folded into the CLAIM_ENDED
pseudo-kind, and while it is live by the locked task itself; claim_counts()
adds the two.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Count, F, IntegerField, Max, Min, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from tasks_app.models import CounterCursor, StageCounter, Task, TaskEvent
from tasks_app.services.events import CLAIMED_AT
from tasks_app.services.rollups import rollups_fold

# A pseudo-kind: lock_expired events whose sweep failed the task (max attempts
# reached). The sweep writes no "failed" event for them, yet the task failed.
EXPIRED_FAILED = "lock_expired:failed"
# A pseudo-kind: events that end a claim (their details carry CLAIMED_AT), whatever their kind.
CLAIM_ENDED = "claim_ended"
# The `claimed` events of the history before issue 13 (one per claim), folded before
# migration 0011 removed them; that migration took off this counter every claim it
# would otherwise count twice.
LEGACY_CLAIMED = TaskEvent.Kind.CLAIMED.value
PSEUDO_KINDS = (EXPIRED_FAILED, CLAIM_ENDED)

# The most events one fold reads, so the first scrape of a long history stays
# bounded; the next scrape goes on from there.
FOLD_MAX_ROWS = 1_000_000

# PostgreSQL: only events at least this old are folded. Event ids come from a
# sequence when the row is inserted, not when it commits: a transaction that
# took id 100 and commits after another one committed id 101 would be skipped
# for ever by a cursor that had already moved past 101. Folding only up to the
# newest event older than SETTLE_SECONDS leaves that much time for such a
# transaction to commit; every event written by the services commits within
# milliseconds of its `at`. SQLite needs no margin: writers are serialised
# (BEGIN IMMEDIATE) and the fold holds the write lock, so no lower id can
# still appear.
SETTLE_SECONDS = 30.0

CURSOR_PK = 1

# The events that end a claim: services.events.attempt_details wrote them.
ENDS_A_CLAIM = Q(details__has_key=CLAIMED_AT)


def counters_fold(*, now: datetime | None = None, max_rows: int = FOLD_MAX_ROWS) -> int:
    """Add the history events written since the last fold to StageCounter; returns how many were counted.

    The count leaves out events of deleted tasks, so 0 does not always mean the
    cursor stood still; loop on the cursor to catch up.

    1. Lock the cursor row: a concurrent fold waits here, then sees the moved cursor.
    2. Pick the upper id: at most max_rows ids from the first new one, and settled (SETTLE_SECONDS).
    3. Count the events in (cursor, upper] per stage and kind: one GROUP BY, joined to
       tasks for the stage (a task never changes stage; events of deleted tasks drop out).
    4. Add the counts to StageCounter, roll the same events up into the hourly tables
       (services.rollups), and move the cursor, in the same transaction.
    """
    now = now or timezone.now()
    CounterCursor.objects.get_or_create(pk=CURSOR_PK)
    with transaction.atomic():
        cursor = CounterCursor.objects.select_for_update().get(pk=CURSOR_PK)
        start = cursor.last_event_id
        upper = _fold_upper(start=start, max_rows=max_rows, now=now)
        if upper <= start:
            return 0
        rows = (
            TaskEvent.objects.filter(id__gt=start, id__lte=upper)
            .values_list("task__stage_id", "kind")
            .annotate(
                n=Count("id"),
                failed=Count("id", filter=Q(kind="lock_expired", details__now="failed")),
                ended=Count("id", filter=ENDS_A_CLAIM),
            )
        )
        counts: dict[tuple[int, str], int] = {}
        for stage_id, kind, n, failed, ended in rows:
            counts[(stage_id, kind)] = n
            if failed:
                counts[(stage_id, EXPIRED_FAILED)] = failed
            if ended:
                counts[(stage_id, CLAIM_ENDED)] = counts.get((stage_id, CLAIM_ENDED), 0) + ended
        _add_counts(counts)
        rollups_fold(start=start, upper=upper, now=now)
        CounterCursor.objects.filter(pk=CURSOR_PK).update(last_event_id=upper, updated_at=now)
    return sum(n for (_, kind), n in counts.items() if kind not in PSEUDO_KINDS)


def _fold_upper(*, start: int, max_rows: int, now: datetime) -> int:
    """The highest event id this fold may count (start if none)."""
    # Count max_rows ids from the first event after the cursor, not from the
    # cursor: after a prune (or a first fold of a table whose low ids are
    # gone) the ids just past the cursor may all be deleted.
    first = TaskEvent.objects.filter(id__gt=start).aggregate(first=Min("id"))["first"]
    if first is None:
        return start
    events = TaskEvent.objects.filter(id__gt=start, id__lt=first + max_rows)
    if connection.vendor == "postgresql":
        # max(id) with a filter: a backward walk of the primary key that stops at
        # the first settled event, so it reads only the last few seconds' events.
        events = events.filter(at__lte=now - timedelta(seconds=SETTLE_SECONDS))
    return events.aggregate(upper=Max("id"))["upper"] or start


def _add_counts(counts: dict[tuple[int, str], int]) -> None:
    """Add to StageCounter; the caller holds the cursor lock, so nobody else writes these rows."""
    assert connection.in_atomic_block
    existing = {(c.stage_id, c.kind): c for c in StageCounter.objects.filter(stage_id__in={s for s, _ in counts})}
    changed, new = [], []
    for key, n in counts.items():
        counter = existing.get(key)
        if counter is None:
            new.append(StageCounter(stage_id=key[0], kind=key[1], value=n))
        else:
            counter.value += n
            changed.append(counter)
    StageCounter.objects.bulk_create(new)
    StageCounter.objects.bulk_update(changed, ["value"])


def counter_values() -> dict[tuple[int, str], int]:
    """Every counter: (stage id, kind) -> value."""
    return {(s, k): v for s, k, v in StageCounter.objects.values_list("stage_id", "kind", "value")}


def claim_counts(*, max_rows: int = FOLD_MAX_ROWS) -> dict[int, int]:
    """Claims per stage (stage id -> count), without scanning the history; monotonic while nothing is pruned
    before it is folded.

    Every claim is either ended (its end is an event with the claim's facts) or live (the task is
    locked). So: the ended claims folded so far (CLAIM_ENDED, plus LEGACY_CLAIMED), the ended
    claims not folded yet (events after the cursor: the few seconds the fold leaves to settle, the
    same rows the next fold reads, at most max_rows), and the locked tasks. One statement, so
    one snapshot: a claim that ends meanwhile is either still locked or already an event, never
    both and never neither, and the fold moves counters and cursor in one transaction. (Read
    apart, a completion would leave the locked count before its event is folded, and the
    counter would go down for SETTLE_SECONDS.)
    """
    cursor = Coalesce(
        Subquery(CounterCursor.objects.filter(pk=CURSOR_PK).values("last_event_id")[:1]),
        Value(0),
        output_field=IntegerField(),
    )
    folded = StageCounter.objects.filter(kind__in=[CLAIM_ENDED, LEGACY_CLAIMED]).values_list("stage_id", "value")
    unfolded = (
        TaskEvent.objects.alias(after=cursor)
        .filter(ENDS_A_CLAIM, id__gt=F("after"), id__lte=F("after") + max_rows)
        .order_by()
        .values_list("task__stage_id")
        .annotate(n=Count("id"))
    )
    live = Task.objects.filter(status=Task.Status.LOCKED).order_by().values_list("stage_id").annotate(n=Count("id"))
    out: dict[int, int] = {}
    for stage_id, n in folded.union(unfolded, live, all=True):
        out[stage_id] = out.get(stage_id, 0) + n
    return out


def counters_fold_in_turn(*, max_rows: int, now: datetime | None = None) -> int | None:
    """The workers' upkeep fold (worker.loop): a bounded fold by one process at a time; returns how far the
    cursor moved (event ids), or None when another process is folding right now (this one skips its turn)."""
    CounterCursor.objects.get_or_create(pk=CURSOR_PK)
    with transaction.atomic():
        # SKIP LOCKED: a fold elsewhere holds the cursor row for its whole transaction. Once this
        # transaction holds it, counters_fold's own FOR UPDATE of the row returns at once. (SQLite
        # has no row locks and Django leaves FOR UPDATE out there; its writers take turns anyway.)
        cursor = CounterCursor.objects.select_for_update(skip_locked=True).filter(pk=CURSOR_PK)
        before = cursor.values_list("last_event_id", flat=True).first()
        if before is None:
            return None
        counters_fold(now=now, max_rows=max_rows)
        after = CounterCursor.objects.filter(pk=CURSOR_PK).values_list("last_event_id", flat=True).get()
    return after - before
