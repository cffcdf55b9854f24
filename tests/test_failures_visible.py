"""Failures are visible where people look (issue 14, section 1): the list's last error, retrying tasks said
so in the list and on their page alike, free text over the last error, released attempts and errors per
stage (overview) and per worker (workers page, overview).

Read through the URLs and the rendered HTML (tests.support.pages).
"""

from __future__ import annotations

import re
from datetime import timedelta

from django.test import Client
from django.utils import timezone

from tasks_app.models import Stage, Task, WorkerProcess
from tasks_app.services import (
    task_claim,
    task_complete,
    task_create,
    task_fail,
    task_release,
    tasks_expire_locks,
    worker_heartbeat,
    worker_register,
)
from tasks_app.services.counters import counters_fold
from tasks_app.worker import Worker
from tests.support.pages import LIST_URL, SCRIPT, Page, page

ERROR = "ConnectionError: [Errno 111] Connection refused\n  while talking to stock.example:443\n  retry later"


def listed(client: Client, query: dict[str, str] | None = None) -> Page:
    response = client.get(LIST_URL, query)
    assert response.status_code == 200
    return page(response)


def released(stage: Stage, error: str = ERROR, retry_in: float = 17, **payload: object) -> Task:
    """A task of `stage` whose first attempt raised `error`: pending again, waiting `retry_in` seconds."""
    task = task_create(stage=stage, type="order", payload=payload)
    [claim] = task_claim(stage=stage, worker_id="w1")
    assert claim.pk == task.pk
    return task_release(task_id=claim.pk, lock_token=claim.lock_token, error=error, retry_in=retry_in)


def detail_badge(client: Client, task: Task) -> str:
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    match = re.search(r'<span class="badge badge-\w+" title="\w+">([^<]*)</span>', html)
    assert match, "no status badge on the task's page"
    return match.group(1)


# -- the list's last error -------------------------------------------------------------------------


def test_failed_and_retrying_rows_show_the_first_line_of_the_last_error_and_all_of_it_on_expand(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    retrying = released(world["review"])
    failed = task_create(stage=world["notify"], type="order", payload={})
    [claim] = task_claim(stage=world["notify"], worker_id="w1")
    task_fail(task_id=claim.pk, lock_token=claim.lock_token, error="ValueError: no address\nin field 'to'")
    done = task_create(stage=world["ship"], type="order", payload={})
    [claim] = task_claim(stage=world["ship"], worker_id="w1")
    task_complete(task_id=claim.pk, lock_token=claim.lock_token)
    fresh = task_create(stage=world["review"], type="order", payload={})

    response = admin_client.get(LIST_URL)
    rows = page(response).rows
    html = response.content.decode()

    assert "Last error" in page(response).headers
    # The cell shows the message (first line); the rest is in the expandable part and the hover title.
    assert rows[retrying.pk]["Last error"].startswith("ConnectionError: [Errno 111] Connection refused ")
    assert "retry later" in rows[retrying.pk]["Last error"]  # the <pre> inside <details>
    assert rows[failed.pk]["Last error"] == "ValueError: no address ValueError: no address in field 'to'"
    assert rows[retrying.pk]["Last error"].count("Connection refused") == 2
    assert rows[done.pk]["Last error"] == "" and rows[fresh.pk]["Last error"] == ""
    cell = re.search(rf'<tr id="task-{retrying.pk}">.*?<td class="last-error">(.*?)</td>', html, re.DOTALL)
    assert cell is not None
    summary = re.search(r'<summary class="error" title="([^"]*)">([^<]*)</summary>', cell.group(1))
    assert summary is not None
    assert summary.group(2) == "ConnectionError: [Errno 111] Connection refused"
    assert "while talking to stock.example:443" in summary.group(1)  # the full text on hover


def test_the_last_error_is_escaped_in_the_list(admin_client: Client, world: dict[str, Stage]) -> None:
    task = released(world["review"], error=f"RuntimeError: {SCRIPT}")

    html = admin_client.get(LIST_URL).content.decode()

    assert SCRIPT not in html
    assert "RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert listed(admin_client).rows[task.pk]["Last error"].startswith(f"RuntimeError: {SCRIPT}")


def test_the_rows_refresh_shows_the_last_error_too(admin_client: Client, world: dict[str, Stage]) -> None:
    released(world["review"])

    html = admin_client.get("/tasks/rows/").content.decode()

    assert '<td class="last-error"><details><summary class="error"' in html


# -- retrying, not "pending" -----------------------------------------------------------------------


def test_a_pending_task_that_failed_attempts_says_retrying_with_its_attempt_and_wait(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    task = released(world["review"], retry_in=17)

    status = listed(admin_client).rows[task.pk]["Status"]

    # Attempt 2 is the one it waits to make (attempts so far: 1).
    assert status in ("Retrying · attempt 2 · next in 17 s", "Retrying · attempt 2 · next in 16 s")
    assert listed(admin_client).rows[task.pk]["Attempts"] == "1"
    assert detail_badge(admin_client, task) == status  # the list and the task's page agree


def test_a_retrying_task_whose_backoff_passed_says_due(admin_client: Client, world: dict[str, Stage]) -> None:
    task = released(world["review"], retry_in=0)
    [claim] = task_claim(stage=world["review"], worker_id="w2")  # attempt 2 fails too
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error=ERROR, retry_in=0)

    status = listed(admin_client).rows[task.pk]["Status"]

    assert status == "Retrying · attempt 3 · due"
    assert detail_badge(admin_client, task) == "Retrying · attempt 3 · due"
    assert "Pending for" not in admin_client.get(f"/tasks/{task.pk}/").content.decode()


def test_a_task_never_attempted_still_says_pending_for(admin_client: Client, world: dict[str, Stage]) -> None:
    task = task_create(stage=world["review"], type="order", payload={})
    later = task_create(
        stage=world["review"], type="order", payload={}, available_at=timezone.now() + timedelta(minutes=5)
    )

    rows = listed(admin_client).rows

    assert rows[task.pk]["Status"].startswith("Pending for ")
    # Waiting, but not a retry: scheduled (issue 15's run-at), at its time in the viewer's zone.
    assert rows[later.pk]["Status"].startswith("Scheduled for ")
    assert rows[later.pk]["Status"].endswith(("(in 5 min)", "(in 4 min)"))


# -- free text over the last error -----------------------------------------------------------------


def test_free_text_finds_a_task_by_its_last_error(admin_client: Client, world: dict[str, Stage]) -> None:
    broken = released(world["review"])
    other = released(world["review"], error="TimeoutError: read timed out")
    quiet = task_create(stage=world["review"], type="order", payload={"note": "fine"})

    assert listed(admin_client, {"q": "ConnectionError"}).order == [broken.pk]
    assert listed(admin_client, {"q": "connectionerror"}).order == [broken.pk]  # case-insensitive, as for payloads
    assert set(listed(admin_client, {"q": "Error"}).order) == {broken.pk, other.pk}
    assert listed(admin_client, {"q": "fine"}).order == [quiet.pk]  # payload text still matches
    rows = admin_client.get("/tasks/rows/", {"q": "ConnectionError"}).content.decode()
    assert f'id="task-{broken.pk}"' in rows and f'id="task-{other.pk}"' not in rows


def test_the_error_filter_matches_the_last_error_in_the_list_and_the_api(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    broken = released(world["review"])
    released(world["review"], error="TimeoutError: read timed out")

    query = {"stage": "review", "status": "pending", "error": "Connection refused"}
    assert listed(admin_client, query).order == [broken.pk]
    api = admin_client.get("/api/tasks/", query).json()
    assert [t["id"] for t in api["results"]] == [broken.pk]
    # The filter is visible (and removable) in the list's form.
    field = next(i for i in listed(admin_client, query).inputs if i.get("name") == "error")
    assert field["value"] == "Connection refused"


# -- per stage: the overview -----------------------------------------------------------------------


def attempts_row(html: str, slug: str) -> dict[str, str]:
    """The overview's "Retries and errors per stage" row of a stage: {column header: cell text}."""
    table = re.search(r'<table class="tasks attempts">(.*?)</table>', html, re.DOTALL)
    assert table is not None, "no per-stage attempts table"
    headers = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th>(.*?)</th>", table.group(1))]
    row = re.search(rf'<tr id="attempts-{slug}">(.*?)</tr>', table.group(1), re.DOTALL)
    assert row is not None
    cells = [
        " ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<td>(.*?)</td>", row.group(1), re.DOTALL)
    ]
    return dict(zip(headers, cells, strict=True))


def test_the_overview_counts_released_expired_and_failed_attempts_per_stage(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    # review: stuck in a retry loop: two released attempts, one task waiting to retry; nothing failed.
    task = released(world["review"], retry_in=0)
    [claim] = task_claim(stage=world["review"], worker_id="w1")
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error=ERROR, retry_in=60)
    # ship: a worker went silent; its lock expired.
    hour_ago = timezone.now() - timedelta(hours=1)
    task_create(stage=world["ship"], type="order", payload={}, now=hour_ago)
    task_claim(stage=world["ship"], worker_id="w-gone", lock_timeout=1, now=hour_ago)
    assert tasks_expire_locks() == 1
    # Folded as the workers' upkeep and /metrics would (PostgreSQL's fold leaves the last seconds to settle).
    counters_fold(now=timezone.now() + timedelta(minutes=5))

    html = admin_client.get("/overview/").content.decode()

    review = attempts_row(html, "review")
    assert (review["Retrying now"], review["Released"], review["Lock expired"], review["Failed"]) == (
        "1",
        "2",
        "0",
        "0",
    )
    ship = attempts_row(html, "ship")
    assert (ship["Retrying now"], ship["Released"], ship["Lock expired"]) == ("1", "0", "1")
    # In the graph too: the review box says it is retrying, in the warning colour.
    assert re.search(r'<text [^>]*class="meta retries warn">1 retrying · 2 released · 0 expired</text>', html)
    assert Task.objects.get(pk=task.pk).status == Task.Status.PENDING


# -- per worker: the workers page and the overview --------------------------------------------------


def worker_cells(html: str, worker_id: str) -> dict[str, str]:
    headers = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th>(.*?)</th>", html)]
    for tr in re.findall(r"<tr>(.*?)</tr>", html, re.DOTALL):
        cells = [" ".join(re.sub(r"<[^>]+>", "", c).split()) for c in re.findall(r"<td>(.*?)</td>", tr, re.DOTALL)]
        if cells and cells[0] == worker_id:
            return dict(zip(headers, cells, strict=True))
    raise AssertionError(f"no row for {worker_id}")


def test_a_worker_reports_its_released_attempts_and_the_pages_show_them(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    world["review"].handler = "tests.handlers.boom"
    world["review"].save()
    task_create(stage=world["review"], type="order", payload={})
    task_create(stage=world["review"], type="order", payload={})

    stats = Worker(stage_slugs=["review"], worker_id="w-loop").run(once=True)

    assert (stats.done, stats.failed, stats.released) == (0, 0, 2)
    row = WorkerProcess.objects.get(worker_id="w-loop")
    assert (row.tasks_done, row.tasks_failed, row.tasks_released) == (0, 0, 2)
    cells = worker_cells(admin_client.get("/workers/").content.decode(), "w-loop")
    assert (cells["Done"], cells["Released after an error"], cells["Failed"]) == ("0", "2", "0")


def test_the_heartbeat_carries_the_released_count_to_the_overview(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    worker_register(worker_id="w-live", stages=["review"], concurrency=1)
    worker_heartbeat(worker_id="w-live", done=40, failed=1, released=26, current=[])

    html = admin_client.get("/overview/").content.decode()

    assert "w-live on " in html
    assert re.search(r"w-live on [^:]+: 40 done, 26 released after an error, 1 failed, holding 0", html)


def test_the_retrying_links_list_exactly_the_tasks_waiting_to_retry(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    retrying = released(world["review"], retry_in=60)
    task_create(stage=world["review"], type="order", payload={})  # pending, never attempted

    overview = page(admin_client.get("/overview/"))
    link = "/tasks/?stage=review&status=pending&attempts_min=1"
    assert link in overview.hrefs()
    assert link in page(admin_client.get("/stages/review/")).hrefs()

    assert listed(admin_client, {"stage": "review", "status": "pending", "attempts_min": "1"}).order == [retrying.pk]
    field = next(i for i in listed(admin_client, {"attempts_min": "1"}).inputs if i.get("name") == "attempts_min")
    assert field["value"] == "1"
    assert admin_client.get(LIST_URL, {"attempts_min": "lots"}).status_code == 400  # said, not ignored
