"""API permissions: Django model permissions, including view, and per-action rules."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import DjangoModelPermissions
from rest_framework.request import Request

from tasks_app.models import Stage, Task
from tasks_app.services.form_stages import form_stage_refusal

# Actions on a stage (send, claim) or on a task (complete, release, heartbeat) that a
# form stage's group rule also governs: checked on the object get_object() returns.
FORM_STAGE_ACTIONS = frozenset({"send", "claim", "complete", "release", "heartbeat"})

# Actions that change tasks need task permissions whichever viewset they live on.
ACTION_PERMS: dict[str, list[str]] = {
    "send": ["tasks_app.add_task"],
    "claim": ["tasks_app.change_task"],
    "complete": ["tasks_app.change_task"],
    "release": ["tasks_app.change_task"],
    "heartbeat": ["tasks_app.change_task"],
    "bulk_complete": ["tasks_app.change_task"],
    "retry": ["tasks_app.change_task"],
    "cancel": ["tasks_app.change_task"],
    "assign": ["tasks_app.change_task"],  # issue 16 (api.assign)
    "bulk_cancel": ["tasks_app.change_task"],
    "bulk_create": ["tasks_app.add_task"],
    "events": ["tasks_app.view_task"],
}


class ModelPermissions(DjangoModelPermissions):
    """Reading needs the view permission; writing add/change/delete; actions as ACTION_PERMS says."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        action = getattr(view, "action", None)
        if action in ACTION_PERMS:
            return bool(request.user.has_perms(ACTION_PERMS[action]))
        return super().has_permission(request, view)

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        """A form stage's tasks are its groups' (services.form_stages); bulk-complete checks its items itself."""
        if getattr(view, "action", None) in FORM_STAGE_ACTIONS:
            stage = obj if isinstance(obj, Stage) else obj.stage if isinstance(obj, Task) else None
            refusal = form_stage_refusal(request.user, stage) if stage is not None else None
            if refusal:
                self.message = refusal  # DRF answers 403 with the permission's message
                return False
        return super().has_object_permission(request, view, obj)
