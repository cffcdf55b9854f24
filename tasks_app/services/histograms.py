"""Claim and handler duration histograms, per stage, observed in worker processes.

Each worker records into an in-process registry keyed by its worker id and
writes its cumulative snapshot into its WorkerProcess row with every registry
heartbeat (services/workers.py); /metrics (views/prometheus.py) sums the
snapshots of every row, stopped workers' too, so the sums never go down when
a worker exits. Only workers registered in this process
(services.worker_register) are recorded, so claims made through the API by
other clients cost nothing and grow no memory.
"""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from django.core.cache import cache
from django.db.models import Case, F, JSONField, When

from tasks_app.models import WorkerProcess

# Upper bounds in seconds, shared by every worker and by /metrics.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HISTOGRAMS = ("claim", "handler")
SNAPSHOT_VERSION = 1

# worker id -> histogram name -> stage slug -> [counts per bucket (+Inf last)..., sum]
Registry = dict[str, dict[str, list[float]]]
_lock = threading.Lock()
_workers: dict[str, Registry] = {}


def _empty() -> list[float]:
    return [0] * (len(BUCKETS) + 1) + [0.0]


def _from_snapshot(snapshot: object) -> Registry:
    """A worker's registry continued from its row's snapshot (a reused worker id keeps counting up)."""
    registry: Registry = {name: {} for name in HISTOGRAMS}
    for name, stages in _histograms_of(snapshot):
        for stage, (counts, total) in stages.items():
            registry[name][stage] = [*counts, total]
    return registry


def worker_opened(worker_id: str, previous: object = None) -> None:
    """Start recording the histograms of a worker running in this process."""
    with _lock:
        _workers[worker_id] = _from_snapshot(previous)


def worker_closed(worker_id: str) -> None:
    """Stop recording a worker (after its last snapshot was written)."""
    with _lock:
        _workers.pop(worker_id, None)


def observe(name: str, *, worker_id: str, stage: str, seconds: float) -> None:
    """Count one duration; a no-op for workers not registered in this process."""
    with _lock:
        registry = _workers.get(worker_id)
        if registry is None:
            return
        values = registry[name].get(stage)
        if values is None:
            values = registry[name][stage] = _empty()
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= seconds.
        values[bisect_left(BUCKETS, seconds)] += 1
        values[-1] += seconds


def snapshot(worker_id: str) -> dict[str, Any] | None:
    """The worker's cumulative histograms as JSON for WorkerProcess.metrics (None if not recorded here)."""
    with _lock:
        registry = _workers.get(worker_id)
        if registry is None:
            return None
        out: dict[str, Any] = {"version": SNAPSHOT_VERSION, "buckets": list(BUCKETS)}
        for name, stages in registry.items():
            out[name] = {
                stage: {"counts": [int(n) for n in values[:-1]], "sum": values[-1]} for stage, values in stages.items()
            }
        return out


def _histograms_of(snapshot: object) -> Iterable[tuple[str, dict[str, tuple[list[int], float]]]]:
    """(name, {stage: (counts, sum)}) from one snapshot; nothing for snapshots with other buckets."""
    if not isinstance(snapshot, dict) or snapshot.get("version") != SNAPSHOT_VERSION:
        return
    if snapshot.get("buckets") != list(BUCKETS):
        return  # written by a version with other bounds: can't be added to these
    size = len(BUCKETS) + 1
    for name in HISTOGRAMS:
        stages = snapshot.get(name) or {}
        yield name, {s: (list(h["counts"]), float(h["sum"])) for s, h in stages.items() if len(h["counts"]) == size}


Merged = dict[str, dict[str, tuple[list[int], float]]]  # histogram name -> stage -> (counts per bucket, sum)


def merge_snapshots(snapshots: Iterable[object], start: Merged | None = None) -> Merged:
    """Sum many workers' snapshots (onto `start`, which is left as it was)."""
    merged: Merged = {name: dict((start or {}).get(name, {})) for name in HISTOGRAMS}
    for snap in snapshots:
        for name, stages in _histograms_of(snap):
            for stage, (counts, total) in stages.items():
                old_counts, old_total = merged[name].get(stage, ([0] * len(counts), 0.0))
                merged[name][stage] = ([a + b for a, b in zip(old_counts, counts, strict=True)], old_total + total)
    return merged


STOPPED_CACHE_TTL = 24 * 3600


def worker_histograms() -> Merged:
    """Every worker's histograms summed, stopped workers' included (so a worker's exit loses nothing).

    Rows accumulate (one per worker start), but a stopped worker's snapshot is
    final: their sum is cached per set of stopped rows, and a scrape reads
    only the running workers' snapshots. One query tells both apart, so a
    worker stopping meanwhile is counted exactly once.
    """
    live_only = Case(When(stopped_at__isnull=True, then=F("metrics")), default=None, output_field=JSONField())
    rows = list(WorkerProcess.objects.annotate(live=live_only).values_list("id", "stopped_at", "live"))
    stopped = sorted((pk, at) for pk, at, _ in rows if at is not None)
    key = "tasks_app:metrics:stopped:" + hashlib.sha256(repr(stopped).encode()).hexdigest()
    base = cache.get(key)
    if base is None:
        ids = [pk for pk, _ in stopped]
        base = merge_snapshots(WorkerProcess.objects.filter(pk__in=ids).values_list("metrics", flat=True).iterator())
        cache.set(key, base, STOPPED_CACHE_TTL)
    return merge_snapshots((live for _, at, live in rows if at is None), start=base)
