"""Load (or refresh) the demo order workflow."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks_app.demo import load_demo
from tasks_app.services.handlers import module_allowed


class Command(BaseCommand):
    help = "Create the demo order workflow (idempotent) and send a few sample orders."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-orders", action="store_true", help="Only the stages and transitions.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not module_allowed("tasks_app.demo"):
            # Its stages would be saved, and then every task and run of them would fail.
            raise CommandError("the demo's handlers (tasks_app.demo) are not in TASKS_HANDLER_MODULES; add them")
        stages = load_demo(with_orders=not options["no_orders"])
        self.stdout.write(f"demo workflow ready: {', '.join(stages)}")
        hook = stages["orders"]
        address = os.environ.get("RUN_ADDR", "127.0.0.1:8000")  # where `make run` serves
        self.stdout.write(
            f"send an order: curl -X POST 'http://{address}/hooks/{hook.slug}/?type=order' "
            f"-H 'X-Hook-Token: {hook.hook_secret}' -H 'Content-Type: application/json' "
            """-d '{"order_id": 1, "customer": "you@example.com", "items": [{"sku": "book", "qty": 1}]}'"""
        )
