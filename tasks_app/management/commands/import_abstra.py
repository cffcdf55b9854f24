"""Import an Abstra project: `import_abstra PROJECT_DIR [--output FILE] [--scripts-prefix PATH]`.

Reads PROJECT_DIR/abstra.json and prints what it would become here: the
stages and transitions of a workflow file (the load_workflow format), the
task schemas moved from the receiving stages to the senders, a note for each
form and hook, and every construct it cannot map, with its location. Nothing
is written unless --output FILE is given, and nothing is ever loaded: run
`load_workflow FILE` after reading the report. Bad input (no directory, no
abstra.json, not JSON, another version, a transition to no stage, a file path
outside the project, ...) is one line on stderr and exit status 1.
The mapping: tasks_app.services.abstra_import.

The format facts relied on, as read from abstra 3.32.23
(abstra_internals.repositories.project.project: Project, *Stage.from_dict,
WorkflowTransition; controllers.common.task_executors; validators.task_schema),
abstra.json "version": "18.0" (Abstra migrates older files when it opens them):

- Top level: "version", "workspace" (branding of Abstra's web UI), "home"
  ({"access_control"}), and one list per stage kind: "forms", "hooks",
  "scripts", "jobs", "pages", "components" ("inputs"/"outputs" for modules).
- A stage: "id" (a random UUID: its only identity, the one transitions name),
  "title", "file" (its Python file, relative to the project root; components
  have none), "transitions", "task_schema" (optional), and for the editor
  "workflow_position" [x, y], "is_initial" (derived from the transitions) and
  "input"/"output" (module entry and exit flags). Jobs add "schedule" (cron,
  "evaluated in UTC once deployed"); hooks "path" (URL), "enabled",
  "api_schema"; forms "path", "auto_start", "end_message", "start_message",
  "error_message", "timeout_message", "start_button_text",
  "notification_trigger" {variable_name, enabled}, "access_control"
  {is_public, required_roles}.
- Transitions live on the source stage: {"id", "target_id", "target_type",
  "type": "task", "task_type"?}. Routing reads target_id only. task_type is
  left out when blank; absent, null or blank routes every type
  (WorkflowTransition.matches), else it must equal the task's type exactly.
- On load Abstra drops, with a warning, transitions whose target_id names no
  stage, a transition whose id it saw before, and a second transition from one
  stage to the same target (the first is kept); of two stages with one id it
  keeps the first (in the order forms, hooks, scripts, jobs, pages, components).
- send_task(type, payload) copies the task to the target of every matching
  transition, after checking the payload against the task_schema of every
  one of those targets (a map {type: JSON Schema} with a "default" entry for
  other types, or a flat schema for every type; services.abstra_schemas has
  the details); one refusal refuses the send. With no matching transition it
  prints a warning and drops the task.
- Script stages run their file once per task sent to them; jobs run theirs at
  each cron time and fetch waiting tasks with get_tasks; hooks run theirs per
  HTTP request; forms are Python web UIs (abstra.forms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks_app.services.abstra_import import AbstraImportError, import_abstra, write_workflow


class Command(BaseCommand):
    help = (
        "Turn an Abstra project (its abstra.json) into a workflow file for load_workflow. "
        "Prints the mapping and what can't be mapped; writes only with --output."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project_dir", help="The Abstra project's directory (the one holding abstra.json).")
        parser.add_argument("--output", help="Write the workflow file here (otherwise nothing is written).")
        parser.add_argument(
            "--scripts-prefix",
            help="Directory the script and job handlers name the project's files under (default: PROJECT_DIR, "
            "relative to BASE_DIR when inside it). List it in TASKS_SCRIPT_DIRS.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = import_abstra(Path(options["project_dir"]), scripts_prefix=options["scripts_prefix"])
        except AbstraImportError as exc:
            raise CommandError(f"{exc}; nothing was written.") from None
        self.stdout.write("\n".join(result.report_lines()))
        if options["output"] is None:
            self.stdout.write("Nothing was written: pass --output FILE to write the workflow file.")
            return
        try:
            write_workflow(result, Path(options["output"]))
        except OSError as exc:
            raise CommandError(f"{options['output']}: cannot write it: {exc.strerror or exc}") from None
        self.stdout.write(f"Wrote {options['output']}; load it with: manage.py load_workflow {options['output']}")
