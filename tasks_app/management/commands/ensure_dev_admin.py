"""Create the development admin user if it does not exist (make run)."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create user 'admin' (password $DEV_ADMIN_PASSWORD, default 'admin') for local development."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("refusing to create a development admin with DEBUG off; use createsuperuser")
        username = os.environ.get("DEV_ADMIN_USER", "admin")
        password = os.environ.get("DEV_ADMIN_PASSWORD", "admin")
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"admin user '{username}' exists (password unchanged)")
            return
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"created admin user '{username}' with password '{password}'")
