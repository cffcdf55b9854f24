"""The workflow graph's geometry: where each stage box, edge and edge label goes (the overview draws it).

Pure arithmetic on stage and transition ids, no queries and no HTML, so the
layout is tested geometrically (tests/test_overview_graph.py): no two boxes
or labels intersect, and everything lies inside the viewBox.

Two drawings of the same graph: `wide` puts each depth (distance from the
stages nothing sends to) in a column, for screens; `tall` puts one stage per
row in depth order, for phones, with the edges that skip rows in the gutters
beside the boxes. The page carries both and CSS shows one.

Labels: each edge's label starts at the middle of its curve; if its box would
touch a stage box or a label placed before it, it tries other points along
the curve, then rings around the middle further and further out, so the
search always ends (far enough out, nothing is in the way). Text widths are
estimated on the generous side (LABEL_CHAR px a character).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BOX_W = 240
BOX_H = 200  # the box's fixed lines; each stage note adds NOTE_H (the same for every box of a drawing)
NOTE_H = 15
COL_GAP = 110  # wide: room between columns for the edge labels
ROW_GAP = 44  # wide: between boxes of a column
TALL_GAP = 64  # tall: between rows
LANE = 16  # the distance between edges that share a gutter or a pair of boxes
PAD = 16
LABEL_H = 16
LABEL_CHAR = 6.8  # px per character at the label's 11 px font, generous
LABEL_PAD = 8
LABEL_CLEARANCE = 2  # the smallest gap between a label and anything else


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    def intersects(self, other: Rect, gap: float = 0.0) -> bool:
        """Do the two overlap (or come closer than `gap`)? Touching edges do not count."""
        return (
            self.x < other.right + gap
            and other.x < self.right + gap
            and self.y < other.bottom + gap
            and other.y < self.bottom + gap
        )

    def inside(self, other: Rect) -> bool:
        return self.x >= other.x and self.y >= other.y and self.right <= other.right and self.bottom <= other.bottom


Point = tuple[float, float]


@dataclass(frozen=True)
class EdgeIn:
    """A transition as the drawing needs it."""

    pk: int
    source: int
    target: int
    label: str


@dataclass
class EdgeOut:
    pk: int
    source: int
    target: int
    text: str  # the label, with its note if any ("approved · 82%")
    points: tuple[Point, Point, Point, Point]  # a cubic Bézier: start, two control points, end
    label: Rect

    @property
    def path(self) -> str:
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = self.points
        return f"M {x0:.1f} {y0:.1f} C {x1:.1f} {y1:.1f}, {x2:.1f} {y2:.1f}, {x3:.1f} {y3:.1f}"

    @property
    def label_x(self) -> float:  # the text's anchor (middle)
        return self.label.x + self.label.w / 2

    @property
    def label_y(self) -> float:  # the text's baseline
        return self.label.y + LABEL_H - 4


@dataclass
class Drawing:
    boxes: dict[int, Rect]  # stage pk -> its box, in stage order
    edges: list[EdgeOut]
    view: Rect = field(default_factory=lambda: Rect(0, 0, 0, 0))

    @property
    def view_box(self) -> str:
        v = self.view
        return f"{v.x:.0f} {v.y:.0f} {v.w:.0f} {v.h:.0f}"


Layout = Callable[..., Drawing]  # wide or tall


def label_width(text: str) -> float:
    return len(text) * LABEL_CHAR + 2 * LABEL_PAD


def fit(text: str, width: float, char: float) -> str:
    """`text` cut (with an ellipsis) to about `width` px at `char` px per character."""
    most = max(int(width // char), 1)
    return text if len(text) <= most else text[: most - 1] + "…"


def depths(nodes: Sequence[int], edges: Sequence[EdgeIn]) -> dict[int, int]:
    """Stage pk -> its distance from the stages nothing sends to (breadth first; in a cycle, the first reach)."""
    incoming = {e.target for e in edges if e.target != e.source}
    queue = deque(n for n in nodes if n not in incoming) or deque(nodes[:1])
    depth = dict.fromkeys(queue, 0)
    outgoing: dict[int, list[int]] = defaultdict(list)
    for e in edges:
        outgoing[e.source].append(e.target)
    while queue:
        node = queue.popleft()
        for target in outgoing[node]:
            if target not in depth and target in nodes:
                depth[target] = depth[node] + 1
                queue.append(target)
    return {n: depth.get(n, 0) for n in nodes}


def _columns(nodes: Sequence[int], edges: Sequence[EdgeIn], depth: Mapping[int, int]) -> list[list[int]]:
    """The stages of each depth, each column ordered by where its stages' senders sit (fewer crossings)."""
    columns: list[list[int]] = [[] for _ in range(max(depth.values(), default=0) + 1)]
    for n in nodes:
        columns[depth[n]].append(n)
    senders: dict[int, list[int]] = defaultdict(list)
    for e in edges:
        senders[e.target].append(e.source)
    row: dict[int, float] = {}
    for column in columns:
        order = {n: i for i, n in enumerate(column)}

        def place(n: int, order: dict[int, int] = order) -> tuple[float, int]:
            before = [row[s] for s in senders[n] if s in row and depth[s] < depth[n]]
            return (sum(before) / len(before) if before else order[n], order[n])

        column.sort(key=place)
        for i, n in enumerate(column):
            row[n] = i
    return columns


def _bezier(points: tuple[Point, Point, Point, Point], t: float) -> Point:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points
    u = 1 - t
    a, b, c, d = u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t
    return a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y1 + c * y2 + d * y3


def _spread(index: int, count: int) -> float:
    """The offset of the index-th of `count` edges that share a route: centred, LANE apart."""
    return (index - (count - 1) / 2) * LANE


def _lane(lanes: list[list[tuple[float, float]]], lo: float, hi: float) -> int:
    """The first lane (0, 1, ...) free over [lo, hi], now taken there: edges whose spans don't meet share one."""
    for i, spans in enumerate(lanes):
        if all(hi < a or lo > b for a, b in spans):
            spans.append((lo, hi))
            return i
    lanes.append([(lo, hi)])
    return len(lanes) - 1


def _routes_wide(boxes: Mapping[int, Rect], edges: Sequence[EdgeIn]) -> list[tuple[Point, Point, Point, Point]]:
    """Forward edges leave a box's right side for the next box's left side; backward and same-column
    edges leave its bottom and loop below; a stage sending to itself loops over its top right corner."""
    pairs = _shared(edges)
    below = max((b.bottom for b in boxes.values()), default=0)
    lanes: list[list[tuple[float, float]]] = []
    out = []
    for e in edges:
        s, t = boxes[e.source], boxes[e.target]
        off = _spread(*pairs[e.pk])
        if e.source == e.target:
            out.append(_self_loop(s, off))
        elif t.x > s.x:
            start, end = (s.right, s.y + s.h / 2 + off), (t.x, t.y + t.h / 2 + off)
            bend = (end[0] - start[0]) / 2
            out.append((start, (start[0] + bend, start[1]), (end[0] - bend, end[1]), end))
        else:
            lane = _lane(lanes, min(s.x, t.x) - LANE, max(s.right, t.right) + LANE)
            dip = below + 24 + (lane + 1) * LANE * 2
            start, end = (s.x + s.w / 2 + off, s.bottom), (t.x + t.w / 2 + off, t.bottom)
            out.append((start, (start[0], dip), (end[0], dip), end))
    return out


def _routes_tall(boxes: Mapping[int, Rect], edges: Sequence[EdgeIn]) -> list[tuple[Point, Point, Point, Point]]:
    """To the next row: bottom to top. Further down: through the left gutter; up: through the right one."""
    pairs = _shared(edges)
    rows = {n: i for i, n in enumerate(boxes)}
    left: list[list[tuple[float, float]]] = []
    right: list[list[tuple[float, float]]] = []
    out = []
    for e in edges:
        s, t = boxes[e.source], boxes[e.target]
        off = _spread(*pairs[e.pk])
        if e.source == e.target:
            out.append(_self_loop(s, off))
        elif rows[e.target] == rows[e.source] + 1:
            start, end = (s.x + s.w / 2 + off, s.bottom), (t.x + t.w / 2 + off, t.y)
            bend = (end[1] - start[1]) / 2
            out.append((start, (start[0], start[1] + bend), (end[0], end[1] - bend), end))
        elif rows[e.target] > rows[e.source]:
            lane = s.x - 20 - (_lane(left, s.y, t.bottom) + 1) * LANE * 2
            start, end = (s.x, s.y + s.h / 2 + off), (t.x, t.y + t.h / 2 + off)
            out.append((start, (lane, start[1]), (lane, end[1]), end))
        else:
            lane = s.right + 20 + (_lane(right, t.y, s.bottom) + 1) * LANE * 2
            start, end = (s.right, s.y + s.h / 2 + off), (t.right, t.y + t.h / 2 + off)
            out.append((start, (lane, start[1]), (lane, end[1]), end))
    return out


def _self_loop(box: Rect, off: float) -> tuple[Point, Point, Point, Point]:
    start, end = (box.right, box.y + 30 + off), (box.right - 40 - off, box.y)
    return start, (box.right + 60, start[1]), (end[0], box.y - 60), end


def _shared(edges: Sequence[EdgeIn]) -> dict[int, tuple[int, int]]:
    """Edge pk -> (its index, how many edges) among the edges between the same two stages, either way."""
    groups: dict[frozenset[int], list[int]] = defaultdict(list)
    for e in edges:
        groups[frozenset((e.source, e.target))].append(e.pk)
    return {pk: (i, len(group)) for group in groups.values() for i, pk in enumerate(group)}


def _place_label(start: Point, curve: tuple[Point, Point, Point, Point], w: float, taken: list[Rect]) -> Rect:
    """The first free spot for a w x LABEL_H label: along the curve from its middle, then rings around it."""

    def free(cx: float, cy: float) -> Rect | None:
        rect = Rect(cx - w / 2, cy - LABEL_H / 2, w, LABEL_H)
        return None if any(rect.intersects(r, LABEL_CLEARANCE) for r in taken) else rect

    for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.25, 0.75):
        x, y = _bezier(curve, t)
        for dy in (0, -LABEL_H / 2 - 2, LABEL_H / 2 + 2):
            rect = free(x, y + dy)
            if rect:
                return rect
    x, y = start
    radius = 8.0
    while True:  # ends: once the ring is outside everything taken, every spot on it is free
        for k in range(24):
            angle = 2 * math.pi * k / 24
            rect = free(x + radius * math.cos(angle), y + radius * math.sin(angle))
            if rect:
                return rect
        radius += 8


def _finish(boxes: dict[int, Rect], edges: Sequence[EdgeIn], curves: Sequence[tuple[Point, Point, Point, Point]],
            notes: Mapping[int, str]) -> Drawing:  # fmt: skip
    taken: list[Rect] = list(boxes.values())
    out = []
    for e, curve in zip(edges, curves, strict=True):
        text = f"{e.label} · {notes[e.pk]}" if e.pk in notes else e.label
        label = _place_label(_bezier(curve, 0.5), curve, label_width(text), taken)
        taken.append(label)
        out.append(EdgeOut(pk=e.pk, source=e.source, target=e.target, text=text, points=curve, label=label))
    xs = [v for r in taken for v in (r.x, r.right)] + [p[0] for c in curves for p in c]
    ys = [v for r in taken for v in (r.y, r.bottom)] + [p[1] for c in curves for p in c]
    x0, y0 = min(xs, default=0) - PAD, min(ys, default=0) - PAD
    view = Rect(math.floor(x0), math.floor(y0), math.ceil(max(xs, default=0) + PAD - x0) + 1,
                math.ceil(max(ys, default=0) + PAD - y0) + 1)  # fmt: skip
    return Drawing(boxes=boxes, edges=out, view=view)


def box_height(stage_notes: Mapping[int, Sequence[str]] | None) -> int:
    """Every box's height in a drawing: the fixed lines and the most notes any stage has."""
    return BOX_H + NOTE_H * max((len(lines) for lines in (stage_notes or {}).values()), default=0)


def wide(nodes: Sequence[int], edges: Iterable[EdgeIn], *, edge_notes: Mapping[int, str] | None = None,
         stage_notes: Mapping[int, Sequence[str]] | None = None) -> Drawing:  # fmt: skip
    """Depths as columns (for wide screens)."""
    kept = [e for e in edges if e.source in nodes and e.target in nodes]
    h = box_height(stage_notes)
    boxes: dict[int, Rect] = {}
    for col, column in enumerate(_columns(nodes, kept, depths(nodes, kept))):
        for row, n in enumerate(column):
            boxes[n] = Rect(col * (BOX_W + COL_GAP), row * (h + ROW_GAP), BOX_W, h)
    boxes = {n: boxes[n] for n in nodes}
    return _finish(boxes, kept, _routes_wide(boxes, kept), edge_notes or {})


def tall(nodes: Sequence[int], edges: Iterable[EdgeIn], *, edge_notes: Mapping[int, str] | None = None,
         stage_notes: Mapping[int, Sequence[str]] | None = None) -> Drawing:  # fmt: skip
    """One stage per row, in depth order (for phones)."""
    kept = [e for e in edges if e.source in nodes and e.target in nodes]
    h = box_height(stage_notes)
    order = [n for column in _columns(nodes, kept, depths(nodes, kept)) for n in column]
    boxes = {n: Rect(0, i * (h + TALL_GAP), BOX_W, h) for i, n in enumerate(order)}
    return _finish(boxes, kept, _routes_tall(boxes, kept), edge_notes or {})
