"""Admin: edit stages (with their transitions inline) and look after tasks.

Lifecycle fields are read-only; state changes go through admin actions that
call the services, so the admin can never corrupt a lock or skip history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString

from tasks_app import services
from tasks_app.forms.fields import JSONDocumentField
from tasks_app.forms.widgets import JSONEditorWidget, SecretInput
from tasks_app.jsonpreview import PAGE_CHARS, editable_json, json_head, json_preview, json_size
from tasks_app.models import JobRun, Stage, Task, TaskEvent, Transition, WorkerProcess, validate_payload
from tasks_app.paginators import EstimatedCountPaginator
from tasks_app.selectors.stages import stage_delete_counts
from tasks_app.services.assign import task_assign as assign_service
from tasks_app.services.assign import user_for
from tasks_app.services.cancel import task_cancel
from tasks_app.services.events import actor_for
from tasks_app.services.schemas import validate_arrival
from tasks_app.services.stages import stage_delete, stage_delete_refusal
from tasks_app.services.waiting import SEND_ON_FIELDS, send_on_route_problems

HISTORY_LIMIT = 50  # events shown under a task (a task retried forever has an endless history)
PAYLOAD_PREVIEW_CHARS = 120  # the changelist's payload column: one line, cut with an ellipsis


def hook_url(stage: Stage) -> str:
    """Where the stage's hook listens (its slug may not exist yet on the add page)."""
    return reverse("hook", args=[stage.slug]) if stage.slug else "/hooks/<slug>/"


def hook_secret_help(stage: Stage) -> SafeString:
    # The admin renders help texts as HTML: the model's "<slug>" and "<HMAC ...>" vanished as unknown
    # tags. This one names the real URL, escaped.
    return escape(
        f"Hook stages: requests to {hook_url(stage)} must carry it (X-Hook-Token: <secret>, or "
        "X-Hook-Signature: sha256=<HMAC-SHA256 of the body>). Generated when left blank."
    )


class OutgoingTransitionFormSet(forms.BaseInlineFormSet):
    """The stage's outgoing transitions as this submit saves them: an on_timeout or on_overdue type set or
    changed on the stage must pass one of them (services.waiting.send_on_route_problems, as a workflow file)."""

    def clean(self) -> None:
        super().clean()
        stage, before = self.instance, self._saved_values()
        changed = {
            n: getattr(stage, n) for n in SEND_ON_FIELDS if getattr(stage, n) and getattr(stage, n) != before.get(n)
        }
        kept = [
            f.cleaned_data.get("task_type") or ""
            for f in self.forms
            if f.cleaned_data and f.cleaned_data.get("target") and not f.cleaned_data.get("DELETE")
        ]
        problems = send_on_route_problems(stage.slug, changed, kept)
        if problems:
            raise ValidationError(list(problems.values()))

    def _saved_values(self) -> dict[str, str]:
        if self.instance.pk is None:
            return {}
        return Stage.objects.filter(pk=self.instance.pk).values(*SEND_ON_FIELDS).first() or {}


class OutgoingTransitionInline(admin.TabularInline):
    model = Transition
    fk_name = "source"
    extra = 1
    formset = OutgoingTransitionFormSet
    autocomplete_fields = ["target"]
    verbose_name = "outgoing transition"


class StageAdminForm(forms.ModelForm):
    class Meta:
        model = Stage
        fields = [
            "slug", "name", "kind", "handler", "description", "is_paused", "lock_timeout", "max_attempts",
            "max_run_time", "max_wait", "on_timeout", "schemas", "hook_secret", "schedule", "groups",
            "max_concurrency", "rate_limit",
            "default_priority", "priority_from", "dedupe_on", "notify", "notify_digest",
            "assignee_from", "assignee_only",
            "remind_after", "remind_max", "due_after", "on_overdue",
        ]  # fmt: skip
        widgets = {"schemas": JSONEditorWidget(), "hook_secret": SecretInput()}
        # bounded nesting, no RecursionError
        field_classes = {"schemas": JSONDocumentField, "dedupe_on": JSONDocumentField, "notify": JSONDocumentField}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "schemas" in self.fields:
            self.fields["schemas"].required = False  # {} (no schemas) is the usual value
        if "hook_secret" in self.fields:
            self.fields["hook_secret"].help_text = hook_secret_help(self.instance)

    def clean_schemas(self) -> Any:
        return self.cleaned_data.get("schemas") or {}

    def clean_dedupe_on(self) -> Any:
        return self.cleaned_data.get("dedupe_on") or []  # blank: no dedupe (the model's validator checks the rest)

    def clean_notify(self) -> Any:
        return self.cleaned_data.get("notify") or {}  # blank: nobody is told (the model's validator checks the rest)


def _delete_stages(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Stage]) -> Any:
    """Django's "delete selected", where a task arriving after the confirmation is a message, not a 500."""
    try:
        with transaction.atomic():
            return delete_selected(modeladmin, request, queryset)
    except services.TaskError as exc:
        modeladmin.message_user(request, str(exc), messages.ERROR)
        return None


@admin.register(Stage)
class StageAdmin(admin.ModelAdmin):
    form = StageAdminForm
    list_display = ["slug", "name", "kind", "handler", "schedule", "lock_timeout", "max_attempts", "is_paused"]
    list_filter = ["kind", "is_paused"]
    search_fields = ["slug", "name", "handler"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["groups"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "kind", "handler", "description", "is_paused"]}),
        ("Running", {"fields": ["lock_timeout", "max_attempts", "max_run_time"]}),
        ("Waiting-time limit", {"fields": ["max_wait", "on_timeout"]}),
        ("Flow control", {"fields": ["max_concurrency", "rate_limit"]}),
        ("Priority", {"fields": ["default_priority", "priority_from"]}),
        ("Dedupe", {"fields": ["dedupe_on"]}),
        ("Payload schemas", {"fields": ["schemas"]}),
        ("Hook stages", {"fields": ["hook_secret"], "classes": ["collapse"]}),
        ("Job stages", {"fields": ["schedule"]}),
        ("Form stages", {"fields": ["groups", "notify", "notify_digest"]}),
        # Issue 16: reminders and due times (services.reminders, services.due); form stages only.
        # Assign (issue 16, services.assign): who a task arriving here is for, and who else may open it.
        (
            "People",
            {"fields": ["remind_after", "remind_max", "due_after", "on_overdue", "assignee_from", "assignee_only"]},
        ),
        ("Join", {"fields": ["join_rule", "join_key", "join_count", "join_timeout", "join_type"]}),
    ]
    inlines = [OutgoingTransitionInline]
    readonly_fields = ["hook_secret_masked"]

    class Media:
        css = {"all": ["tasks_app/admin.css"]}

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """The hook secret in clear only for those who may change the stage (it lets anyone post tasks)."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        return [
            (name, {**opts, "fields": ["hook_secret_masked" if f == "hook_secret" else f for f in opts["fields"]]})
            for name, opts in fieldsets
        ]

    # Deleting: services/stages.py's policy, as DELETE /api/stages/<slug>/ does. Not Django's collector:
    # Task.stage is PROTECT, so it listed every task as protected and refused any stage that ever had one.
    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[str]]:
        """The confirmation page: refused while a stage has pending or locked tasks, else what goes with them."""
        stages = list(objs)
        refusals = [refusal for refusal in map(stage_delete_refusal, stages) if refusal]
        if refusals:
            return [], {}, set(), refusals
        counts = {what: n for what, n in stage_delete_counts(stages).items() if n}
        listed: list[Any] = [str(s) for s in stages] + [f"{n} {what}" for what, n in counts.items()]
        return listed, {"stages": len(stages), **counts}, set(), []

    def delete_model(self, request: HttpRequest, obj: Stage) -> None:
        stage_delete(stage=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Stage]) -> None:
        with transaction.atomic():  # all the selected stages or none
            for stage in queryset:
                stage_delete(stage=stage)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except services.TaskError as exc:  # a task arrived after the confirmation page: rolled back
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:tasks_app_stage_change", args=[object_id]))

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        selected = actions.get("delete_selected")  # typed Optional (Django's values are never None)
        if selected is not None:
            _, name, description = selected
            actions["delete_selected"] = (_delete_stages, name, description)
        return actions

    @admin.display(description="hook secret")
    def hook_secret_masked(self, obj: Stage) -> str:
        if not obj.hook_secret:
            return "—"
        return format_html(
            '<span class="secret-masked">{}</span><div class="help">Hidden: only users who may change this stage '
            "see it. Requests to {} must carry it.</div>",
            "•" * 12,
            hook_url(obj),
        )


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    """Runs of job stages, read-only: the scheduler writes them."""

    list_display = ["stage", "due_at", "status", "missed", "tasks_processed", "tasks_sent", "worker_id", "finished_at"]
    list_filter = ["status", "stage"]
    list_select_related = ["stage"]
    date_hierarchy = "due_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Transition)
class TransitionAdmin(admin.ModelAdmin):
    list_display = ["source", "task_type_display", "target"]
    list_filter = ["source", "target"]
    search_fields = ["source__slug", "target__slug", "task_type"]
    autocomplete_fields = ["source", "target"]
    list_select_related = ["source", "target"]

    @admin.display(description="task type", ordering="task_type")
    def task_type_display(self, obj: Transition) -> str:
        return obj.task_type or "* (every type)"


class TaskEventInline(admin.TabularInline):
    model = TaskEvent
    extra = 0
    can_delete = False
    fields = readonly_fields = ("at", "kind", "actor", "details_preview")
    ordering = ["id"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="details")
    def details_preview(self, obj: TaskEvent) -> str:
        # An edit's details hold the payload before and after: the head only, like every payload shown.
        return json_preview(obj.details, 300)


def _run_action(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Task], verb: str, action: Callable[..., Any]
) -> None:
    actor = actor_for(request.user)
    done, refused, ended_cancelled = 0, [], 0
    for task_id in queryset.values_list("id", flat=True):
        try:
            outcome = action(task_id=task_id, actor=actor)
            done += 1
            # A release after a cancel request ends the task cancelled (services.operator.task_force_release).
            ended_cancelled += action is services.task_force_release and outcome == Task.Status.CANCELLED
        except services.TaskError as exc:
            refused.append(str(exc))
    if done:
        cancelled = f" {ended_cancelled} of them ended cancelled: a cancel was requested." if ended_cancelled else ""
        modeladmin.message_user(request, f"{verb} {done} task(s).{cancelled}", messages.SUCCESS)
    if refused:
        more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
        modeladmin.message_user(request, " ".join(refused[:3]) + more, messages.WARNING)


def _cancel_in_admin(*, task_id: int, actor: str) -> None:
    """The admin's cancel: an action takes no input, so its reason says where it came from."""
    task_cancel(task_id=task_id, actor=actor, reason="cancelled in the admin")


class TaskAdminForm(forms.ModelForm):
    class Meta:
        model = Task
        fields = ["stage", "type", "payload", "available_at", "priority", "assignee"]
        widgets = {"payload": JSONEditorWidget()}
        field_classes = {"payload": JSONDocumentField}  # bounded nesting, no RecursionError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "payload" in self.fields:
            # {} is a valid payload, but a form counts it as empty: don't require it.
            self.fields["payload"].required = False
        if "priority" in self.fields and self.instance.pk is None:
            # Blank: the stage's (services.routing.stage_priority), as every other way to create a task.
            self.fields["priority"].required = False
            self.fields["priority"].initial = None

    def clean_payload(self) -> Any:
        raw = str(self.data.get(self.add_prefix("payload"), "")).strip()
        if raw == "":
            return {}
        payload = self.cleaned_data.get("payload")
        validate_payload(payload)  # "null" parses to None: say so rather than store {}
        return payload

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data  # what ModelForm.clean returns (typed Optional for a plain Form)
        task = self.instance
        stage, type, payload = (
            data.get("stage", task.stage_id and task.stage),
            data.get("type", task.type),
            data.get("payload"),
        )
        if stage is not None and type and isinstance(payload, dict):
            # The payload schemas, here rather than as a 500 from the service in save_model.
            source = task.source_stage if task.pk else None
            try:
                validate_arrival(stage=stage, source_stage=source, type=type, payload=payload)
            except ValidationError as exc:
                self.add_error("payload", exc.message_dict.get("payload", exc.messages))
        assignee = data.get("assignee")
        if stage is not None and assignee is not None and "assignee" in self.changed_data:
            try:  # assign (issue 16): an active user who may work on the stage (services.assign)
                user_for(stage, assignee.get_username())
            except ValidationError as exc:
                self.add_error("assignee", exc.message_dict.get("assignee", exc.messages))
        return data


class AssignedFilter(admin.SimpleListFilter):
    """Assign (issue 16): tasks with an assignee or without (the user is in the search box: its username)."""

    title = "assignee"
    parameter_name = "assigned"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Assigned"), ("no", "Unassigned")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(assignee__isnull=False)
        if self.value() == "no":
            return queryset.filter(assignee__isnull=True)
        return queryset


class TaskTypeFilter(admin.SimpleListFilter):
    """The types the transitions route, from the small transition table: Django's own filter for a
    CharField lists SELECT DISTINCT type over the whole task table on every changelist view.
    Any other type is found with the search box."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        types = Transition.objects.exclude(task_type="").order_by("task_type").values_list("task_type", flat=True)
        return [(t, t) for t in dict.fromkeys(types)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(type=value) if value else queryset


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    form = TaskAdminForm
    list_display = ["id", "type", "stage", "status_badge", "attempts", "source_stage", "created", "payload_preview"]
    # "created" as a list filter (Today, Past 7 days, ...: no query), not date_hierarchy, whose year and
    # month links are a SELECT DISTINCT date_trunc(...) over every task of the period on each view.
    list_filter = ["status", "stage", TaskTypeFilter, AssignedFilter, "created_at"]
    search_fields = ["=id", "type"]
    list_select_related = ["stage", "source_stage"]
    raw_id_fields = ["parent", "assignee"]
    readonly_fields = [
        "status", "attempts", "lock_token", "locked_by", "locked_at", "locked_until",
        "completed_at", "last_error", "created_at", "updated_at", "parent", "source_stage",
    ]  # fmt: skip
    inlines = [TaskEventInline]
    actions = ["retry", "release", "mark_completed", "cancel"]
    # At volume no page view counts the table: no "N total" (a second COUNT), and a paginator that
    # counts at most 10,000 rows and otherwise estimates (tasks_app.paginators).
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    class Media:
        css = {"all": ["tasks_app/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        # Every page names a task with its stage's slug (Task.__str__: breadcrumbs, the changelist's
        # checkboxes, deletions). Both of list_select_related: the changelist applies it only to a
        # queryset that has no select_related yet.
        return super().get_queryset(request).select_related(*self.list_select_related)

    def get_formset_kwargs(self, request: HttpRequest, obj: Any, inline: Any, prefix: str) -> dict[str, Any]:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, TaskEventInline) and obj is not None and obj.pk:
            # The latest events only, as on the task's page.
            latest = list(obj.events.order_by("-id").values_list("id", flat=True)[:HISTORY_LIMIT])
            kwargs["queryset"] = kwargs["queryset"].filter(id__in=latest)
        return kwargs

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            # The stage and type of an existing task change only by sending it on;
            # scheduling belongs to the lifecycle (retries and backoff).
            fields += ["stage", "type", "available_at", "priority", "payload_view"]
            if obj.status not in (Task.Status.PENDING, Task.Status.LOCKED):
                fields.append("assignee")  # a finished task keeps who it was for (services.assign)
            # A worker holds a locked task: its handler is reading this payload right now.
            # A payload too large for a textarea is shown (bounded) but not edited in a page.
            if obj.status == Task.Status.LOCKED or not self._payload_fits(obj):
                fields.append("payload")
        return fields

    def _payload_fits(self, obj: Task) -> bool:
        if not hasattr(obj, "_payload_fits"):  # asked several times per page; measured once
            obj._payload_fits = editable_json(obj.payload) is not None  # type: ignore[attr-defined]
        return obj._payload_fits  # type: ignore[attr-defined]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str | list[str] | tuple[str, ...]]:
        """A payload that is not edited here is shown as payload_view: bounded, never the whole document."""
        fields = [f for f in super().get_fields(request, obj) if f != "payload_view"]
        if obj is not None and (
            not self.has_change_permission(request, obj) or "payload" in self.get_readonly_fields(request, obj)
        ):
            fields = ["payload_view" if f == "payload" else f for f in fields]
        return fields

    def save_model(self, request: HttpRequest, obj: Task, form: Any, change: bool) -> None:
        actor = actor_for(request.user)
        if not change:
            created = services.task_create(
                stage=obj.stage, type=obj.type, payload=obj.payload, actor=actor, available_at=obj.available_at,
                priority=form.cleaned_data.get("priority"),
            )  # fmt: skip
            obj.pk = created.pk
            if form.cleaned_data.get("assignee") is not None and not created.deduplicated:
                assign_service(task_id=created.pk, assignee=form.cleaned_data["assignee"], actor=actor)
            obj.refresh_from_db()
            if created.deduplicated:  # dedupe (issue 15): the arrival found the live task with its key
                self.message_user(
                    request, f"Nothing created: task {created.pk} is live at {obj.stage.slug} with this payload's "
                    "dedupe key (the stage's dedupe_on).", messages.WARNING,
                )  # fmt: skip
            return
        if "assignee" in form.changed_data:
            try:
                assign_service(task_id=obj.pk, assignee=form.cleaned_data.get("assignee"), actor=actor)
            except (services.TaskError, ValidationError) as exc:  # finished meanwhile, or the user changed
                self.message_user(request, " ".join(getattr(exc, "messages", [str(exc)])), messages.ERROR)
        if "payload" in form.changed_data:
            try:
                services.task_edit_payload(task_id=obj.pk, payload=obj.payload, actor=actor)
            except services.TaskError as exc:
                # A worker claimed it after the form was opened.
                self.message_user(request, str(exc), messages.ERROR)
        # Every other field is read-only on change; nothing else to save.

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Task) -> str:
        # Colours come from classes in admin.css: the CSP blocks style="" attributes.
        label, state = obj.get_status_display(), obj.status
        if obj.status == Task.Status.LOCKED and obj.is_lock_expired(timezone.now()):
            label, state = label + " (lock expired)", "expired"
        return format_html('<b class="task-status task-status-{}">{}</b>', state, label)

    @admin.display(description="created at", ordering="created_at")
    def created(self, obj: Task) -> str:
        # Compact ("2026-12-01 22:11", in the viewer's zone): Django's "Dec. 1, 2026, 10:11 p.m." took the
        # room the payload column needs at 1440 px.
        return timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description="payload")
    def payload_preview(self, obj: Task) -> str:
        # One line, cut with an ellipsis by admin.css where the column ends: an 80-character <code>
        # wrapped in a narrow column made every row several lines tall. The task's page has the rest.
        return format_html('<code class="payload-preview">{}</code>', json_preview(obj.payload, PAYLOAD_PREVIEW_CHARS))

    @admin.display(description="payload")
    def payload_view(self, obj: Task) -> str:
        """A read-only payload: the head of its indented JSON, and a link to the whole document."""
        text, cut = json_head(obj.payload, PAGE_CHARS, indent=2)
        link = format_html('<a href="{}">Raw JSON</a>', reverse("tasks_app:task-payload", args=[obj.pk]))
        if cut:
            size = filesizeformat(json_size(obj.payload))
            note = format_html("Truncated: {} in full. {}", size, link)
            return format_html('<pre class="payload-view">{}…</pre><p class="payload-note">{}</p>', text, note)
        return format_html('<pre class="payload-view">{}</pre><p class="payload-note">{}</p>', text, link)

    @admin.action(description="Retry (completed or failed -> pending)", permissions=["change"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        _run_action(self, request, queryset, "Retried", services.task_retry)

    @admin.action(description="Release lock (locked -> pending)", permissions=["change"])
    def release(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        _run_action(self, request, queryset, "Released", services.task_force_release)

    @admin.action(description="Mark completed", permissions=["change"])
    def mark_completed(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        _run_action(self, request, queryset, "Marked completed", services.task_mark_completed)

    @admin.action(description="Cancel (pending or failed: at once; locked: a cancel request)", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        _run_action(self, request, queryset, "Cancelled (or requested the cancel of)", _cancel_in_admin)


@admin.register(WorkerProcess)
class WorkerProcessAdmin(admin.ModelAdmin):
    """The worker registry, read-only: workers write it, people read it."""

    list_display = [
        "worker_id", "host", "pid", "alive", "concurrency", "started_at", "last_heartbeat",
        "tasks_done", "tasks_failed", "held",
    ]  # fmt: skip
    list_filter = ["host"]
    search_fields = ["worker_id", "host"]
    ordering = ["-last_heartbeat"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="alive", boolean=True)
    def alive(self, obj: WorkerProcess) -> bool:
        return obj.is_alive()

    @admin.display(description="holding")
    def held(self, obj: WorkerProcess) -> int:
        return len(obj.current_tasks)
