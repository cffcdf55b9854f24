from __future__ import annotations

from django.apps import AppConfig
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate

from tasks_app.api.throttles import create_cache_tables


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Workflow tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Not at the top: Django imports this module while it is still loading the
        # apps, and the checks import the models, which need the app registry
        # ready. ready() is where Django wants checks registered (their decorators run on import).
        from tasks_app import checks  # noqa: F401  (registers the system checks)

        # `migrate` also creates the throttle counters' table: no extra deploy step to forget.
        post_migrate.connect(create_cache_tables, sender=self)
        # PostgreSQL sessions run the engine's prepared statements with their generic plan (services.pg;
        # imported here: tasks_app.services' package imports the models, which need the registry loaded).
        from tasks_app.services.pg import session_setup

        connection_created.connect(session_setup, dispatch_uid="tasks_pg_session_setup")
