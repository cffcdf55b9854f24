"""Write the workflow (stages, transitions, schedules, schemas, handlers) as JSON: `dump_workflow > workflow.json`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from tasks_app.services.workflow import workflow_dump, workflow_dumps


class Command(BaseCommand):
    help = (
        "Print every stage and transition as a workflow file (JSON, version 1) for load_workflow. "
        "Hook secrets are left out."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(workflow_dumps(workflow_dump()), ending="")
