"""Join stages (fan-in): arrivals wait until their group is complete, then one transaction merges them.

A join stage (Stage.kind "join") runs no handler and nobody claims at it (the
workers serve script stages only; the API's claim refuses it). Tasks that
arrive there (sent by a stage, created over the API, by a hook or on the New
task page: any pending task at the stage whose time has come) wait, grouped
by the stage's rule:

- `siblings`: by fan-out (services.fanout): a group is complete when its
  fanout_size tasks have arrived. A task that is not part of any fan-out is a
  group of one and passes at once.
- `count`: by the value at the JSON pointer `join_key` in the payload (a
  missing value counts as null; blank key: one group for all); a group is
  complete at `join_count` arrivals. More arrivals with the same key make the
  next group.

When a group is complete, one transaction completes its arrivals (a
`completed` event on each, a `joined` event on the first) and sends one
merged task out of the join stage through its transitions (normal routing):
type `join_type` (blank: the first arrival's type), payload
`{"parts": [payloads, in arrival order], "key": <the key value, or the
fan-out id>}`, priority the highest of the arrivals'. With `join_timeout`,
a group still incomplete that long after its first arrival is sent on the
same way as type `join_timeout`, with the parts that did arrive and
`"expected"` (its `join_timed_out` event says so). Arrival order is
(available_at, id): when each task became due at the stage, then creation.

Exactly once: the worker's join pass (`tasks_join_sweep`, every worker, every
second and at once on an arrival's notification) takes each join stage under
a lock: PostgreSQL `SELECT ... FOR NO KEY UPDATE SKIP LOCKED` on the stage
row (a second worker skips the stage; arrivals' inserts, which take KEY SHARE
for their foreign key, never wait), SQLite its write lock (transactions
begin IMMEDIATE). Within it, each group's completion is a conditional UPDATE
of its arrivals `WHERE status = 'pending'` that must change all of them, or
the group's savepoint rolls back (a cancel or edit got there first) and the
group is looked at again in the next pass.

A merged send that is refused (no transition passes its type, a schema
refuses it, or the parts are over the payload size limit) leaves the group
pending; the pass logs why, once per group and process, and the stage page
shows the group as ready. A paused join stage joins nothing. Each pass reads
at most SCAN_LIMIT of the stage's waiting arrivals (the earliest), and joins
at most GROUPS_PER_PASS groups, then comes back sooner.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from tasks_app.dedupe_keys import MISSING, resolve
from tasks_app.models import JOIN_COUNT, JOIN_SIBLINGS, JOIN_TIMEOUT_TYPE, Stage, Task, TaskEvent
from tasks_app.services.errors import NoRouteError
from tasks_app.services.routing import Send, tasks_send_many

logger = logging.getLogger("tasks_app")

JOIN_ACTOR = "join"
TIMEOUT_TYPE = JOIN_TIMEOUT_TYPE
SCAN_LIMIT = 10_000  # waiting arrivals one pass reads per stage
GROUPS_PER_PASS = 200  # groups one pass joins per stage (one savepoint each)
_REFUSED_LOGGED_MAX = 10_000

_refused_logged: set[tuple[int, str]] = set()


@dataclass
class Arrival:
    id: int
    type: str
    arrived_at: datetime  # available_at: when it became due at the stage
    priority: int
    fanout_id: int | None
    fanout_size: int | None
    key: Any = None  # the value at join_key (rule count)


@dataclass
class Group:
    """Arrivals that wait to be joined together."""

    ident: str  # stable while the group waits: what identifies it among the stage's groups
    key: Any  # what the merged payload's "key" says
    expected: int
    arrivals: list[Arrival] = field(default_factory=list)
    deadline: datetime | None = None

    @property
    def complete(self) -> bool:
        return len(self.arrivals) >= self.expected

    @property
    def first_at(self) -> datetime:
        return self.arrivals[0].arrived_at

    def label(self) -> str:
        """ "3/5 arrived", as the pages show it."""
        return f"{len(self.arrivals)}/{self.expected} arrived"


# -- JSON pointers --------------------------------------------------------------------------------------


def pointer_value(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 pointer (dedupe_keys.resolve); None when it points at nothing."""
    if not pointer:
        return None  # a blank join_key: every arrival has the same (null) key
    value = resolve(document, pointer)
    return None if value is MISSING else value


def _canonical(value: Any) -> str:
    """Equal JSON values, equal text: sorted keys, integral floats as integers (1.0 and 1 are one key)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- reading the groups ---------------------------------------------------------------------------------


def waiting_arrivals(stage: Stage, *, now: datetime) -> QuerySet[Task]:
    """The stage's arrivals that wait (pending and due), earliest first, at most SCAN_LIMIT."""
    return Task.objects.filter(stage=stage, status=Task.Status.PENDING, available_at__lte=now).order_by(
        "available_at", "id"
    )[:SCAN_LIMIT]


def stage_groups(stage: Stage, *, now: datetime | None = None) -> list[Group]:
    """The join stage's waiting groups, in the order of their first arrival ([] for other stages)."""
    if stage.kind != Stage.Kind.JOIN:
        return []
    now = now or timezone.now()
    columns = ["id", "type", "available_at", "priority", "fanout_id", "fanout_size"]
    by_count = stage.join_rule == JOIN_COUNT
    if by_count:
        columns.append("payload")
    arrivals = []
    for row in waiting_arrivals(stage, now=now).values_list(*columns):
        key = pointer_value(row[6], stage.join_key) if by_count else None
        task_id, type, arrived_at, priority, fanout_id, fanout_size = row[:6]
        arrivals.append(Arrival(task_id, type, arrived_at, priority, fanout_id, fanout_size, key=key))
    return _grouped(stage, arrivals)


def _grouped(stage: Stage, arrivals: list[Arrival]) -> list[Group]:
    open_groups: dict[str, Group] = {}  # the last group of each identity
    made: dict[str, int] = {}  # groups made per identity: the second one of a key is "key:...#1"
    groups: list[Group] = []
    for a in arrivals:
        if stage.join_rule == JOIN_SIBLINGS and a.fanout_id is None:
            base, key, expected = f"task:{a.id}", None, 1
        elif stage.join_rule == JOIN_SIBLINGS:
            base, key, expected = f"fanout:{a.fanout_id}", a.fanout_id, max(a.fanout_size or 1, 1)
        else:
            base, key, expected = f"key:{_canonical(a.key)}", a.key, stage.join_count or 1
        group = open_groups.get(base)
        if group is None or group.complete:
            n = made[base] = made.get(base, -1) + 1
            group = Group(ident=f"{base}#{n}" if n else base, key=key, expected=expected)
            open_groups[base] = group
            groups.append(group)
        group.arrivals.append(a)
    if stage.join_timeout:
        for g in groups:
            g.deadline = g.first_at + timedelta(seconds=stage.join_timeout)
    return groups


def task_group(task: Task, *, now: datetime | None = None) -> Group | None:
    """The waiting group of a pending arrival at a join stage (None otherwise): its task page shows it."""
    if task.stage.kind != Stage.Kind.JOIN or task.status != Task.Status.PENDING:
        return None
    for group in stage_groups(task.stage, now=now):
        if any(a.id == task.pk for a in group.arrivals):
            return group
    return None


# -- the pass -----------------------------------------------------------------------------------------


@dataclass
class JoinPass:
    """What join passes did."""

    joined: int = 0  # groups merged and sent on
    timed_out: int = 0  # groups sent on as join_timeout
    refused: int = 0  # groups ready whose send was refused (still pending)
    backlog: bool = False  # a stage had more ready groups than GROUPS_PER_PASS: pass again soon
    merged: list[int] = field(default_factory=list)  # ids of the tasks sent

    def add(self, other: JoinPass) -> None:
        self.joined += other.joined
        self.timed_out += other.timed_out
        self.refused += other.refused
        self.backlog = self.backlog or other.backlog
        self.merged += other.merged


def join_stages() -> list[Stage]:
    """The join stages a pass visits: every one not paused."""
    return list(Stage.objects.filter(kind=Stage.Kind.JOIN, is_paused=False).order_by("id"))


def tasks_join_sweep(
    *, stages: list[Stage] | None = None, now: datetime | None = None, actor: str = JOIN_ACTOR
) -> JoinPass:
    """One join pass over each join stage (skipping those another worker is passing over)."""
    result = JoinPass()
    for stage in join_stages() if stages is None else stages:
        one = tasks_join_pass(stage, now=now, actor=actor)
        if one is not None:
            result.add(one)
    return result


def tasks_join_pass(
    stage: Stage, *, now: datetime | None = None, max_groups: int = GROUPS_PER_PASS, actor: str = JOIN_ACTOR
) -> JoinPass | None:
    """Join the stage's complete and timed-out groups, under the stage's lock; None if another pass holds it.

    `actor` names who joined in the history (a worker passes its id).
    """
    now = now or timezone.now()
    result = JoinPass()
    with transaction.atomic():
        # The stage as it is now (an edit or a pause since the caller read it counts), locked for this pass.
        locked = (
            Stage.objects.select_for_update(no_key=True, skip_locked=True)
            .filter(pk=stage.pk, kind=Stage.Kind.JOIN, is_paused=False)
            .first()
        )
        if locked is None:
            return None
        for group in stage_groups(locked, now=now):
            timed_out = not group.complete and group.deadline is not None and group.deadline <= now
            if not (group.complete or timed_out):
                continue
            if result.joined + result.timed_out >= max_groups:
                result.backlog = True
                break
            sent = _join(locked, group, now=now, timed_out=timed_out, actor=actor)
            if sent is None:
                result.refused += 1
                continue
            result.merged += sent
            if timed_out:
                result.timed_out += 1
            else:
                result.joined += 1
    return result


class _GroupChanged(Exception):
    """An arrival of the group is no longer pending (cancelled, say): leave the group to the next pass."""


def _join(stage: Stage, group: Group, *, now: datetime, timed_out: bool, actor: str) -> list[int] | None:
    """Complete the group's arrivals and send the merged task, in one savepoint; the ids sent, or None."""
    ids = [a.id for a in group.arrivals]
    try:
        with transaction.atomic():
            updated = Task.objects.filter(pk__in=ids, stage=stage, status=Task.Status.PENDING).update(
                status=Task.Status.COMPLETED, completed_at=now, updated_at=now
            )
            if updated != len(ids):
                raise _GroupChanged
            rows = Task.objects.in_bulk(ids)
            first = rows[ids[0]]
            payload: dict[str, Any] = {"parts": [rows[i].payload for i in ids], "key": group.key}
            if timed_out:
                payload["expected"] = group.expected
                type = TIMEOUT_TYPE
            else:
                type = stage.join_type or first.type
            # The merged task leaves the fan-out it joined: it carries the one its sender was in (a join
            # of a nested fan-out rejoins the outer one), which a 1-to-1 send passes on from its parent
            # (services.fanout). Set on this in-memory parent only: its row is not saved again.
            first.fanout_id, first.fanout_size = _outer_fanout(stage, first)
            send = Send(type, payload, priority=max(a.priority for a in group.arrivals))
            created = tasks_send_many(stage=stage, sends=[send], parent=first, actor=actor, now=now)
            sent = [t.pk for t in created]
            _record(group, ids, sent=sent, now=now, timed_out=timed_out, type=type, actor=actor)
    except _GroupChanged:
        return None
    except (NoRouteError, ValidationError) as exc:
        _log_refused(stage, group, exc)
        return None
    return sent


def _outer_fanout(stage: Stage, first: Task) -> tuple[int | None, int | None]:
    """The fan-out the group's sender was in, if the group is one fan-out and its sender is still there."""
    if stage.join_rule != JOIN_SIBLINGS or first.fanout_id is None or first.fanout_id <= 0:
        return None, None
    row = Task.objects.filter(pk=first.fanout_id).values_list("fanout_id", "fanout_size").first()
    return (row[0], row[1]) if row else (None, None)


def _record(
    group: Group, ids: list[int], *, sent: list[int], now: datetime, timed_out: bool, type: str, actor: str
) -> None:
    joined = {
        "group": group.ident,
        "key": group.key,
        "arrived": len(ids),
        "expected": group.expected,
        "parts": ids,
        "type": type,
        "sent": sent,
    }
    if timed_out:
        waited = round((now - group.first_at).total_seconds(), 3)
        joined["reason"] = f"join timed out {waited:g} s after the group's first arrival: {group.label()}"
    kind = TaskEvent.Kind.JOIN_TIMED_OUT if timed_out else TaskEvent.Kind.JOINED
    events = [TaskEvent(task_id=ids[0], kind=kind, at=now, actor=actor, details=joined)]
    events += [
        TaskEvent(
            task_id=task_id,
            kind=TaskEvent.Kind.COMPLETED,
            at=now,
            actor=actor,
            details={"joined": group.ident, "position": n, "timed_out": timed_out, "sent": sent},
        )
        for n, task_id in enumerate(ids, start=1)
    ]
    TaskEvent.objects.bulk_create(events)


def _log_refused(stage: Stage, group: Group, exc: NoRouteError | ValidationError) -> None:
    why = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
    mark = (stage.pk, group.ident)
    if mark in _refused_logged:
        return
    if len(_refused_logged) >= _REFUSED_LOGGED_MAX:
        _refused_logged.clear()
    _refused_logged.add(mark)
    logger.warning(
        "join stage %s: group %s is ready (%s) but sending it on was refused: %s",
        stage.slug,
        group.ident,
        group.label(),
        why,
        extra={"stage": stage.slug},
    )
