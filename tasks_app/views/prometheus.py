"""GET /metrics: the engine's numbers in Prometheus text format.

Who may read it (settings TASKS_METRICS_TOKEN, TASKS_METRICS_ALLOW):
- a request with `Authorization: Bearer <TASKS_METRICS_TOKEN>`; a wrong token
  is refused with 401 (even from an allowed address: a scraper sending a
  stale token should be noticed, not waved through);
- a request from an address in TASKS_METRICS_ALLOW (IPs or CIDR networks,
  matched against REMOTE_ADDR, the direct peer: behind a reverse proxy use
  the token, as X-Forwarded-For can be forged);
- a logged-in user with the view-task permission, who sees the same numbers
  on the overview page.
Anyone else gets 401 (a token would let them in), 403 (only an allow-list is
set, or a user without the permission), or 404 when neither setting is set:
the endpoint is off until it is configured.

The body is computed at most once per TASKS_METRICS_CACHE seconds per
process: one counter fold (services/counters.py) and a handful of small queries.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator, Sequence
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from tasks_app.models import Stage, TaskEvent
from tasks_app.selectors.overview import live_counts
from tasks_app.selectors.workers import live_workers
from tasks_app.services.counters import EXPIRED_FAILED, claim_counts, counter_values, counters_fold
from tasks_app.services.due import COUNT_CAP as OVERDUE_CAP
from tasks_app.services.due import overdue_counts
from tasks_app.services.flow_limits import throttled_counts
from tasks_app.services.histograms import BUCKETS, worker_histograms
from tasks_app.services.join import stage_groups

CACHE_KEY = "tasks_app:metrics"

# Metric name (without _total), help, and the history kinds it adds up.
COUNTERS: Sequence[tuple[str, str, Sequence[str]]] = (
    ("tasks_created", "Tasks created at the stage (sent, created by API, hook or person, duplicated).", ["created"]),
    (
        "tasks_completed",
        "Tasks completed at the stage (by a handler or a form, or marked completed by a person).",
        ["completed", "marked_completed"],
    ),
    (
        "tasks_failed",
        "Tasks failed at the stage (permanent failure, max attempts, or an expired lock at max attempts).",
        ["failed", EXPIRED_FAILED],
    ),
    (
        "tasks_cancelled",
        "Tasks cancelled at the stage (at once when pending or failed, or a held task's completion after a cancel "
        "request).",
        ["cancelled"],
    ),
    (
        "tasks_deduplicated",
        "Arrivals at the stage that created nothing: a pending or locked task there had their dedupe key "
        "(the stage's dedupe_on), and got a deduplicated event.",
        ["deduplicated"],
    ),
    (
        "tasks_overdue",
        "Tasks that waited at the stage past its max_wait (each once; with an on_timeout type, sent on as it).",
        ["wait_exceeded"],
    ),
    (
        "tasks_joined",
        "Groups a join stage completed and sent on as one merged task (all siblings arrived, or join_count).",
        ["joined"],
    ),
    (
        "tasks_join_timeouts",
        "Groups a join stage sent on as join_timeout, incomplete after its join_timeout.",
        ["join_timed_out"],
    ),
    (
        "tasks_notified",
        "Notifications delivered about the stage's arrivals (mail or webhook; one per task a message listed, "
        "per recipient).",
        ["notified"],
    ),
    (
        "tasks_notify_failed",
        "Notification attempts that failed (retried with backoff; per task the message listed, per recipient).",
        ["notify_failed"],
    ),
    (
        "tasks_released",
        "Locked tasks handed back to pending (handler error, worker shutdown, or force-released by a person).",
        ["released", "force_released"],
    ),
    (
        "tasks_lock_expired",
        "Expired locks swept back to pending or failed, or taken over by a claim (the worker went silent).",
        ["lock_expired"],
    ),
)
HISTOGRAMS = (
    ("claim", "tasks_claim_duration_seconds", "Time a worker's claim statement took, per stage."),
    ("handler", "tasks_handler_duration_seconds", "Time a handler ran, per stage."),
)


class TasksCollector:
    """Reads the database when collected: the counters (folded first), backlog, workers, histograms."""

    def collect(self) -> Iterator[Metric]:
        counters_fold()
        slugs = dict(Stage.objects.values_list("id", "slug"))
        yield from self._counters(slugs)
        yield from self._backlog(slugs)
        yield self._workers()
        yield from self._histograms()

    def _counters(self, slugs: dict[int, str]) -> Iterator[Metric]:
        values = counter_values()
        stages = sorted(slugs.items(), key=lambda item: item[1])
        for name, doc, kinds in COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["stage"])
            for stage_id, slug in stages:
                family.add_metric([slug], sum(values.get((stage_id, kind), 0) for kind in kinds))
            yield family
        # Claims write no event: counted by the events that end them, and live ones by the locked tasks.
        claims = claim_counts()
        claimed = CounterMetricFamily(
            "tasks_claimed", "Claims of the stage's tasks (workers, people opening a form, reclaims).", labels=["stage"]
        )
        for stage_id, slug in stages:
            claimed.add_metric([slug], claims.get(stage_id, 0))
        yield claimed
        # Claims the stage's concurrency cap or rate limit cut short: counted in its gate row (services.flow_limits).
        gates = throttled_counts()
        throttled = CounterMetricFamily(
            "tasks_throttled",
            "Claims at the stage that its concurrency cap or rate limit cut short while tasks were claimable.",
            labels=["stage"],
        )
        for stage_id, slug in stages:
            throttled.add_metric([slug], gates.get(stage_id, 0))
        yield throttled
        events = CounterMetricFamily("tasks_events", "History events per stage and kind.", labels=["stage", "kind"])
        for stage_id, slug in stages:
            for kind in TaskEvent.Kind.values:
                events.add_metric([slug, kind], values.get((stage_id, kind), 0))
        yield events

    def _backlog(self, slugs: dict[int, str]) -> Iterator[Metric]:
        # The overview's query: exact, through the claim index's partial predicate.
        now = timezone.now()
        live = live_counts(now=now)
        pending = GaugeMetricFamily(
            "tasks_pending",
            "Pending tasks at the stage (due, waiting to retry, or scheduled for later: tasks_scheduled).",
            labels=["stage"],
        )
        scheduled = GaugeMetricFamily(
            "tasks_scheduled",
            "Pending tasks at the stage held back for a run-at time (never tried, available_at ahead; the task "
            "list's scheduled filter). Part of tasks_pending.",
            labels=["stage"],
        )
        locked = GaugeMetricFamily("tasks_locked", "Locked tasks at the stage (expired locks too).", labels=["stage"])
        age = GaugeMetricFamily(
            "tasks_oldest_pending_age_seconds",
            "How long the longest-waiting due pending task at the stage has waited (since it became due: its "
            "arrival, or its run-at time if later and never tried; as max_wait counts); 0 when none is due.",
            labels=["stage"],
        )
        for stage_id, slug in sorted(slugs.items(), key=lambda item: item[1]):
            counts = live.get(stage_id, {})
            oldest = counts.get("oldest_pending")
            pending.add_metric([slug], counts.get("pending", 0))
            scheduled.add_metric([slug], counts.get("scheduled", 0))
            locked.add_metric([slug], counts.get("locked", 0))
            age.add_metric([slug], max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
        yield from (pending, scheduled, locked, age)
        yield self._overdue(slugs)
        yield self._join_groups()

    def _overdue(self, slugs: dict[int, str]) -> Metric:
        # Issue 16 (services.due.overdue_counts): live tasks overdue now by either rule; tasks_overdue_total
        # counts the max_wait rule's flags over time, this gauge what is overdue at this moment.
        ruled = Stage.objects.filter(Q(due_after__isnull=False) | Q(max_wait__isnull=False))
        counts = overdue_counts(ruled)
        gauge = GaugeMetricFamily(
            "tasks_overdue_now",
            "Tasks overdue at the stage now: not completed past its due_after (pending or open), or pending past "
            f"its max_wait; a task overdue by both counted once, at most {OVERDUE_CAP} per stage.",
            labels=["stage"],
        )
        for stage_id, slug in sorted(slugs.items(), key=lambda item: item[1]):
            gauge.add_metric([slug], counts.get(stage_id, 0))
        return gauge

    def _join_groups(self) -> Metric:
        # Each join stage's waiting groups (services.join: a bounded read of its waiting arrivals).
        waiting = GaugeMetricFamily(
            "tasks_join_groups_waiting", "Groups waiting at a join stage for more arrivals.", labels=["stage"]
        )
        for stage in Stage.objects.filter(kind=Stage.Kind.JOIN).order_by("slug"):
            waiting.add_metric([stage.slug], sum(1 for g in stage_groups(stage) if not g.complete))
        return waiting

    def _workers(self) -> Metric:
        live = live_workers().count()
        return GaugeMetricFamily("tasks_workers_live", "Worker processes running and heard from lately.", value=live)

    def _histograms(self) -> Iterator[Metric]:
        merged = worker_histograms()
        bounds = [*(str(b) for b in BUCKETS), "+Inf"]
        for key, name, doc in HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=["stage"])
            for stage, (counts, total) in sorted(merged[key].items()):
                cumulative, running = [], 0
                for bound, n in zip(bounds, counts, strict=True):
                    running += n
                    cumulative.append((bound, running))
                family.add_metric([stage], cumulative, sum_value=total)
            yield family


REGISTRY = CollectorRegistry()  # private: nothing else of the process is exported
REGISTRY.register(TasksCollector())


def _address_allowed(remote: str, allowed: Sequence[str]) -> bool:
    try:
        address: Any = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in ipaddress.ip_network(net, strict=False) for net in allowed)


def _unauthorized(message: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def refusal(request: HttpRequest) -> HttpResponse | None:
    """None if the request may read /metrics, otherwise the response that refuses it."""
    token: str = settings.TASKS_METRICS_TOKEN
    allowed: Sequence[str] = settings.TASKS_METRICS_ALLOW
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer":
        if hmac.compare_digest(presented.strip().encode(), token.encode()):
            return None
        return _unauthorized("Wrong metrics token.")
    if allowed and _address_allowed(request.META.get("REMOTE_ADDR", ""), allowed):
        return None
    if request.user.is_authenticated:
        if request.user.has_perm("tasks_app.view_task"):
            return None
        return HttpResponse("You may not view tasks.\n", status=403, content_type="text/plain")
    if not token and not allowed:
        return HttpResponse(
            "Metrics are off: set TASKS_METRICS_TOKEN or TASKS_METRICS_ALLOW.\n", status=404, content_type="text/plain"
        )
    if token:
        return _unauthorized("Send Authorization: Bearer <TASKS_METRICS_TOKEN>.")
    return HttpResponse("Your address is not in TASKS_METRICS_ALLOW.\n", status=403, content_type="text/plain")


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    refused = refusal(request)
    if refused is not None:
        return refused
    body = cache.get(CACHE_KEY)
    if body is None:
        body = generate_latest(REGISTRY)
        if settings.TASKS_METRICS_CACHE > 0:
            cache.set(CACHE_KEY, body, settings.TASKS_METRICS_CACHE)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
