"""How the dashboard shows values: durations, sizes, the progress bar, the chart, the graph."""

from datetime import UTC, datetime, timedelta

from farmstead.api.web import render


def test_durations_sizes_and_names() -> None:
    assert render.duration(None) == "—"
    assert render.duration(4.25) == "4.2 s"
    assert render.duration(250) == "4m 10s"
    assert render.duration(3 * 3600 + 5 * 60) == "3h 05m"
    assert render.duration(2 * 86400 + 3600) == "2d 01h"
    assert render.size(7 * 1024 * 1024) == "7.0 MiB" and render.size(None) == "—"
    assert render.status_name("F") == "ERROR_FATAL" and render.status_name("D", True) == "DONE"
    assert render.status_kind("D") == "done" and render.status_kind("?") == "other"


def test_the_bar_adds_up_and_says_it_in_words() -> None:
    counts = {"D": 6, "F": 1, "Q": 3}
    segments = render.bar(counts, 10)
    assert [s["letter"] for s in segments] == ["D", "Q", "F"]  # done first, failed last
    assert sum(s["width"] for s in segments) == 100
    svg = str(render.bar_svg(counts, 10))
    assert 'aria-label="6 done, 3 queued, 1 error_fatal"' in svg
    assert "style=" not in svg  # (the Content-Security-Policy allows no inline styles)


def test_the_chart_has_a_bar_per_minute_and_a_summary() -> None:
    start = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    points = [(start + timedelta(minutes=i), i, i % 2) for i in range(60)]
    svg = str(render.chart_svg(points))
    assert svg.count("<g><title>") == 60
    assert f"{sum(range(60)):,} done, 30 failed" in svg
    assert "12:00" in svg and "12:59" in svg


def test_the_graph_puts_each_task_right_of_its_upstream_tasks() -> None:
    tasks = [{"id": i, "name": f"t<{i}>", "status": "D" if i < 3 else "Q"} for i in range(1, 6)]
    edges = [(1, 3), (2, 3), (3, 4), (1, 5)]
    svg = str(render.graph_svg((tasks, edges)))
    assert svg.count("<line") == 4 and svg.count('href="/ui/tasks/') == 5
    assert "t&lt;3&gt;" in svg and "<3>" not in svg  # names escaped

    def x_of(task_id: int) -> float:
        i = svg.index(f'href="/ui/tasks/{task_id}"')
        j = svg.index('<rect x="', i) + len('<rect x="')
        return float(svg[j : svg.index('"', j)])

    assert x_of(1) == x_of(2) < x_of(3) < x_of(4)
    assert x_of(1) < x_of(5) == x_of(3)
