"""The overview's graph geometry (tasks_app/graph.py): nothing overlaps and everything is inside the viewBox.

Checked on the demo workflow (whose in_stock and out_of_stock edges join the
same two stages) and on a 12-stage workflow with parallel, opposite,
skipping, backward and self edges, in both drawings (wide: depths as columns;
tall: one stage per row), with and without the notes helper H4's figures add.
The page draws exactly these rectangles (test_the_page_draws_the_computed_geometry).
"""

from __future__ import annotations

import itertools
import random
import re

import pytest
from django.test import Client

from tasks_app import graph
from tasks_app.demo import STAGES, TRANSITIONS
from tasks_app.models import Stage, Transition
from tasks_app.views.overview import graph_context

DEMO_NODES = list(range(1, len(STAGES) + 1))
DEMO_PK = {s["slug"]: pk for pk, s in zip(DEMO_NODES, STAGES, strict=True)}
DEMO_EDGES = [graph.EdgeIn(pk=i + 1, source=DEMO_PK[s], target=DEMO_PK[t], label=label)
              for i, (s, t, label) in enumerate(TRANSITIONS)]  # fmt: skip

# 12 stages: a fan-out, a fan-in, three parallel edges, a pair of opposite edges, an edge skipping two
# depths, a cycle back to the start, a self edge, and long labels.
BIG_NODES = list(range(101, 113))
BIG_ROUTES = [
    (101, 102, "order"), (102, 103, "in_stock"), (102, 103, "out_of_stock"), (102, 103, "partly_in_stock"),
    (103, 104, "approved"), (103, 105, "declined"), (103, 106, "needs_a_second_opinion"), (104, 107, "invoiced"),
    (105, 107, "notified"), (106, 103, "back_to_review"), (103, 106, "escalated"), (107, 108, "digest"),
    (108, 109, "archive"), (109, 110, "x"), (110, 111, "y"), (111, 112, "z"), (101, 108, "skip_everything"),
    (112, 101, "start_over"), (105, 105, "retry_self"), (104, 105, "sideways"), (105, 104, "sideways_back"),
]  # fmt: skip
BIG_EDGES = [graph.EdgeIn(pk=500 + i, source=s, target=t, label=label) for i, (s, t, label) in enumerate(BIG_ROUTES)]
DRAWINGS = [graph.wide, graph.tall]


def check(drawing: graph.Drawing) -> None:
    """No two boxes, no two labels and no label and box intersect; all of it is inside the viewBox."""
    boxes = list(drawing.boxes.values())
    labels = [e.label for e in drawing.edges]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.intersects(b), (a, b)
    for a, b in itertools.combinations(labels, 2):
        assert not a.intersects(b), (a, b)
    for label, box in itertools.product(labels, boxes):
        assert not label.intersects(box), (label, box)
    for rect in boxes + labels:
        assert rect.inside(drawing.view), (rect, drawing.view)
    for e in drawing.edges:
        for x, y in e.points:  # a cubic Bézier lies inside the hull of its points
            assert drawing.view.x <= x <= drawing.view.right and drawing.view.y <= y <= drawing.view.bottom
        assert e.label.w >= graph.label_width(e.text) - 0.01  # the box holds its (generously measured) text


@pytest.mark.parametrize("draw", DRAWINGS, ids=["wide", "tall"])
def test_the_demo_graph_has_no_overlaps_and_fits_its_view(draw: graph.Layout) -> None:
    drawing = draw(DEMO_NODES, DEMO_EDGES)
    check(drawing)
    assert len(drawing.boxes) == len(STAGES) and len(drawing.edges) == len(TRANSITIONS)
    # in_stock and out_of_stock join the same two stages: two distinct curves, labels apart.
    in_stock, out_of_stock = (e for e in drawing.edges if e.text in ("in_stock", "out_of_stock"))
    assert in_stock.points != out_of_stock.points
    assert not in_stock.label.intersects(out_of_stock.label, graph.LABEL_CLEARANCE)


@pytest.mark.parametrize("draw", DRAWINGS, ids=["wide", "tall"])
def test_a_12_stage_graph_with_parallel_and_opposite_edges_has_no_overlaps(draw: graph.Layout) -> None:
    drawing = draw(BIG_NODES, BIG_EDGES)
    check(drawing)
    assert len(drawing.edges) == len(BIG_EDGES)
    paths = [e.path for e in drawing.edges]
    assert len(set(paths)) == len(paths)  # parallel and opposite edges are drawn apart


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("draw", DRAWINGS, ids=["wide", "tall"])
def test_random_workflows_of_30_stages_have_no_overlaps(draw: graph.Layout, seed: int) -> None:
    rng = random.Random(seed)
    nodes = list(range(1, 31))
    edges = [graph.EdgeIn(pk=i, source=rng.choice(nodes), target=rng.choice(nodes), label="t" * rng.randint(1, 24))
             for i in range(50)]  # fmt: skip
    check(draw(nodes, edges, edge_notes={e.pk: "50%" for e in edges[::2]}))


def test_the_wide_drawing_puts_depths_in_columns_and_the_tall_one_a_stage_per_row() -> None:
    wide, tall = graph.wide(DEMO_NODES, DEMO_EDGES), graph.tall(DEMO_NODES, DEMO_EDGES)
    x = {pk: r.x for pk, r in wide.boxes.items()}
    assert x[DEMO_PK["orders"]] < x[DEMO_PK["check-stock"]] < x[DEMO_PK["review"]] < x[DEMO_PK["invoice"]]
    assert x[DEMO_PK["invoice"]] == x[DEMO_PK["notify-customer"]]  # same depth, same column
    assert len({r.x for r in tall.boxes.values()}) == 1  # one column
    assert len({r.y for r in tall.boxes.values()}) == len(STAGES)  # a row each
    assert wide.view.w > wide.view.h and tall.view.h > tall.view.w


@pytest.mark.parametrize("draw", DRAWINGS, ids=["wide", "tall"])
def test_notes_make_room_for_themselves(draw: graph.Layout) -> None:
    edge_notes = {e.pk: f"{(e.pk * 37) % 100}%" for e in BIG_EDGES}
    stage_notes = {101: ["wait p50 12 s · p95 40 s", "work p50 1.2 s · p95 9 s"], 103: ["people 61% of the time"]}
    drawing = draw(BIG_NODES, BIG_EDGES, edge_notes=edge_notes, stage_notes=stage_notes)
    check(drawing)
    assert {e.text for e in drawing.edges} >= {"in_stock · 37%", "order · 0%"}
    assert {r.h for r in drawing.boxes.values()} == {graph.BOX_H + 2 * graph.NOTE_H}  # every box as tall


def test_the_page_context_places_stage_notes_inside_their_box(db: None) -> None:
    a = Stage.objects.create(slug="a", name="A")
    b = Stage.objects.create(slug="b", name="B")
    t = Transition.objects.create(source=a, target=b, task_type="go")
    figures = {s.pk: {} for s in (a, b)}
    notes = {a.pk: ["wait p50 12 s · p95 40 s", "x" * 200]}
    wide, tall = graph_context([a, b], [t], figures, edge_notes={t.pk: "82%"}, stage_notes=notes)
    for g in (wide, tall):
        [edge] = g["edges"]
        assert edge.text == "go · 82%"
        box = next(b for b in g["boxes"] if b["stage"] == a)
        (y1, first), (y2, second) = box["notes"]
        assert first == "wait p50 12 s · p95 40 s"
        assert second.endswith("…") and len(second) < 60  # cut to the box's width
        assert y1 < y2 <= box["rect"].h - 4


def test_the_page_draws_the_computed_geometry(admin_client: Client, world: dict[str, Stage]) -> None:
    html = admin_client.get("/overview/").content.decode()
    stages = list(Stage.objects.order_by("id"))
    transitions = list(Transition.objects.order_by("id"))
    edges = [graph.EdgeIn(pk=t.pk, source=t.source_id, target=t.target_id, label=t.task_type or "*")
             for t in transitions]  # fmt: skip
    for name, draw in (("wide", graph.wide), ("tall", graph.tall)):
        drawing = draw([s.pk for s in stages], edges)
        svg = re.search(rf'<svg class="graph-{name}" viewBox="([^"]+)"(.*?)</svg>', html, re.DOTALL)
        assert svg is not None and svg.group(1) == drawing.view_box
        for s in stages:
            r = drawing.boxes[s.pk]
            assert f'transform="translate({r.x:.0f},{r.y:.0f})" data-stage="{s.slug}"' in svg.group(2)
        assert svg.group(2).count('class="edge-label"') == len(transitions)
