"""The worker's clocks (Cadence, Backoff, nap), its upkeep table, and the advisory-lock key table."""

from __future__ import annotations

import enum
import threading
from typing import Any

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction

from tasks_app.services.locks import LockKey, advisory_xact_lock
from tasks_app.worker import Worker, loop, pacing
from tasks_app.worker.pacing import MAX_BACKOFF, NAP_SLICE, Backoff, Cadence, nap

# -- Cadence -------------------------------------------------------------------------------------


def test_a_cadence_is_due_at_once_then_after_each_interval() -> None:
    c = Cadence(30.0)
    assert c.due(0.0) and c.due(1000.0)
    c.done(1000.0)
    assert c.next_at == 1030.0
    assert not c.due(1029.9)
    assert c.due(1030.0)


def test_tick_takes_a_turn_only_when_due() -> None:
    c = Cadence(5.0)
    assert c.tick(100.0) is True
    assert c.tick(101.0) is False  # done at 100: next at 105
    assert c.tick(105.0) is True
    assert c.next_at == 110.0


def test_jitter_spreads_the_interval_within_its_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        draws.append((a, b))
        return b  # the far end of the range

    monkeypatch.setattr(pacing.random, "uniform", uniform)
    c = Cadence(600.0, jitter=0.1)
    c.done(0.0)
    assert draws == [(0.9, 1.1)]
    assert c.next_at == pytest.approx(660.0)
    # Without jitter, no draw at all.
    Cadence(600.0).done(0.0)
    assert len(draws) == 1


def test_done_after_is_exact_whatever_the_jitter() -> None:
    c = Cadence(3600.0, jitter=0.1)
    c.done(50.0, after=1.0)
    assert c.next_at == 51.0


def test_run_marks_the_turn_done_before_the_action_so_a_failure_waits_for_the_next_turn() -> None:
    c = Cadence(10.0)
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise DatabaseError("gone")

    with pytest.raises(DatabaseError):
        c.run(0.0, broken)
    assert c.run(5.0, broken) is None  # not retried at every step
    assert calls == ["broken"]
    assert c.run(10.0, lambda: "ran") == "ran"


# -- Backoff and nap -----------------------------------------------------------------------------


def test_backoff_doubles_from_half_a_second_up_to_its_ceiling_and_resets() -> None:
    b = Backoff()
    pauses = [b.failed() for _ in range(10)]
    assert pauses[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(pauses) == pauses[-1] == MAX_BACKOFF
    b.reset()
    assert b.seconds == 0.0 and b.failed() == 0.5


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_nap_sleeps_in_slices_until_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(pacing, "time", clock)
    nap(0.6)
    assert clock.sleeps == [NAP_SLICE, NAP_SLICE, pytest.approx(0.6 - 2 * NAP_SLICE)]


def test_nap_returns_as_soon_as_stop_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(pacing, "time", clock)
    nap(3600.0, stop=lambda: len(clock.sleeps) >= 2)
    assert clock.sleeps == [NAP_SLICE, NAP_SLICE]


# -- the worker's upkeep table -------------------------------------------------------------------


def test_every_upkeep_chore_has_its_own_cadence_from_its_setting(settings: Any) -> None:
    settings.TASKS_EXPIRE_INTERVAL = 7.0
    settings.TASKS_PRUNE_INTERVAL = 900.0
    settings.TASKS_WORKER_HEARTBEAT = 2.0
    w = Worker(listen=False, progress_interval=15.0)
    c = w.cadences
    assert w.chores == [
        (c.expiry, w.expire_locks),
        (c.prune, w.prune),
        (c.fold, w.fold_counters),
        (c.waits, w.sweep_waits),
        (c.joins, w.join_groups),
        (c.people, w.remind_and_escalate),
        (c.outbox, w.send_notifications),
        (c.registry, w.report_in),
        (c.progress, w.print_progress),
    ]
    assert (c.expiry.interval, c.prune.interval, c.registry.interval) == (7.0, 900.0, 2.0)
    assert c.waits.interval == 7.0  # the waiting-time limit's sweep runs as often as the expiry sweep
    assert c.people.interval == 7.0  # form tasks' due times and reminders: as often as the expiry sweep
    assert c.joins.interval == loop.JOIN_INTERVAL  # join stages' passes: a constant, no setting
    assert c.outbox.interval == loop.NOTIFY_INTERVAL  # the notification outbox's drain: a constant
    assert (c.fold.interval, c.fold.jitter) == (loop.FOLD_INTERVAL, loop.FOLD_JITTER)  # a constant, no setting
    assert c.prune.jitter == loop.PRUNE_JITTER and c.expiry.jitter == 0.0
    # Distinct objects: one chore's turn never moves another's.
    assert len({id(cadence) for cadence, _ in w.chores}) == len(w.chores)
    # Due at the first step, except the progress line, which waits one interval.
    assert c.expiry.next_at == c.prune.next_at == c.registry.next_at == 0.0
    assert c.progress is not None and c.progress.next_at > 0.0


def test_a_worker_without_a_progress_interval_has_no_progress_chore() -> None:
    w = Worker(listen=False, progress_interval=0)
    assert w.cadences.progress is None
    assert [chore for _, chore in w.chores] == [
        w.expire_locks,
        w.prune,
        w.fold_counters,
        w.sweep_waits,
        w.join_groups,
        w.remind_and_escalate,
        w.send_notifications,
        w.report_in,
    ]


def test_upkeep_runs_only_the_due_chores_and_a_failing_one_waits_for_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = Worker(listen=False, progress_interval=0)
    calls: list[str] = []

    def expire() -> None:
        calls.append("expire")
        raise DatabaseError("gone")

    w.chores = [(w.cadences.expiry, expire), (w.cadences.registry, lambda: calls.append("registry"))]
    w.cadences.registry.next_at = float("inf")  # not due
    with pytest.raises(DatabaseError):
        w.upkeep()
    w.upkeep()  # the failed sweep is not due again before its interval
    assert calls == ["expire"]


STEPS = ("record", "heartbeat", "enforce_max_run_time", "upkeep", "unclaim_unstarted", "claim", "collect")


def traced(monkeypatch: pytest.MonkeyPatch, w: Worker) -> list[str]:
    """Record the coordinator's steps instead of doing them; the first claim takes one fake task, the others none."""
    calls: list[str] = []
    for name in STEPS:
        monkeypatch.setattr(w, name, lambda *a, _name=name, **k: calls.append(_name))

    def claim(*pipelined: object) -> int:
        calls.append("claim")
        if w.stats.claimed:
            return 0
        w.held[1] = None  # type: ignore[assignment]
        w.in_flight.add(1)
        w.stats.claimed += 1
        return 1

    def collect(timeout: float) -> None:
        calls.append("collect")
        w.in_flight.clear()
        w.done.append(w.held[1])

    def record(*, claim: bool = False) -> None:
        calls.append("record")
        w.done.clear()
        w.held.clear()
        if claim:  # as the real one does: the claim goes out with the write
            w.claim()

    monkeypatch.setattr(w, "claim", claim)
    monkeypatch.setattr(w, "collect", collect)
    monkeypatch.setattr(w, "record", record)
    monkeypatch.setattr(w, "flush_due", lambda: bool(w.done))
    return calls


def test_run_once_takes_the_steps_in_the_order_step_does(monkeypatch: pytest.MonkeyPatch) -> None:
    stepper, once = Worker(listen=False), Worker(listen=False)
    for w in (stepper, once):
        w._start_pool()
    try:
        by_step = traced(monkeypatch, stepper)
        while stepper.step():
            pass
        by_run_once = traced(monkeypatch, once)
        assert once.run_once() is True
    finally:
        for w in (stepper, once):
            assert w._pool is not None
            w._pool.stop()
    # The same turns, the upkeep included (the expiry sweep, retention, the registry), which
    # run_once used to skip; only run_once, done with its batch, does not claim again.
    assert by_run_once == [
        *("heartbeat", "enforce_max_run_time", "upkeep", "claim", "collect"),
        *("record", "heartbeat", "enforce_max_run_time", "upkeep"),
    ]
    # step() claims again, with the write (record(claim=True): one round trip for both).
    assert by_step == [*by_run_once[:6], "claim", *by_run_once[6:]]


# -- advisory locks ------------------------------------------------------------------------------


def test_lock_keys_are_distinct_numbers_in_our_block() -> None:
    values = [int(key) for key in LockKey.__members__.values()]  # aliases included: a duplicate shows here
    assert len(values) == len(set(values)) == len(LockKey) >= 2
    assert all(v >> 16 == 0x7A5C for v in values)


def test_the_key_table_refuses_a_duplicate_at_import_time() -> None:
    # As LockKey is declared: a second name for a key already taken is an error, not an alias.
    with pytest.raises(ValueError, match="duplicate"):

        @enum.unique
        class Keys(enum.IntEnum):
            SWEEP = 0x7A5C_0001
            MINE = 0x7A5C_0001


@pytest.mark.django_db(transaction=True)
def test_the_lock_is_taken_inside_a_transaction_only() -> None:
    with pytest.raises(AssertionError, match="outside a transaction"):
        advisory_xact_lock(LockKey.SWEEP)
    with transaction.atomic():
        assert advisory_xact_lock(LockKey.SWEEP) is True


def other_connection() -> psycopg.Connection[Any]:
    s = connection.settings_dict
    return psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], dbname=s["NAME"], password=s["PASSWORD"], autocommit=True
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_key_held_elsewhere_is_refused_or_waited_for_and_other_keys_stay_free() -> None:
    other = other_connection()
    try:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [int(LockKey.PRUNE)]).fetchone() == (True,)
        with transaction.atomic():
            assert advisory_xact_lock(LockKey.PRUNE) is False
            assert advisory_xact_lock(LockKey.SWEEP) is True  # another key: free
        released = threading.Timer(0.2, lambda: other.execute("SELECT pg_advisory_unlock(%s)", [int(LockKey.PRUNE)]))
        released.start()
        with transaction.atomic():
            assert advisory_xact_lock(LockKey.PRUNE, wait=True) is True  # once the other lets go
        released.join()
        # Transaction-scoped: gone with the transaction, so the other session can take it again.
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [int(LockKey.PRUNE)]).fetchone() == (True,)
    finally:
        other.close()
