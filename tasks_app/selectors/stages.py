"""What deleting stages would take with them: the admin's confirmation page (services/stages.py does it)."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Q

from tasks_app.models import Stage, Task, Transition


def stage_delete_counts(stages: Iterable[Stage]) -> dict[str, int]:
    """Counts of what goes with the stages: finished tasks (with their history) and transitions, either way."""
    ids = [s.pk for s in stages]
    finished = Task.objects.filter(stage_id__in=ids, status__in=[Task.Status.COMPLETED, Task.Status.FAILED])
    transitions = Transition.objects.filter(Q(source_id__in=ids) | Q(target_id__in=ids))
    return {
        "finished tasks (with their history)": finished.aggregate(n=Count("id"))["n"],
        "transitions": transitions.count(),
    }
