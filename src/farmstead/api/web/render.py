"""How the dashboard shows values: durations, times, sizes, statuses, bars, the chart, the graph."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from farmstead.fsm import TaskStatus, TIStatus

#: a task status's class on the page (its colour), by letter
_KIND = {
    "D": "done",
    "F": "failed",
    "B": "failed",
    "R": "running",
    "O": "running",
    "I": "running",
    "E": "retrying",
    "A": "retrying",
    "Q": "queued",
    "G": "queued",
    "H": "held",
}
#: the order of a progress bar's segments
_BAR_ORDER = ("D", "R", "O", "I", "E", "A", "Q", "G", "H", "B", "F")


def status_name(letter: str | None, instance: bool = False) -> str:
    """A status letter's name (QUEUED, RUNNING, …)."""
    if letter is None:
        return ""
    kind = TIStatus if instance else TaskStatus
    try:
        return kind(letter).name
    except ValueError:
        return letter


def status_kind(letter: str | None) -> str:
    return _KIND.get(letter or "", "other")


def duration(seconds: float | None) -> str:
    """`3h 05m`, `4m 10s`, `12.5 s`; an em dash for nothing."""
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    if d:
        return f"{d}d {h:02d}h"
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s"


def when(value: datetime | str | None) -> str:
    """A time as `2026-12-04 14:05:09 UTC`."""
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def ago(value: datetime | str | None) -> str:
    """How long ago a time was (`4m 10s ago`)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return duration(max(0.0, (datetime.now(UTC) - value).total_seconds())) + " ago"


def size(n: int | None) -> str:
    """Bytes as KiB/MiB/GiB."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def bar(counts: dict[str, int], total: int) -> list[dict[str, Any]]:
    """A progress bar's segments: status, name, count, width in percent (largest first kept
    in a fixed order: done, running, …, failed)."""
    out = []
    for letter in _BAR_ORDER:
        n = counts.get(letter, 0)
        if n and total:
            out.append(
                {
                    "letter": letter,
                    "name": status_name(letter),
                    "kind": status_kind(letter),
                    "count": n,
                    "width": round(100.0 * n / total, 3),
                }
            )
    return out


def bar_label(counts: dict[str, int]) -> str:
    """The bar in words, for screen readers and tooltips."""
    parts = [f"{counts[k]:,} {status_name(k).lower()}" for k in _BAR_ORDER if counts.get(k)]
    return ", ".join(parts) or "no tasks"


def bar_svg(counts: dict[str, int], total: int) -> Markup:
    """A progress bar (an inline SVG: widths as attributes, so no inline styles are needed
    under the dashboard's Content-Security-Policy), labelled in words."""
    label = escape(bar_label(counts))
    x = 0.0
    rects = []
    for seg in bar(counts, total):
        rects.append(
            f'<rect class="s-{seg["kind"]}" x="{x:.3f}" y="0" width="{seg["width"]:.3f}" '
            f'height="10"><title>{seg["count"]:,} {seg["name"].lower()}</title></rect>'
        )
        x += seg["width"]
    return Markup(
        f'<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" '
        f'aria-label="{label}"><rect class="track" width="100" height="10"/>'
        f"{''.join(rects)}</svg>"
    )


def chart_svg(points: Sequence[tuple[datetime, int, int]]) -> Markup:
    """Done (green) and failed (red) tasks per minute as stacked bars, an inline SVG."""
    width, height, pad = 600, 120, 18
    top = max([d + f for _, d, f in points] + [1])
    step = (width - 2) / max(len(points), 1)
    bars = []
    for i, (minute, done, failed) in enumerate(points):
        x = 1 + i * step
        h_done = (height - pad) * done / top
        h_failed = (height - pad) * failed / top
        label = escape(f"{minute:%H:%M}: {done} done, {failed} failed")
        bars.append(
            f"<g><title>{label}</title>"
            f'<rect class="c-done" x="{x:.1f}" y="{height - pad - h_done:.1f}" '
            f'width="{max(step - 1, 1):.1f}" height="{h_done:.1f}"/>'
            f'<rect class="c-failed" x="{x:.1f}" y="{height - pad - h_done - h_failed:.1f}" '
            f'width="{max(step - 1, 1):.1f}" height="{h_failed:.1f}"/></g>'
        )
    done_sum = sum(d for _, d, _ in points)
    failed_sum = sum(f for _, _, f in points)
    first = f"{points[0][0]:%H:%M}" if points else ""
    last = f"{points[-1][0]:%H:%M}" if points else ""
    summary = escape(
        f"Tasks finished per minute over the last {len(points)} minutes: "
        f"{done_sum:,} done, {failed_sum:,} failed; at most {top:,} in a minute"
    )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{summary}">'
        f"<title>{summary}</title>{''.join(bars)}"
        f'<text x="1" y="{height - 4}" class="axis">{first}</text>'
        f'<text x="{width - 1}" y="{height - 4}" class="axis" text-anchor="end">{last}</text>'
        f'<text x="{width - 1}" y="10" class="axis" text-anchor="end">{top:,}/min</text></svg>'
    )


def graph_svg(graph: tuple[list[dict[str, Any]], list[tuple[int, int]]]) -> Markup:
    """A small dependency graph drawn in layers (a task one column right of its furthest
    upstream task), each box coloured by status and linking to its task."""
    tasks, edges = graph
    ups: dict[int, list[int]] = {t["id"]: [] for t in tasks}
    for u, v in edges:
        if v in ups and u in ups:
            ups[v].append(u)
    layer: dict[int, int] = {}

    def depth(node: int, seen: frozenset[int] = frozenset()) -> int:
        if node in layer:
            return layer[node]
        if node in seen:  # (no cycles are accepted; guard anyway)
            return 0
        d = 1 + max((depth(u, seen | {node}) for u in ups[node]), default=-1)
        layer[node] = d
        return d

    columns: dict[int, list[dict[str, Any]]] = {}
    for t in tasks:
        columns.setdefault(depth(t["id"]), []).append(t)
    box_w, box_h, gap_x, gap_y = 140, 26, 50, 10
    pos: dict[int, tuple[float, float]] = {}
    for col, members in columns.items():
        for row, t in enumerate(members):
            pos[t["id"]] = (10 + col * (box_w + gap_x), 10 + row * (box_h + gap_y))
    width = 20 + (max(columns) + 1) * (box_w + gap_x)
    height = 20 + max(len(m) for m in columns.values()) * (box_h + gap_y)
    lines = []
    for u, v in edges:
        if u in pos and v in pos:
            (x1, y1), (x2, y2) = pos[u], pos[v]
            lines.append(
                f'<line x1="{x1 + box_w:.0f}" y1="{y1 + box_h / 2:.0f}" x2="{x2:.0f}" '
                f'y2="{y2 + box_h / 2:.0f}" marker-end="url(#arrow)"/>'
            )
    boxes = []
    for t in tasks:
        x, y = pos[t["id"]]
        name = str(t["name"])
        short = name if len(name) <= 18 else name[:17] + "…"
        label = escape(f"{name}: {status_name(t['status'])}")
        boxes.append(
            f'<a href="/ui/tasks/{t["id"]}" aria-label="{label}"><g class="node '
            f's-{status_kind(t["status"])}"><title>{label}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" rx="4"/>'
            f'<text x="{x + 6:.0f}" y="{y + 17:.0f}">{escape(short)}</text></g></a>'
        )
    return Markup(
        f'<svg class="graph" viewBox="0 0 {width} {height}" width="{width}" role="group" '
        f'aria-label="Dependency graph of {len(tasks)} tasks">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>'
        f'<g class="edges">{"".join(lines)}</g>{"".join(boxes)}</svg>'
    )


FILTERS = {
    "duration": duration,
    "when": when,
    "ago": ago,
    "size": size,
    "status_name": status_name,
    "status_kind": status_kind,
}
GLOBALS = {"bar": bar, "bar_svg": bar_svg, "bar_label": bar_label, "chart_svg": chart_svg}
