"""The workflow's figures and hourly charts (issue 14 section 3) on the stage page and the overview: shares of
transitions summing to 100%, wait/work medians and p95, the form-stage share, the slowest tasks with links, the
?window=24h|7d switch, server-rendered SVG charts (bars only for hours with events, names escaped), and figures
read from the roll-ups alone (no query on the task table).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app.models import Stage, StageHour, Task, Transition
from tasks_app.selectors.figures import hourly_series, overview_figures, workflow_figures
from tasks_app.services import task_claim, task_complete, task_create
from tasks_app.services.counters import counters_fold
from tasks_app.services.rollups import hour_of
from tasks_app.templatetags.charts import hourly_svg
from tests.support.pages import ESCAPED_SCRIPT, SCRIPT, Page
from tests.support.users import OPERATOR_PERMS, logged_in, make_user

LATER = timedelta(minutes=5)
# A query that reads the task table itself (not tasks_app_taskevent, whose name starts the same).
TASK_TABLE = re.compile(r'\btasks_app_task\b(?!event)|"tasks_app_task"')


def fold() -> None:
    while counters_fold(now=timezone.now() + LATER):
        pass


def send_through(stage: Stage, sends: list[str], *, hours_ago: float, work: float = 2.0) -> list[Task]:
    """One task per entry of `sends` at `stage`, created and completed `hours_ago`, each sending that type
    ("" sends nothing); each waits 1 s, then works `work` seconds."""
    # Twenty minutes into the hour: a task's events never straddle an hour boundary (the charts count per hour).
    start = (timezone.now() - timedelta(hours=hours_ago)).replace(minute=20, second=0, microsecond=0)
    made = []
    for i, sent in enumerate(sends):
        created = start + timedelta(seconds=10 * i)
        task = task_create(stage=stage, type="order", payload={"i": i}, now=created)
        [claim] = task_claim(stage=stage, worker_id="w1", now=created + timedelta(seconds=1))
        assert claim.pk == task.pk
        send = [(sent, {})] if sent else []
        task_complete(
            task_id=claim.pk, lock_token=claim.lock_token, send=send, now=created + timedelta(seconds=1 + work)
        )
        made.append(task)
    return made


def viewer() -> Client:
    return logged_in(make_user("viewer", *OPERATOR_PERMS))


def test_shares_of_a_stages_transitions_sum_to_100_percent(world: dict[str, Stage]) -> None:
    # review: 3 approved (each to ship and audit), 1 declined, 1 ended (sent nothing) in the last hour.
    send_through(world["review"], ["approved", "approved", "approved", "declined", ""], hours_ago=1)
    fold()
    figures = workflow_figures(window="24h")
    review = figures.for_stage(world["review"].pk)
    assert review is not None
    shares = {(s.transition.target.slug, s.transition.task_type): (s.taken, s.share) for s in review.shares}
    assert shares == {("ship", "approved"): (3, 3 / 8), ("audit", "approved"): (3, 3 / 8),
                      ("notify", "declined"): (1, 1 / 8)}  # fmt: skip
    assert review.ended == 1 and review.ended_share == 1 / 8
    assert sum(s.share for s in review.shares) + review.ended_share == pytest.approx(1.0)
    assert (review.completed, review.waits, review.works) == (5, 5, 5)
    assert 1.0 < review.work_p50.seconds <= 2.5 and 1.0 < review.work_p95.seconds <= 2.5
    assert 0.5 < review.wait_p50.seconds <= 1.0


def test_the_window_switch_counts_the_last_24_hours_or_7_days(world: dict[str, Stage]) -> None:
    send_through(world["review"], ["declined"], hours_ago=1)
    send_through(world["review"], ["approved", "approved"], hours_ago=72)
    fold()
    day, week = workflow_figures(window="24h"), workflow_figures(window="7d")
    assert week.since == hour_of(timezone.now()) - timedelta(hours=167)
    assert day.for_stage(world["review"].pk).completed == 1
    assert week.for_stage(world["review"].pk).completed == 3
    client = viewer()
    day_page = client.get("/stages/review/?window=24h").content.decode()
    week_page = client.get("/stages/review/?window=7d").content.decode()
    assert "last 24 hours" in day_page and "last 7 days" in week_page
    assert re.search(r"declined → .*?notify</a> 100%", day_page)
    assert re.search(r"declined → .*?notify</a> 20%", week_page)  # 1 of 5 departures: 2 x (ship + audit) + 1
    assert client.get("/stages/review/?window=1y").status_code == 400


def test_the_form_stage_share_and_the_slowest_tasks_link_to_them(world: dict[str, Stage]) -> None:
    form = Stage.objects.create(slug="approve", name="Approve", kind=Stage.Kind.FORM)
    Transition.objects.create(source=form, target=world["ship"], task_type="approved")
    [slow] = send_through(form, ["approved"], hours_ago=2, work=300)  # 301 s at the form stage
    send_through(world["review"], ["", ""], hours_ago=2)  # 3 s each at review
    send_through(world["notify"], [""] * 2, hours_ago=1)  # 3 s each (ship's approved task is still pending)
    fold()
    figures = workflow_figures()
    assert figures.all_seconds == pytest.approx(301 + 4 * 3)
    assert figures.form_share == pytest.approx(301 / 313)
    assert figures.slowest[0].task_id == slow.pk and figures.slowest[0].seconds == pytest.approx(301)
    page = viewer().get("/stages/approve/").content.decode()
    assert f'href="/tasks/{slow.pk}/"' in page
    assert "at form stages (people deciding): 96%" in page


def test_the_stage_page_draws_bars_only_for_hours_with_events(world: dict[str, Stage]) -> None:
    send_through(world["ship"], ["", ""], hours_ago=5)
    send_through(world["ship"], [""], hours_ago=30)
    fold()
    html = viewer().get("/stages/ship/").content.decode()
    charts = re.findall(r'<svg class="hourly-chart[^"]*" role="img".*?</svg>', html, re.DOTALL)
    assert len(charts) == 2  # completed/retried/failed, and errors
    outcomes, errors = charts
    assert 'data-bars="2"' in outcomes and outcomes.count('class="bar-completed"') == 2
    assert 'data-bars="0"' in errors and "<rect" not in errors
    assert "Per hour over the last 7 days: 3 completed, 0 retried, 0 failed." in Page(html).text
    assert "The hours as a table" in html


def test_chart_titles_escape_stage_names(world: dict[str, Stage]) -> None:
    stage = Stage.objects.create(slug="weird", name=SCRIPT, handler="tests.handlers.noop")
    send_through(stage, [""], hours_ago=1)
    fold()
    svg = hourly_svg(hourly_series(stage_ids=[stage.pk])[stage.pk], "outcomes", stage.name)
    assert SCRIPT not in svg and ESCAPED_SCRIPT in svg
    assert SCRIPT not in viewer().get("/stages/weird/").content.decode()


@pytest.mark.parametrize("window", ["24h", "7d"])
def test_the_figures_read_no_task_table(world: dict[str, Stage], window: str) -> None:
    send_through(world["review"], ["approved", "declined"], hours_ago=3)
    fold()
    assert StageHour.objects.exists()
    with CaptureQueriesContext(connection) as queries:
        for_overview = overview_figures(window=window)  # what the overview reads (its notes, its charts)
        for_stage = workflow_figures(window=window)  # and the stage page, with its chart
        series = hourly_series(stage_ids=[world["review"].pk])
        for s in [*series.values(), *for_overview["charts"].values()]:
            hourly_svg(s, "outcomes", "x")
    # Each: stages, stage hours, transition hours, transitions; the charts: stage hours.
    assert len(queries) == 5 + 5 and for_stage.for_stage(world["review"].pk).completed == 2
    assert not [q["sql"] for q in queries if TASK_TABLE.search(q["sql"])]


def test_the_overview_shows_the_figures_a_chart_per_stage_and_the_graphs_notes(world: dict[str, Stage]) -> None:
    send_through(world["review"], ["approved", "approved", "declined", ""], hours_ago=2)
    fold()
    client = viewer()
    html = client.get("/overview/").content.decode()
    section = html[html.index('<section class="card figures" id="figures">') :]
    section = section[: section.index("</section>")]
    # One small chart per stage in the figures table, bars only where a stage had events (review, 1 hour).
    charts = re.findall(r'<svg class="hourly-chart small".*?</svg>', section, re.DOTALL)
    assert len(charts) == Stage.objects.count()
    assert sorted(re.search(r'data-bars="(\d+)"', c).group(1) for c in charts) == ["0"] * 4 + ["1"]
    text = Page(section).text
    # 6 departures: 2 approved sends to ship and to audit each, 1 declined, 1 completion that sent nothing.
    assert "approved → audit 33%, approved → ship 33%, declined → notify 17%, ended 17%" in text
    assert "Time at form stages (people deciding): 0%" in text
    # The graph draws the shares on the edges and the medians in the boxes (through its notes).
    graph = html[: html.index('<section class="card figures"')]
    assert "33%" in graph and "17%" in graph
    assert re.search(r"wait [\d.]+ (ms|s) · p95", graph)
    assert "last 7 days" in client.get("/overview/?window=7d").content.decode()
    assert client.get("/overview/?window=month").status_code == 400
