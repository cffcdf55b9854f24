"""JSON output for the long-running commands (run_worker, run_scheduler) when TASKS_LOG_FORMAT=json.

Their status lines ("worker ... started", progress, job summaries), their error
lines (a bad option, CommandError) and an unexpected crash's traceback are then
JSON log lines like everything else the process writes: a log collector never
sees a plain line among them. In text mode nothing changes.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, NoReturn

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks_app.logcontext import JsonLines
from tasks_app.worker.pacing import TextOut


def json_mode() -> bool:
    return settings.TASKS_LOG_FORMAT == "json"


class JsonOutputCommand(BaseCommand):
    #: Logger name on the command's status lines.
    output_logger = "tasks_app"

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if json_mode():

            def error(message: str) -> NoReturn:
                if not parser.called_from_command_line:
                    raise CommandError(f"Error: {message}")
                JsonLines(sys.stderr, logger=self.output_logger, level=logging.ERROR).write(f"{subcommand}: {message}")
                sys.exit(2)

            parser.error = error  # type: ignore[method-assign]
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        if not json_mode():
            super().run_from_argv(argv)
            return
        try:
            super().run_from_argv(argv)
        except Exception:
            # Python would print the traceback as plain lines: one JSON record with it instead.
            logging.getLogger(self.output_logger).exception("%s crashed", argv[1] if len(argv) > 1 else "command")
            sys.exit(1)

    def execute(self, *args: Any, **options: Any) -> Any:
        self._raw_stdout: IO[str] = options.get("stdout") or sys.stdout
        if json_mode():
            options["stdout"] = JsonLines(self._raw_stdout, logger=self.output_logger)
            options["stderr"] = JsonLines(
                options.get("stderr") or sys.stderr, logger=self.output_logger, level=logging.ERROR
            )
        return super().execute(*args, **options)

    def stdout_for(self, logger: str) -> TextOut:
        """Status output of one part of the command (run_worker's scheduler) under its own logger name."""
        if json_mode():
            return JsonLines(self._raw_stdout, logger=logger)
        return self.stdout
