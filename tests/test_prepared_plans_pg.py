"""The engine's prepared statements run with their generic plan on PostgreSQL (services.pg.PLAN_CACHE_MODE).

Under plan_cache_mode = auto the server kept re-planning every claim once the claim index led with
priority (the generic plan's estimate was not the lower): 500 of 500 claims custom-planned in
bench/claim_scaling.py, twice the time of a claim of one.
"""

from __future__ import annotations

import pytest
from django.db import connection

from tasks_app.models import Stage
from tasks_app.services import Completion, task_claim, task_create, tasks_complete_batch
from tasks_app.services.pg import PLAN_CACHE_MODE

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]  # connection.close() mid-test


def prepared_plans(marker: str) -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) FROM pg_prepared_statements"
            " WHERE statement LIKE %s",
            [f"%{marker}%"],
        )
        generic, custom = cursor.fetchone()
    return int(generic), int(custom)


def test_a_new_session_plans_the_prepared_statements_generically(review: Stage) -> None:
    connection.close()  # a new session, as a worker starting
    with connection.cursor() as cursor:
        cursor.execute("SHOW plan_cache_mode")
        assert cursor.fetchone()[0] == PLAN_CACHE_MODE == "force_generic_plan"
    for n in range(12):
        task_create(stage=review, type="order", payload={"n": n})
    for _ in range(12):  # more than the five custom plans auto mode starts with
        claimed = task_claim(stage=review, worker_id="w1", limit=1)
        assert len(claimed) == 1
        tasks_complete_batch(items=[Completion(claimed[0].pk, claimed[0].lock_token)])

    claim_generic, claim_custom = prepared_plans("FOR UPDATE SKIP LOCKED")
    complete_generic, complete_custom = prepared_plans("WITH done AS")
    assert claim_custom == 0 and claim_generic >= 7  # psycopg prepares from the fifth execution
    assert complete_custom == 0 and complete_generic >= 7


def test_django_queries_are_not_prepared_so_the_setting_leaves_them_alone(review: Stage) -> None:
    connection.close()
    before = prepared_plans("tasks_app_stage")
    for _ in range(10):
        assert Stage.objects.filter(slug=review.slug).count() == 1
    assert prepared_plans("tasks_app_stage") == before == (0, 0)
