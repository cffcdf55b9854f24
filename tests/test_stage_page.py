"""A stage's page (/stages/<slug>/, issue 14 section 1): settings, schemas, counts, recent errors grouped by
message with links to the matching tasks, job runs and Run now, the hook's curl, Pause/Resume; every
button permission-checked, CSRF-protected and recorded; stage names link to it.

Read through the URLs and the rendered HTML (tests.support.pages).
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlparse

from django.contrib.admin.models import CHANGE, LogEntry
from django.test import Client
from django.utils import timezone

from tasks_app.models import JobRun, Stage, Task, Transition
from tasks_app.selectors import stages as stage_reads
from tasks_app.services import task_claim, task_create, task_fail, task_release
from tests.support.pages import SCRIPT, page, shown_messages
from tests.support.users import OPERATOR_PERMS, logged_in, make_user

CONNECTION = "ConnectionError: [Errno 111] Connection refused\nTraceback-ish detail"


def fail_once(stage: Stage, error: str, *, for_good: bool = False, **payload: Any) -> Task:
    """A task of `stage` whose attempt raised `error`: released to retry, or failed for good."""
    task = task_create(stage=stage, type="order", payload=payload)
    [claim] = task_claim(stage=stage, worker_id="w1")
    assert claim.pk == task.pk
    if for_good:
        task_fail(task_id=claim.pk, lock_token=claim.lock_token, error=error)
    else:
        task_release(task_id=claim.pk, lock_token=claim.lock_token, error=error, retry_in=600)
    return Task.objects.get(pk=task.pk)


def make_job_stage(**fields: Any) -> Stage:
    stage = Stage.objects.create(
        slug="nightly",
        name="Nightly digest",
        kind=Stage.Kind.JOB,
        schedule="0 3 * * *",
        handler="tests.handlers.digest",
        **fields,
    )
    outbox = Stage.objects.create(slug="outbox", name="Outbox", kind=Stage.Kind.SCRIPT, handler="tests.handlers.noop")
    Transition.objects.create(source=stage, target=outbox, task_type="digest")
    return stage


def facts(html: str) -> dict[str, str]:
    """The <dt>/<dd> pairs of a page, as text (the first of each name: the Tasks card before the counters)."""
    out: dict[str, str] = {}
    for dt, dd in re.findall(r"<dt>(.*?)</dt>\s*<dd[^>]*>(.*?)</dd>", html, re.DOTALL):
        out.setdefault(text_of(dt), text_of(dd))
    return out


def text_of(fragment: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def stage_changer() -> Client:
    """A user who may view tasks and change stages, not a superuser."""
    return logged_in(make_user("lead", *OPERATOR_PERMS, "change_stage"))


# -- what the page shows ---------------------------------------------------------------------------


def test_the_stage_page_shows_settings_schemas_counts_and_routes(admin_client: Client, world: dict[str, Stage]) -> None:
    review = world["review"]
    review.max_attempts = 5
    review.schemas = {"approved": {"type": "object", "title": "Approved order", "required": ["amount"]}}
    review.description = "Checks each order."
    review.save()
    fail_once(review, CONNECTION)
    task_create(stage=review, type="order", payload={})

    response = admin_client.get("/stages/review/")

    assert response.status_code == 200
    text = page(response).text
    dl = facts(response.content.decode())
    assert "Review review · Script stage" in text
    assert "Running" in text
    assert dl["Handler"] == "tests.handlers.approve_small"
    assert (dl["Max attempts"], dl["Lock timeout"], dl["Description"]) == ("5", "300 s", "Checks each order.")
    assert (dl["Pending"], dl["Locked"]) == ("2", "0")
    assert dl["Retrying"] == "1 pending after a failed attempt"
    assert dl["Receives"] == "intake (any type)"
    assert dl["Sends"] == "approved → audit , approved → ship , declined → notify"
    assert '"title": "Approved order"' in text  # the schema, indented JSON
    hrefs = page(response).hrefs()
    assert "/tasks/?stage=review&status=pending" in hrefs
    assert "/stages/intake/" in hrefs and "/stages/ship/" in hrefs


def test_recent_errors_are_grouped_by_message_with_a_count_and_a_link_to_the_matching_tasks(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    review = world["review"]
    refused = [fail_once(review, CONNECTION, n=i) for i in range(3)]
    # The same message with other details below it is the same group (grouped by the first line).
    refused.append(fail_once(review, "ConnectionError: [Errno 111] Connection refused\nat another place"))
    failed = fail_once(review, "ValueError: amount is negative", for_good=True)
    fail_once(world["ship"], CONNECTION)  # another stage's errors are not this stage's

    response = admin_client.get("/stages/review/")
    html = response.content.decode()

    rows = re.findall(r'<tr>\s*<td class="error"><code>([^<]*)</code></td>\s*<td><a href="([^"]*)">([^<]*)</a>', html)
    assert [(message, count) for message, _, count in rows] == [
        ("ConnectionError: [Errno 111] Connection refused", "4 tasks"),
        ("ValueError: amount is negative", "1 task"),
    ]
    link = rows[0][1].replace("&amp;", "&")
    assert parse_qs(urlparse(link).query) == {
        "stage": ["review"],
        "status": ["pending"],
        "error": ["ConnectionError: [Errno 111] Connection refused"],
    }
    listed = page(admin_client.get(link)).order
    assert sorted(listed) == sorted(t.pk for t in refused)  # exactly the group's tasks
    failed_link = rows[1][1].replace("&amp;", "&")
    assert page(admin_client.get(failed_link)).order == [failed.pk]


def test_recent_errors_read_a_bounded_window_of_tasks(world: dict[str, Stage]) -> None:
    review = world["review"]
    old = fail_once(review, "OldError: before the window")
    for i in range(3):
        fail_once(review, "NewError: in the window", n=i)

    groups = stage_reads.stage_recent_errors(review, live_rows=3, failed_rows=3)

    # Only the latest 3 live tasks are read: the oldest one's error is outside the window.
    assert [(g.message, g.count) for g in groups] == [("NewError: in the window", 3)]
    assert old.pk not in [g.latest_id for g in groups]


def test_error_messages_and_stage_texts_are_escaped(admin_client: Client, world: dict[str, Stage]) -> None:
    review = world["review"]
    review.description = SCRIPT
    review.save()
    fail_once(review, f"RuntimeError: {SCRIPT}")

    html = admin_client.get("/stages/review/").content.decode()

    assert SCRIPT not in html
    assert "RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_job_stage_shows_its_next_due_time_and_last_runs(admin_client: Client, db: None) -> None:
    stage = make_job_stage()
    due = timezone.now().replace(microsecond=0) - timedelta(days=1)
    JobRun.objects.create(
        stage=stage, due_at=due, status=JobRun.Status.FAILED, worker_id="sched-1", error="RuntimeError: broke\ntb"
    )

    response = admin_client.get("/stages/nightly/")

    text = page(response).text
    expected = stage_reads.next_due(stage)
    assert expected is not None and expected > timezone.now()
    assert f"Next due: {timezone.localtime(expected):%Y-%m-%d %H:%M:%S}" in text
    assert expected.hour == 3 and expected.minute == 0
    assert "Failed" in text and "sched-1" in text and "RuntimeError: broke" in text
    assert "/stages/nightly/run/" in page(response).post_actions()


def test_run_now_runs_the_job_on_its_waiting_tasks_and_records_the_run(db: None) -> None:
    stage = make_job_stage()
    waiting = [task_create(stage=stage, type="order", payload={"n": i}) for i in range(2)]
    client = stage_changer()

    response = client.post("/stages/nightly/run/", follow=True)

    assert response.redirect_chain[-1][0] == "/stages/nightly/"
    assert shown_messages(response) == [("success", "Ran job nightly: 2 task(s) taken, 1 sent.")]
    [run] = JobRun.objects.filter(stage=stage)
    assert (run.status, run.worker_id, run.tasks_processed) == (JobRun.Status.SUCCEEDED, "user:lead", 2)
    assert set(Task.objects.filter(pk__in=[t.pk for t in waiting]).values_list("status", flat=True)) == {"completed"}
    assert "user:lead" in page(client.get("/stages/nightly/")).text  # the run is in the list


def test_run_now_refuses_a_paused_job_and_a_stage_that_is_no_job(world: dict[str, Stage]) -> None:
    stage = make_job_stage(is_paused=True)
    client = stage_changer()

    response = client.post("/stages/nightly/run/", follow=True)
    assert shown_messages(response) == [("warning", "Job nightly is paused; resume it first.")]
    response = client.post("/stages/review/run/", follow=True)
    assert shown_messages(response) == [("warning", "Stage review is a script stage: only job stages run on demand.")]
    assert not JobRun.objects.filter(stage=stage).exists()
    assert "/stages/review/run/" not in page(client.get("/stages/review/")).post_actions()  # no button


def test_a_hook_stage_shows_its_url_and_a_ready_curl_with_the_secret_only_to_who_may_change_it(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    intake = world["intake"]
    intake.schemas = {"order": {"type": "object"}}
    intake.save()
    viewer = logged_in(make_user("watcher", *OPERATOR_PERMS))

    mine = page(admin_client.get("/stages/intake/")).text
    theirs = page(viewer.get("/stages/intake/")).text

    assert "POST http://testserver/hooks/intake/" in mine and "POST http://testserver/hooks/intake/" in theirs
    assert "curl -X POST 'http://testserver/hooks/intake/?type=order'" in mine
    assert f"-H 'X-Hook-Token: {intake.hook_secret}'" in mine
    assert intake.hook_secret not in theirs and "curl" not in theirs
    assert "The secret is shown to those who may change the stage." in theirs


def test_the_ready_curl_reaches_the_hook(admin_client: Client, world: dict[str, Stage]) -> None:
    """The command's URL and header, sent as they are, create a task (the secret is the right one)."""
    html = admin_client.get("/stages/intake/").content.decode()
    curl = page(admin_client.get("/stages/intake/")).text
    url = re.search(r"curl -X POST '([^']+)'", curl)
    token = re.search(r"-H 'X-Hook-Token: ([^']+)'", curl)
    assert url and token and "hook-curl" in html

    response = Client().post(
        url.group(1).removeprefix("http://testserver"), data="{}", content_type="application/json",
        HTTP_X_HOOK_TOKEN=token.group(1),
    )  # fmt: skip

    assert response.status_code == 202, response.content
    assert Task.objects.filter(stage=world["review"], type="webhook").count() == 1


# -- Pause and Resume -------------------------------------------------------------------------------


def test_pause_and_resume_change_the_stage_and_are_recorded_in_its_admin_history(world: dict[str, Stage]) -> None:
    client = stage_changer()
    before = page(client.get("/stages/review/"))
    assert "/stages/review/pause/" in before.post_actions()

    response = client.post("/stages/review/pause/", follow=True)

    assert shown_messages(response) == [("success", "Stage review is paused now.")]
    assert Stage.objects.get(slug="review").is_paused is True
    after = page(response)
    assert "Paused" in after.text and "/stages/review/resume/" in after.post_actions()
    # Paused: workers claim nothing there.
    task_create(stage=world["review"], type="order", payload={})
    assert task_claim(stage=Stage.objects.get(slug="review"), worker_id="w1") == []

    response = client.post("/stages/review/resume/", follow=True)

    assert shown_messages(response) == [("success", "Stage review is running now.")]
    assert Stage.objects.get(slug="review").is_paused is False
    history = f"/admin/tasks_app/stage/{world['review'].pk}/history/"
    assert history in page(response).hrefs()
    lead_history = logged_in(make_user("boss", superuser=True)).get(history).content.decode()
    assert "Paused from the stage page." in lead_history and "Resumed from the stage page." in lead_history
    log = LogEntry.objects.filter(object_id=str(world["review"].pk), action_flag=CHANGE).order_by("id")
    assert [(e.user.username, e.change_message) for e in log] == [
        ("lead", "Paused from the stage page."),
        ("lead", "Resumed from the stage page."),
    ]


def test_a_second_pause_changes_nothing_and_says_so(world: dict[str, Stage]) -> None:
    client = stage_changer()
    client.post("/stages/review/pause/", follow=True)  # shows (and so consumes) its message

    response = client.post("/stages/review/pause/", follow=True)

    assert shown_messages(response) == [("warning", "Stage review was already paused.")]
    assert LogEntry.objects.filter(object_id=str(world["review"].pk)).count() == 1


def test_stage_buttons_need_change_stage_a_post_and_a_csrf_token(world: dict[str, Stage]) -> None:
    stage = make_job_stage()
    operator = logged_in(make_user("op", *OPERATOR_PERMS))  # may change tasks, not stages
    for url in ("/stages/review/pause/", "/stages/review/resume/", "/stages/nightly/run/"):
        assert operator.post(url).status_code == 403
    assert not [a for a in page(operator.get("/stages/review/")).post_actions() if a.startswith("/stages/")]
    lead = stage_changer()
    assert lead.get("/stages/review/pause/").status_code == 405
    assert lead.get("/stages/nightly/run/").status_code == 405
    checked = logged_in(make_user("lead2", *OPERATOR_PERMS, "change_stage"), enforce_csrf_checks=True)
    assert checked.post("/stages/review/pause/").status_code == 403
    assert checked.post("/stages/nightly/run/").status_code == 403
    assert Stage.objects.get(slug="review").is_paused is False
    assert not JobRun.objects.filter(stage=stage).exists()
    assert not LogEntry.objects.exists()


def test_the_stage_page_needs_a_login_and_view_permissions(world: dict[str, Stage]) -> None:
    assert Client().get("/stages/review/").status_code == 302
    assert logged_in(make_user("nobody")).get("/stages/review/").status_code == 403
    assert logged_in(make_user("tasks-only", "view_task")).get("/stages/review/").status_code == 403
    assert logged_in(make_user("op", *OPERATOR_PERMS)).get("/stages/review/").status_code == 200
    assert logged_in(make_user("op2", *OPERATOR_PERMS)).get("/stages/no-such-stage/").status_code == 404


# -- links to it ------------------------------------------------------------------------------------


def test_stage_names_link_to_the_stage_page_from_the_overview_list_and_task_page(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    task = task_create(stage=world["review"], type="order", payload={})

    overview = page(admin_client.get("/overview/")).hrefs()
    listed = admin_client.get("/tasks/").content.decode()
    detail = page(admin_client.get(f"/tasks/{task.pk}/")).hrefs()

    assert {f"/stages/{slug}/" for slug in world} <= set(overview)
    assert '<td><a href="/stages/review/">review</a></td>' in listed
    assert "/stages/review/" in detail
