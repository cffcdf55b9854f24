"""A stage's concurrency cap and rate limit, enforced inside the claim (issue 15).

`Stage.max_concurrency` caps the tasks locked at a stage across every worker
and API client; `Stage.rate_limit` ("N/second|minute|hour") caps the tasks
claimed there per fixed window of that length. Both hold under any
interleaving of claims because every claim at such a stage takes the stage's
gate row (StageGate) first and keeps it to the end of its transaction:

PostgreSQL. A claim at a capped or rate-limited stage is a short transaction
of separate statements: (1) SELECT the gate row FOR UPDATE; (2) count the
stage's locked tasks (at most `cap` of them); (3) the ordinary claim statement
(services.claim.PG_CLAIM_SQL) with LIMIT the least of the asked number, the
free slots and the window's tokens; (4) UPDATE the gate row's window (and
throttled count) when it changed. They must be separate statements: under READ
COMMITTED each statement takes its snapshot when it starts, so a count folded
into the statement that waits for the gate row would be the count from before
the wait (EvalPlanQual re-reads only the locked row, not a subquery), and two
claims could both see a free slot. Counted after the lock, in a new snapshot,
the count includes every claim that held the gate before, and the next claim
waits for this one's commit. Completions, releases, expiry, cancels and
failures take a task out of `locked` without touching the gate: they can only
make the count smaller, so nothing needs to decrement anything and nothing can
drift (the alternative, a running count kept in the gate row, would need every
one of those paths to decrement it, exactly once). A stage with neither control
never touches the gate: its claim stays the one prepared statement.

The common case in one round trip: at a stage with a cap and no rate limit
whose gate row this process has seen (GATES_SEEN), the claim sends the gate's
lock and services.claim.PG_CAPPED_CLAIM_SQL pipelined, with one Sync: one
implicit transaction, committed at the Sync. The claim statement is the later
one, so the count inside it (its LIMIT) is taken in a snapshot after the lock,
exactly as step (2). Only a claim that comes back short (a full cap, expired
locks to take over, or no more work) goes on to the transaction above for the
rest, which counts a throttled claim. A capped claim of one costs 1.1-1.2
times an uncapped one this way, against 1.4-1.75 times with the steps above
(bench/claim_scaling.py --controls; docs/scaling.md, section 6).

SQLite. Writers take turns (BEGIN IMMEDIATE: the claim's transaction holds the
database's write lock from its first statement), so the same steps in the
claim's transaction are exact without row locks.

Expired locks count as running until they are taken over or the expiry sweep
hands them back: the cap is on `status = 'locked'`, what people and the race
test see. Taking one over leaves that count as it is, so a claim at a full cap
still takes over expired locks (services.claim, RECLAIMABLE_WHERE): a cap full
of dead workers' locks doesn't wait for the sweep. A person opening a form
task goes through the same gate (services.form_stages.form_task_open).

The cost: a stage with a control claims in BEGIN, the gate row's FOR UPDATE,
the count, the claim statement, (the window's UPDATE when a rate limit is set
or the claim was throttled), COMMIT; and its claims take turns on the gate, so
a capped stage's claims don't run in parallel (each holds the gate for a few
round trips). The pipelined completion + claim (services.pipeline) is not used
there: the completions commit first, then the gated claim.

The rate limit is a fixed window aligned to the period (each second, minute or
hour of the claimer's clock, UTC): at most N tasks are claimed per window, so
a sliding period can see up to 2N at a window boundary (README, "Concurrency
cap and rate limit"). A claimer whose clock is behind the stored window counts
against the stored window, never a fresh one.

A claim is *throttled* when the cap or the rate limit gave it fewer tasks than
it asked for while more were claimable; the gate row counts those
(tasks_throttled_total) and the worker backs off from the stage for a moment
(throttle_pause()).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from django.db import connection
from django.db.models import F

from tasks_app.limits import parse_rate_limit
from tasks_app.models import Stage, StageGate, Task
from tasks_app.services.pg import execute_pipelined, execute_prepared

TASK = connection.ops.quote_name(Task._meta.db_table)
GATE = connection.ops.quote_name(StageGate._meta.db_table)

# How long a worker leaves a stage alone after the cap throttled its claim: a slot frees when some
# task there ends, which nobody announces, so the worker looks again this soon (it also looks at once
# after completing a task there itself). A rate-limited claim waits for its window to open instead.
CAP_PAUSE = 0.2

# The stage's locked tasks, at most `cap` of them (the claim needs only to know whether cap is reached),
# and how many of those have an expired lock (a claim may take those over without adding to the count).
# Through task_locked_idx (status = 'locked', every stage's locked tasks: as many as workers hold, a
# few thousand at most), not task_claim_idx, whose stage range holds the stage's whole backlog: below
# the cap a count through it would read every pending task there. `stage_id + 0` keeps the planner off
# the indexes keyed by stage.
RUNNING_SQL = f"""
SELECT count(*), count(*) FILTER (WHERE locked_until < %(now)s) FROM (
    SELECT locked_until FROM {TASK} WHERE status = 'locked' AND stage_id + 0 = %(stage_id)s LIMIT %(cap)s
) AS running
"""


# The gate row, locked: on PostgreSQL a prepared statement, as the claim and the count (the ORM's query
# compiled per claim cost about as much as the claim itself: bench/claim_scaling.py --controls).
GATE_LOCK_SQL = f"SELECT window_start, window_count FROM {GATE} WHERE stage_id = %(stage_id)s FOR UPDATE"


def gated(stage: Stage) -> bool:
    """Whether claims at `stage` go through its gate (a cap or a rate limit is set)."""
    return stage.max_concurrency is not None or bool(stage.rate_limit)


def stage_rate(stage: Stage) -> tuple[int, int] | None:
    """The stage's rate limit as (N, period seconds); None when blank (or unreadable: stored by raw SQL)."""
    try:
        return parse_rate_limit(stage.rate_limit)
    except ValueError:
        return None


def window_start(now: datetime, period: int) -> datetime:
    """The start of the fixed window of `period` seconds that `now` falls in (aligned to the epoch, UTC)."""
    epoch = now.timestamp()
    return datetime.fromtimestamp(math.floor(epoch / period) * period, UTC)


@dataclass(slots=True)
class Gate:
    """What a claim at a gated stage may take, read under the gate row's lock (gate_enter)."""

    stage: Stage
    asked: int
    allowed: int
    cap_room: int | None  # free slots, None without a cap
    rate_room: int | None  # tokens left in the window, None without a rate limit
    window: datetime | None  # the window this claim counts in
    window_count: int  # tasks claimed in it before this claim
    period: int  # the rate limit's period in seconds (0 without one)
    expired: int = 0  # of the running tasks, those whose lock has expired

    def reclaim_room(self, claimed: int) -> int:
        """How many expired locks the claim may still take over after its first `claimed` tasks.

        Taking over an expired lock leaves the stage's locked count as it is, so a claim the cap cut
        short may still take those (up to what it asked and the window allows): a full cap of dead
        workers' locks doesn't wait for the expiry sweep.
        """
        ceiling = min(x for x in (self.asked, self.rate_room) if x is not None)
        if not self.expired or self.allowed >= ceiling:
            return 0
        return max(0, min(ceiling - claimed, self.expired))


def gate_enter(stage: Stage, *, limit: int, now: datetime) -> Gate:
    """Lock the stage's gate row and work out how many tasks this claim may take. Inside the claim's transaction."""
    assert connection.in_atomic_block
    adapt = connection.ops.adapt_datetimefield_value
    counted: tuple[int, int] | None = None
    if stage.max_concurrency is not None:
        params = {"stage_id": stage.pk, "cap": stage.max_concurrency, "now": adapt(now)}
        if connection.vendor == "postgresql":
            row, counted = _pg_lock_and_count(stage, params)
        else:
            row = _locked_gate(stage)
            with connection.cursor() as cursor:
                cursor.execute(RUNNING_SQL, params)
                counted = cursor.fetchone()
    else:
        row = _locked_gate(stage)
    rate = stage_rate(stage)
    rate_room: int | None = None
    window: datetime | None = None
    window_count = 0
    period = 0
    if rate is not None:
        n, period = rate
        window = window_start(now, period)
        stored = row.window_start
        if stored is not None and stored >= window:
            window, window_count = stored, row.window_count  # this window, or a later one (a clock behind)
        rate_room = max(0, n - window_count)
    cap_room: int | None = None
    expired = 0
    if stage.max_concurrency is not None:
        assert counted is not None
        running, expired = counted
        cap_room = max(0, stage.max_concurrency - running)
    allowed = min(x for x in (limit, cap_room, rate_room) if x is not None)
    return Gate(stage, limit, allowed, cap_room, rate_room, window, window_count, period, expired)


def _pg_lock_and_count(stage: Stage, params: dict[str, Any]) -> tuple[StageGate, tuple[int, int]]:
    """PostgreSQL, a capped stage: lock the gate row and count the stage's locked tasks, pipelined.

    Two statements sent together with the transaction's BEGIN (one round trip instead of three); the
    count is still the second statement, so its snapshot is taken after the first has the gate's lock.
    """
    locked, counting = execute_pipelined((GATE_LOCK_SQL, {"stage_id": stage.pk}), (RUNNING_SQL, params))
    row = locked.fetchone()
    counted = counting.fetchone()
    assert counted is not None
    if row is not None:
        GATES_SEEN.add(stage.pk)
    if row is None:  # the stage's first gated claim: make the row, lock it, count again after the lock
        gate = _locked_gate(stage)
        again = execute_prepared(RUNNING_SQL, params).fetchone()
        assert again is not None
        return gate, (again[0], again[1])
    return StageGate(stage_id=stage.pk, window_start=row[0], window_count=row[1]), (counted[0], counted[1])


# Stages whose gate row this process has seen (rows go only with their stage): a claim there may take
# the one-round-trip path (after_gate_locked); a stage's first claim makes the row on the slower path.
GATES_SEEN: set[int] = set()


def after_gate_locked(stage: Stage, sql: str, params: dict[str, Any]) -> psycopg.Cursor[Any] | None:
    """PostgreSQL: lock the stage's gate row and run `sql` after it, pipelined in one implicit transaction.

    One round trip: the two statements and one Sync, committed at the Sync (outside a Django transaction;
    inside one they join it). `sql` is a later statement than the lock, so its snapshot sees every claim
    that held the gate before. Returns the cursor of `sql`, or None if the gate row was missing (`sql`
    ran unguarded: the caller must not use its rows; it never happens for a stage in GATES_SEEN)."""
    locked, cursor = execute_pipelined((GATE_LOCK_SQL, {"stage_id": stage.pk}), (sql, params))
    if locked.fetchone() is None:
        GATES_SEEN.discard(stage.pk)
        return None
    return cursor


def _locked_gate(stage: Stage) -> StageGate:
    """The stage's gate row, locked FOR UPDATE (PostgreSQL; SQLite's write lock already serialises); made if missing.

    Only its window (window_start, window_count) is read."""
    for _ in range(2):
        if connection.vendor == "postgresql":
            row = execute_prepared(GATE_LOCK_SQL, {"stage_id": stage.pk}).fetchone()
            gate = None if row is None else StageGate(stage_id=stage.pk, window_start=row[0], window_count=row[1])
        else:
            gate = StageGate.objects.filter(stage_id=stage.pk).first()
        if gate is not None:
            GATES_SEEN.add(stage.pk)
            return gate
        # Two first claims at once: one inserts, the other's insert does nothing; both then lock the row.
        StageGate.objects.bulk_create([StageGate(stage_id=stage.pk)], ignore_conflicts=True)
    raise AssertionError(f"stage {stage.pk}'s gate row is missing after it was made")


def gate_leave(gate: Gate, *, claimed: int, claimable_more: bool, now: datetime) -> None:
    """Record the claim in the gate row (the window's count, a throttled claim) and note a pause for the worker.

    `claimable_more`: whether tasks were left claimable that the gate kept this claim from (the caller
    checks only when the gate cut the claim short).
    """
    throttled = gate.allowed < gate.asked and claimed == gate.allowed and claimable_more
    changes: dict[str, Any] = {}
    if gate.window is not None and claimed:  # an older stored window needs no reset: it counts as empty
        changes.update(window_start=gate.window, window_count=gate.window_count + claimed)
    if throttled:
        changes.update(throttled_at=now)
    if changes:
        updated = StageGate.objects.filter(stage_id=gate.stage.pk)
        if throttled:
            updated.update(throttled=F("throttled") + 1, **changes)
        else:
            updated.update(**changes)
    _note_pause(gate, throttled=throttled, claimed=claimed, now=now)


@dataclass(frozen=True, slots=True)
class Pause:
    """How long to leave a stage alone after a throttled claim, and whether the cap (not the rate) did it."""

    seconds: float
    by_cap: bool


def _note_pause(gate: Gate, *, throttled: bool, claimed: int, now: datetime) -> None:
    pauses = _pauses()
    if not throttled:
        pauses.pop(gate.stage.pk, None)
        return
    if gate.rate_room is not None and gate.rate_room - claimed <= 0 and gate.window is not None:
        opens = gate.window + timedelta(seconds=gate.period)
        pauses[gate.stage.pk] = Pause(max((opens - now).total_seconds(), 0.01), by_cap=False)
    else:
        pauses[gate.stage.pk] = Pause(CAP_PAUSE, by_cap=True)


_local = threading.local()


def _pauses() -> dict[int, Pause]:
    pauses: dict[int, Pause] | None = getattr(_local, "pauses", None)
    if pauses is None:
        pauses = _local.pauses = {}
    return pauses


def throttle_pause(stage_id: int) -> Pause | None:
    """How long this thread's last claim at the stage says to wait before claiming there again (None: no need).

    Set by a throttled claim (the rate limit: until its window opens; the cap: CAP_PAUSE) and
    taken by the call, so the worker (worker.loop) asks once per claim.
    """
    return _pauses().pop(stage_id, None)


def throttled_counts() -> dict[int, int]:
    """Throttled claims per stage (stage id -> count) since its gate row was made: tasks_throttled_total."""
    return dict(StageGate.objects.values_list("stage_id", "throttled"))


def retry_after(stage_id: int) -> int | None:
    """throttle_pause in whole seconds (at least 1), for an HTTP Retry-After header; None when not throttled."""
    pause = throttle_pause(stage_id)
    return None if pause is None else max(1, math.ceil(pause.seconds))
