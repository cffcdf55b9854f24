"""Turn every task whose lock has expired back to pending (or failed at max attempts), once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from tasks_app.services import tasks_expire_locks


class Command(BaseCommand):
    help = "Release every task whose lock has expired (workers also do this periodically)."

    def handle(self, *args: Any, **options: Any) -> None:
        count = tasks_expire_locks()
        self.stdout.write(f"{count} expired lock(s) released")
