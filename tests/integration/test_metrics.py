"""GET /metrics: the Prometheus text format, read back with the official client's own parser,
its figures checked against the database."""

from typing import Any

import httpx
from factories import done, live_ti, sql_rows, submit, to_running
from prometheus_client.parser import text_string_to_metric_families

from farmstead.db.engine import Database


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(values: dict[Any, float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_match_the_database(
    client: httpx.AsyncClient, db: Database
) -> None:
    before = await scrape(client)
    wf = await submit(client, 4)
    for task_id in wf["task_ids"][:3]:
        ti = await live_ti(client, task_id)
        await to_running(client, ti)
        if task_id != wf["task_ids"][2]:
            assert await done(client, ti) == "D"
    after = await scrape(client)

    by_status = {
        r["status"]: r["n"]
        for r in await sql_rows(
            db, "SELECT status, count(*) AS n FROM task_instance GROUP BY status"
        )
    }
    assert by_status == {"D": 2, "R": 1, "Q": 1}
    for status, n in by_status.items():
        assert value(after, "farmstead_task_instances", status=status) == n
    tasks = await sql_rows(db, "SELECT status, count(*) AS n FROM task GROUP BY status")
    for row in tasks:
        assert value(after, "farmstead_tasks", status=row["status"]) == row["n"]

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    moves = {
        ("Q", "I"): 3, ("I", "O"): 3, ("O", "R"): 3, ("R", "D"): 2, ("", "Q"): 4,
    }  # fmt: skip
    for (a, b), n in moves.items():
        got = delta(
            "farmstead_transitions_total", entity="task_instance", from_status=a, to_status=b
        )
        assert got == n, (a, b, got)
    written = await sql_rows(db, "SELECT count(*) AS n FROM event")
    assert delta("farmstead_events_written_total") == written[0]["n"]
    newest = await sql_rows(db, "SELECT max(id) AS m FROM event")
    assert value(after, "farmstead_event_newest_id") == newest[0]["m"]
    assert value(after, "farmstead_reconciler_lag_seconds") == 0
    routes = {
        labels for (name, labels) in after if name == "farmstead_request_duration_seconds_count"
    }
    paths = {dict(lbl)["route"] for lbl in routes}
    assert "/v3/workflows" in paths and "/v3/fsm/task_instance/{id}/log_done" in paths
    assert "/v3/tasks/{task_id}" in paths
    # latency by route: the done reports were counted
    done_count = delta(
        "farmstead_request_duration_seconds_count",
        route="/v3/fsm/task_instance/{id}/log_done", method="POST", status="2xx",
    )  # fmt: skip
    assert done_count == 2
    unknown = await client.get("/no/such/path/123")
    assert unknown.status_code == 404
    assert "/no/such/path/123" not in (await client.get("/metrics")).text


async def test_the_reconciler_lag_is_the_oldest_missed_deadline(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1)
    ti = await live_ti(client, wf["task_ids"][0])
    await to_running(client, ti)
    from factories import sql_exec

    pg = db.engine.dialect.name == "postgresql"
    back = (
        "now() - INTERVAL '90 seconds'"
        if pg
        else "strftime('%Y-%m-%d %H:%M:%f', 'now', '-90 seconds')"
    )
    await sql_exec(db, f"UPDATE task_instance_deadline SET report_by_date = {back}")
    lag = value(await scrape(client), "farmstead_reconciler_lag_seconds")
    assert 85 <= lag <= 200, lag
