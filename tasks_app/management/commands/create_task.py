"""Create a pending task at a stage from the command line."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks_app.models import Stage
from tasks_app.services import task_create


def validation_line(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


class Command(BaseCommand):
    help = "Create a pending task: create_task STAGE TYPE --payload '{\"key\": 1}'"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("stage", help="Slug of the stage the task waits at.")
        parser.add_argument("type", help="Task type (non-empty, at most 100 characters).")
        parser.add_argument("--payload", default="{}", help="A JSON object (default {}).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            payload = json.loads(options["payload"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}") from None
        except RecursionError:
            raise CommandError("--payload is nested too deeply") from None
        stage = Stage.objects.filter(slug=options["stage"]).first()
        if stage is None:
            raise CommandError(f"unknown stage '{options['stage']}'")
        try:
            task = task_create(stage=stage, type=options["type"], payload=payload, actor="cli")
        except ValidationError as exc:
            raise CommandError(validation_line(exc)) from None
        if task.deduplicated:  # dedupe (issue 15): the live task holding this payload's key
            self.stdout.write(f"task {task.pk} at {stage.slug} is live with this payload's dedupe key: nothing created")
            return
        self.stdout.write(f"created task {task.pk} ({task.type}) at {stage.slug}")
