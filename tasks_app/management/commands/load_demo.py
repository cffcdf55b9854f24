"""Load (or refresh) the demo order workflow: its workflow file, then a few sample orders."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks_app.demo import WORKFLOW_FILE, DemoUnavailable, load_demo


class Command(BaseCommand):
    help = (
        f"Load the demo order workflow ({WORKFLOW_FILE.name}, as load_workflow would; idempotent) "
        "and send a few sample orders."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-orders", action="store_true", help="Only the stages and transitions.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            stages = load_demo(with_orders=not options["no_orders"])
        except DemoUnavailable as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"demo workflow ready: {', '.join(stages)}")
        hook = stages["orders"]
        address = os.environ.get("RUN_ADDR", "127.0.0.1:8000")  # where `make run` serves
        self.stdout.write(
            f"send an order: curl -X POST 'http://{address}/hooks/{hook.slug}/?type=order' "
            f"-H 'X-Hook-Token: {hook.hook_secret}' -H 'Content-Type: application/json' "
            """-d '{"order_id": 1, "customer": "you@example.com", "items": [{"sku": "book", "qty": 1}]}'"""
        )
