"""One-click decisions from the mail (issue 16): signed, expiring, single-use links to a confirmation page.

The form world of tests.support.work (review: Approve with an optional note, Decline with a required
reason; alice, bob and vera are reviewers), with review notifying its groups.
"""

from __future__ import annotations

import html
import re
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Group
from django.core import mail, signing
from django.db import close_old_connections, connection, transaction
from django.test import Client
from django.utils import timezone

from tasks_app.models import DecisionLinkUse, Notification, Stage, Task, TaskEvent, Transition
from tasks_app.services import notifications, webhooks
from tasks_app.services.decision_links import LinkRefused, decision_link_check, decision_link_use
from tasks_app.services.decision_tokens import SALT, link_read, link_url, needs_no_input, one_click_buttons
from tasks_app.services.form_stages import form_task_cancel, form_task_open, form_task_submit
from tasks_app.services.notifications import notifications_drain
from tests.support.pages import ESCAPED_SCRIPT, SCRIPT, form_fields, login_redirect, shown_messages
from tests.support.threads import run_at_once
from tests.support.users import logged_in, make_user
from tests.support.work import FormWorld, form_world, sent_order
from tests.support.world import nothing_written

LINK_PATH = re.compile(r"https?://[^/\s\"]+(/work/decide/[^/\s\"]+/)")
ORDER = {"order_id": 42, "customer": {"email": "c@example.com"}}


def linked_world(**notify: Any) -> FormWorld:
    world = form_world()
    world.review.notify = notify or {"groups": True}
    world.review.save()
    return world


def mailed(world: FormWorld, payload: dict[str, Any] | None = None) -> Task:
    """An order arriving at review, and its arrival mails sent (mail.outbox)."""
    order = sent_order(world, payload or ORDER)
    drained = notifications_drain()
    assert drained is not None and drained.failed == 0
    return order


def links_to(address: str) -> list[str]:
    """The decision-link paths in the mail to `address` (the text part and the HTML part list the same ones)."""
    [message] = [m for m in mail.outbox if m.to == [address]]
    text_links = LINK_PATH.findall(message.body)
    [(alternative, _type)] = message.alternatives
    assert LINK_PATH.findall(str(alternative)) == text_links
    return text_links


def link_for(world: FormWorld, order: Task, user: Any, type: str = "approved", **kwargs: Any) -> str:
    return urlsplit(link_url(task_id=order.pk, user_id=user.pk, type=type, **kwargs)).path


def token_of(path: str) -> str:
    return path.rstrip("/").rpartition("/")[2]


def refused(response: Any, status: int, words: str) -> None:
    assert response.status_code == status
    assert words in html.unescape(response.content.decode())


def csrf_post(client: Client, path: str) -> Any:
    """POST the confirmation form as a browser does: the CSRF token from the page."""
    return client.post(path, form_fields(client, path, form_id="decision-form"))


# -- the mail ------------------------------------------------------------------------------------


def test_the_mail_links_only_the_buttons_that_need_no_input(db: None) -> None:
    world = linked_world()
    order = mailed(world)

    # Approve's note is optional: a link. Decline needs a reason: none.
    for user in (world.alice, world.bob, world.vera):
        [path] = links_to(user.email)
        link = link_read(token_of(path))
        assert (link.task_id, link.user_id, link.type) == (order.pk, user.pk, "approved")
    [message] = [m for m in mail.outbox if m.to == [world.alice.email]]
    assert "Approve in one click" in message.body
    assert "Decline" not in message.body
    # Each link is its own (a nonce of its own): one person's use never spends another's.
    nonces = {link_read(token_of(p)).nonce for u in (world.alice, world.bob) for p in links_to(u.email)}
    assert len(nonces) == 2


def test_a_button_gets_a_link_only_when_its_form_asks_nothing_and_the_payload_fits(db: None) -> None:
    world = linked_world()
    review = world.review
    review.schemas = {
        "approved": {"title": "Approve", "type": "object", "properties": {"note": {"type": "string"}}},
        "declined": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}},
        "held": {"type": "object", "required": ["order_id"]},  # required, drawn by no field: the payload has it
        "flagged": {"type": "object", "required": ["flag"], "properties": {"flag": {"type": "boolean"}}},
        "noted": {"type": "object", "properties": {"order_id": {"type": "string"}}},  # the payload's is a number
        "parked": {"type": "object", "required": ["missing"]},
    }
    review.save()
    for type in ("held", "flagged", "noted", "parked", "plain"):
        Transition.objects.create(source=review, target=Stage.objects.get(slug="invoice"), task_type=type)
    order = Task.objects.select_related("stage").get(pk=sent_order(world, ORDER).pk)

    buttons = one_click_buttons(order, ["approved", "declined", "held", "flagged", "noted", "parked", "plain"])

    # "plain" has no schema at all: nothing to fill in. A boolean box is never a required field, but the
    # schema requires the key and the payload lacks it, so sending it unchanged would be refused.
    assert [(b.type, b.label) for b in buttons] == [("approved", "Approve"), ("held", "Held"), ("plain", "Plain")]
    assert needs_no_input(order, "declined") is None


def test_links_go_only_to_addresses_that_are_one_active_user(db: None) -> None:
    world = linked_world(groups=True, emails_from="/contacts")
    twin_a, twin_b = make_user("twin-a"), make_user("twin-b")
    for twin in (twin_a, twin_b):
        twin.email = "twins@example.com"
        twin.save()
    gone = make_user("gone")
    gone.is_active = False
    gone.save()
    contacts = ["stranger@example.com", "twins@example.com", "gone@example.com", "ALICE@example.com"]

    mailed(world, {**ORDER, "contacts": contacts})

    assert [link_read(token_of(p)).user_id for p in links_to("alice@example.com")] == [world.alice.pk]
    # An address no user has, one two users share, an inactive user's: mailed, with no link.
    for address in ("stranger@example.com", "twins@example.com", "gone@example.com"):
        assert links_to(address) == []
        [message] = [m for m in mail.outbox if m.to == [address]]
        assert "/work/decide/" not in message.body
    # The payload's spelling of a member's address is mailed apart (services.notifications), and is hers:
    # addresses are matched to users without case.
    assert [link_read(token_of(p)).user_id for p in links_to("ALICE@example.com")] == [world.alice.pk]


def test_a_webhook_body_carries_no_links(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    world = linked_world(groups=True, webhook="https://hooks.example.com/x")
    bodies: list[bytes] = []

    def webhook_post(url: str, stage: Stage, items: list[Any]) -> None:  # the network is the side effect patched
        bodies.append(webhooks.webhook_body(stage, items))

    monkeypatch.setattr(notifications, "webhook_post", webhook_post)

    mailed(world)

    assert len(bodies) == 1 and b"decide" not in bodies[0]
    assert links_to(world.alice.email)  # the mails to the same stage's people do carry them


# -- the confirmation page --------------------------------------------------------------------------


def test_opening_a_link_shows_a_confirmation_and_changes_nothing(db: None) -> None:
    world = linked_world()
    order = mailed(world, {**ORDER, "order_id": 7, "customer": {"email": SCRIPT}})
    [path] = links_to(world.alice.email)
    client = logged_in(world.alice)

    with nothing_written():
        response = client.get(path)
        again = client.get(path)

    assert response.status_code == again.status_code == 200
    shown = response.content.decode()
    assert f"Approve task {order.pk}?" in shown
    assert 'id="decision-form"' in shown and 'name="csrfmiddlewaretoken"' in shown and 'method="post"' in shown
    # The payload as My work shows it: titled, and escaped.
    assert "Order number" in shown and ESCAPED_SCRIPT in shown and SCRIPT not in shown
    assert not DecisionLinkUse.objects.exists()
    assert Task.objects.get(pk=order.pk).status == Task.Status.PENDING


def test_confirming_decides_routes_the_successor_and_the_history_says_a_link_did_it(db: None) -> None:
    world = linked_world()
    order = mailed(world)
    [path] = links_to(world.alice.email)
    client = logged_in(world.alice, enforce_csrf_checks=True)

    response = csrf_post(client, path)

    assert response.status_code == 302 and response.url == "/work/"
    order.refresh_from_db()
    assert order.status == Task.Status.COMPLETED
    [successor] = Task.objects.filter(parent=order)
    assert (successor.stage.slug, successor.type, successor.payload) == ("invoice", "approved", ORDER)
    event = TaskEvent.objects.get(task_id=order.pk, kind=TaskEvent.Kind.COMPLETED)
    assert event.actor == event.details["worker"] == "user:alice"
    assert event.details["decided_via"] == "mail link" and event.details["decision"] == "approved"
    assert event.details["sent"] == [successor.pk]
    [use] = DecisionLinkUse.objects.all()
    assert (use.task_id, use.user_id, use.nonce) == (order.pk, world.alice.pk, link_read(token_of(path)).nonce)
    followed = client.get(response.url)
    assert ("success", f"Task {order.pk}: approve, sent to invoice (task {successor.pk}).") in shown_messages(followed)
    # The task page's history says so.
    admin = logged_in(make_user("root", superuser=True))
    assert "with a one-click link from a mail" in admin.get(f"/tasks/{order.pk}/").content.decode()


def test_a_post_without_the_csrf_token_is_refused(db: None) -> None:
    world = linked_world()
    order = mailed(world)
    [path] = links_to(world.alice.email)
    client = logged_in(world.alice, enforce_csrf_checks=True)

    with nothing_written():
        response = client.post(path, {})

    assert response.status_code == 403
    assert not DecisionLinkUse.objects.exists() and Task.objects.get(pk=order.pk).status == "pending"


def test_a_used_link_is_refused(db: None) -> None:
    world = linked_world()
    mailed(world)
    [path] = links_to(world.alice.email)
    client = logged_in(world.alice)
    page_form = form_fields(client, path, form_id="decision-form")
    assert client.post(path, page_form).status_code == 302

    with nothing_written():
        refused(client.get(path), 410, "already been used")
        refused(client.post(path, page_form), 410, "already been used")
    assert DecisionLinkUse.objects.count() == 1


def test_an_expired_link_is_refused(db: None, settings: Any) -> None:
    world = linked_world()
    order = sent_order(world, ORDER)
    client = logged_in(world.alice)
    week = settings.TASKS_DECISION_LINK_MAX_AGE
    old = link_for(world, order, world.alice, now=timezone.now() - timedelta(seconds=week + 60))
    fresh = link_for(world, order, world.alice, now=timezone.now() - timedelta(seconds=week - 60))

    with nothing_written():
        refused(client.get(old), 410, "expired")
        refused(client.post(old), 410, "expired")
        assert client.get(fresh).status_code == 200
        # A shorter lifetime applies to the links already sent.
        settings.TASKS_DECISION_LINK_MAX_AGE = 60
        refused(client.get(fresh), 410, "expired")
    assert not DecisionLinkUse.objects.exists()


def test_a_changed_or_foreign_token_is_refused(db: None) -> None:
    world = linked_world()
    order = sent_order(world, ORDER)
    client = logged_in(world.alice)
    path = link_for(world, order, world.alice)
    token = token_of(path)
    data, stamp, signature = token.split(":")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    payload = {"t": order.pk, "u": world.alice.pk, "d": "approved", "n": "x" * 22}
    bad = [
        f"{data}:{stamp}:{flipped}",  # the signature changed
        f"{data[:-2]}:{stamp}:{signature}",  # the payload changed
        signing.dumps(payload, salt="another.purpose", compress=True),  # signed by us, for something else
        signing.dumps({**payload, "t": "1"}, salt=SALT),  # ours, but not a link's shape
        "nonsense",
    ]

    with nothing_written():
        for token in bad:
            refused(client.get(f"/work/decide/{token}/"), 400, "not a valid decision link")
            refused(client.post(f"/work/decide/{token}/"), 400, "not a valid decision link")


def test_another_users_link_is_refused(db: None) -> None:
    world = linked_world()
    order = mailed(world)
    [alices] = links_to(world.alice.email)
    bob = logged_in(world.bob)

    with nothing_written():
        refused(bob.get(alices), 403, "sent to someone else")
        refused(bob.post(alices), 403, "sent to someone else")
    assert Task.objects.get(pk=order.pk).status == "pending" and not DecisionLinkUse.objects.exists()


def test_a_task_already_decided_or_cancelled_is_refused(db: None) -> None:
    world = linked_world()
    first, second = mailed(world), sent_order(world, {**ORDER, "order_id": 43})
    [path] = links_to(world.alice.email)
    second_path = link_for(world, second, world.alice)
    # Bob declines the first on My work; an operator cancels the second.
    form_task_open(task=first, user=world.bob)
    form_task_submit(task_id=first.pk, user=world.bob, type="declined", fields={"reason": "out of stock"})
    Task.objects.filter(pk=second.pk).update(status=Task.Status.CANCELLED)
    client = logged_in(world.alice)

    with nothing_written():
        refused(client.get(path), 409, "is completed")
        refused(client.post(path), 409, "is completed")
        refused(client.get(second_path), 409, "is cancelled")
        refused(client.post(second_path), 409, "is cancelled")
    assert not DecisionLinkUse.objects.exists()


def test_a_task_open_by_someone_else_waits_for_them_and_the_link_works_after(db: None) -> None:
    world = linked_world()
    order = mailed(world)
    [path] = links_to(world.alice.email)
    form_task_open(task=order, user=world.bob)
    client = logged_in(world.alice)

    with nothing_written():
        refused(client.get(path), 409, "is open by bob")
        refused(client.post(path), 409, "is open by bob")

    form_task_cancel(task_id=order.pk, user=world.bob)
    assert client.post(path).status_code == 302
    assert Task.objects.get(pk=order.pk).status == Task.Status.COMPLETED


def test_a_task_the_user_has_open_is_decided_by_their_link(db: None) -> None:
    world = linked_world()
    order = mailed(world)
    [path] = links_to(world.alice.email)
    form_task_open(task=order, user=world.alice)

    response = logged_in(world.alice).post(path)

    assert response.status_code == 302
    assert Task.objects.get(pk=order.pk).status == Task.Status.COMPLETED
    assert Task.objects.filter(parent=order, stage__slug="invoice").count() == 1


def test_a_decision_that_fails_rolls_the_use_back_and_the_link_still_works(db: None) -> None:
    world = linked_world()
    order = mailed(world)
    [path] = links_to(world.alice.email)
    client = logged_in(world.alice)
    Stage.objects.filter(pk=world.review.pk).update(is_paused=True)

    # The use is inserted first, then the open fails (paused): both are rolled back.
    with nothing_written():
        refused(client.post(path), 409, "is paused")
    assert not DecisionLinkUse.objects.exists()

    Stage.objects.filter(pk=world.review.pk).update(is_paused=False)
    assert client.post(path).status_code == 302
    assert DecisionLinkUse.objects.count() == 1
    assert Task.objects.get(pk=order.pk).status == Task.Status.COMPLETED


def test_a_button_no_longer_offered_or_now_needing_input_is_refused(db: None) -> None:
    world = linked_world()
    order = mailed(world)
    [path] = links_to(world.alice.email)
    client = logged_in(world.alice)
    review = world.review

    review.schemas = {**review.schemas, "approved": {"type": "object", "required": ["note"]}}
    review.save()
    with nothing_written():
        refused(client.get(path), 409, "no longer offers 'approved'")
    Transition.objects.filter(source=review, task_type="approved").delete()
    review.schemas = {}
    review.save()
    with nothing_written():
        refused(client.get(path), 409, "no longer offers 'approved'")
        refused(client.post(path), 409, "no longer offers 'approved'")
    assert Task.objects.get(pk=order.pk).status == "pending"


def test_a_user_no_longer_in_the_stages_groups_is_refused(db: None) -> None:
    world = linked_world()
    mailed(world)
    [path] = links_to(world.alice.email)
    world.alice.groups.remove(world.reviewers)
    Group.objects.create(name="others").user_set.add(world.alice)

    with nothing_written():
        refused(logged_in(world.alice).get(path), 403, "may no longer work on")


def test_an_anonymous_visitor_is_sent_to_log_in_and_nothing_changes(db: None) -> None:
    world = linked_world()
    mailed(world)
    [path] = links_to(world.alice.email)

    with nothing_written():
        response = Client().get(path)
        posted = Client().post(path)

    assert response.status_code == 302 and response.url == login_redirect(path)
    assert posted.status_code == 302 and posted.url == login_redirect(path)
    assert not DecisionLinkUse.objects.exists()


def test_the_service_refuses_a_second_use_even_in_one_process(db: None) -> None:
    world = linked_world()
    order = mailed(world)
    token = token_of(links_to(world.alice.email)[0])
    assert decision_link_check(token=token, user=world.alice).button.label == "Approve"

    decided = decision_link_use(token=token, user=world.alice)

    assert [t.stage.slug for t in decided.successors] == ["invoice"] and not decided.cancelled
    with pytest.raises(LinkRefused) as caught:
        decision_link_use(token=token, user=world.alice)
    assert caught.value.status == 410
    assert Task.objects.filter(parent=order).count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_uses_of_one_link_at_once_decide_once(db: None) -> None:
    world = linked_world()
    order = sent_order(world, ORDER)
    token = token_of(link_for(world, order, world.alice))
    outcomes: list[str] = []

    def use() -> None:
        try:
            decision_link_use(token=token, user=world.alice)
            outcomes.append("decided")
        except LinkRefused as exc:
            outcomes.append(f"refused {exc.status}")

    for _ in range(5):  # each round a fresh task and link: the race is won by one of the two
        errors = run_at_once(use)
        close_old_connections()
        assert not errors
        # The loser waited on the unique nonce (410), or found the task decided (409): never a second decision.
        assert sorted(outcomes)[0] == "decided" and sorted(outcomes)[1] in ("refused 409", "refused 410")
        assert Task.objects.filter(parent=order).count() == 1
        assert DecisionLinkUse.objects.filter(task_id=order.pk).count() == 1
        outcomes.clear()
        order = sent_order(world, ORDER)
        token = token_of(link_for(world, order, world.alice))
    assert Notification.objects.exists()  # the arrivals were notified as usual


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_use_committed_after_the_check_makes_the_insert_fail_on_the_unique_nonce(db: None) -> None:
    world = linked_world()
    order = sent_order(world, ORDER)
    token = token_of(link_for(world, order, world.alice))
    nonce = link_read(token).nonce
    inserted, release = threading.Event(), threading.Event()

    def other_use() -> None:
        # Another use of the same link whose transaction is still open: its row is invisible to the check.
        try:
            with transaction.atomic():
                DecisionLinkUse.objects.create(nonce=nonce, task_id=order.pk, user=world.alice)
                inserted.set()
                release.wait(60)
        finally:
            connection.close()

    outcome: list[object] = []

    def use() -> None:
        try:
            outcome.append(decision_link_use(token=token, user=world.alice))
        except LinkRefused as exc:
            outcome.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=other_use)
    first.start()
    assert inserted.wait(60)
    second = threading.Thread(target=use)
    second.start()
    # Let the first commit only once the second waits on the nonce's unique index (a lock wait).
    for _ in range(600):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                break
        time.sleep(0.05)
    else:
        pytest.fail("the second use never waited on the first one's nonce")
    release.set()
    first.join(60)
    second.join(60)

    [refusal] = outcome
    assert isinstance(refusal, LinkRefused) and refusal.status == 410
    # Its decision went with the refused use: the task still waits, no successor, one use (the other's).
    assert Task.objects.get(pk=order.pk).status == Task.Status.PENDING
    assert not Task.objects.filter(parent=order).exists()
    assert DecisionLinkUse.objects.filter(nonce=nonce).count() == 1
