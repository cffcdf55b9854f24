"""Users with tasks_app permissions, and clients logged in as them (pages) or holding their token (API).

The REST API tests use one user per role of the permission matrix:

    anonymous  no credentials
    viewer     view_* on every tasks_app model, nothing else
    operator   view/add/change task (+ view taskevent), view stage and transition
    admin      superuser
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Permission
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

ROLES = ("anonymous", "viewer", "operator", "admin")

OPERATOR_PERMS = ["view_task", "add_task", "change_task", "view_taskevent", "view_stage", "view_transition"]


def make_user(username: str, *codenames: str, superuser: bool = False, staff: bool = False) -> Any:
    """A user with password "pw" and these tasks_app permissions (codenames such as "view_task")."""
    User = get_user_model()
    if superuser:
        user = User.objects.create_superuser(username, f"{username}@example.com", "pw")
    else:
        user = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=staff)
    if codenames:
        perms = Permission.objects.filter(content_type__app_label="tasks_app", codename__in=codenames)
        user.user_permissions.set(perms)
    return user


def all_view_codenames() -> list[str]:
    """view_* of every tasks_app model."""
    view_all = Permission.objects.filter(content_type__app_label="tasks_app", codename__startswith="view_")
    return list(view_all.values_list("codename", flat=True))


def logged_in(user: AbstractBaseUser, **client_kwargs: Any) -> Client:
    """A browser session of `user` (Django's test Client)."""
    client = Client(**client_kwargs)
    client.force_login(user)
    return client


def token_client(user: Any | None) -> APIClient:
    """An API client sending `user`'s DRF token (no credentials for None)."""
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def make_role_user(role: str) -> Any | None:
    """The user of one of ROLES (anonymous is None)."""
    if role == "anonymous":
        return None
    if role == "admin":
        return make_user("admin", superuser=True)
    if role == "viewer":
        return make_user("viewer", *all_view_codenames())
    return make_user("operator", *OPERATOR_PERMS)
