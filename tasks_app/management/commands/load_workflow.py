"""Load a workflow file made by dump_workflow: everything is checked first, then applied in one transaction."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks_app.services.workflow import WorkflowInvalid, WorkflowSyntaxError, workflow_load, workflow_parse


def read_text(path: str, name: str) -> str:
    """The file's text (`-` is stdin); a missing or undecodable file is one readable line."""
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8-sig")  # -sig: tolerate an editor's BOM
    except OSError as exc:
        raise CommandError(f"{name}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CommandError(f"{name}: not UTF-8 text (byte {exc.start}); nothing was changed.") from None


class Command(BaseCommand):
    help = (
        "Create or update stages and transitions from a workflow file (see dump_workflow). "
        "Every problem is listed and nothing changes unless the whole file is valid."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="A workflow JSON file, or - to read standard input.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Check the file and show what would change, changing nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = "<stdin>" if options["file"] == "-" else options["file"]
        text = read_text(options["file"], name)
        try:
            summary = workflow_load(workflow_parse(text), dry_run=options["dry_run"])
        except WorkflowSyntaxError as exc:
            raise CommandError(f"{name}: {exc}; nothing was changed.") from None
        except WorkflowInvalid as exc:
            # One CommandError carrying every line: the exit status is 1 and callers
            # of call_command get the whole list in the exception.
            lines = [f"{name}: {len(exc.problems)} problem(s); nothing was changed.", *exc.problems]
            raise CommandError("\n  ".join(lines)) from None
        self.stdout.write("\n".join(summary.lines()))
