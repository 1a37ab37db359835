"""The dashboard's pages over the in-process app, on both databases: what each one reads (the
chart, failure groups, the graph, explain, the reconciler's sweep) against real moves."""

from datetime import UTC, datetime

import httpx
from factories import done, error, live_ti, submit, to_running

from farmstead.db.engine import Database
from farmstead.services.uow import in_transaction
from farmstead.store import dashboard as store


async def test_a_workflow_page_shows_chart_failures_graph_and_a_page_of_tasks(
    client: httpx.AsyncClient, db: Database
) -> None:
    tasks = [{"name": "prep", "command": "true"}]
    tasks += [{"name": f"part{i}", "command": "true", "depends_on": ["prep"]} for i in range(3)]
    tasks += [{"name": f"bad{i}", "command": "false", "max_attempts": 1} for i in range(3)]
    wf = await submit(client, 0, name="pages", tasks=tasks)
    ids = wf["task_ids"]
    prep = await live_ti(client, ids[0])
    await to_running(client, prep, nodename="node1")
    assert await done(client, prep, wallclock=1.5) == "D"
    for i, task_id in enumerate(ids[4:]):
        ti = await live_ti(client, task_id)
        await to_running(client, ti)
        oom = "killed for memory" if i < 2 else "disk full"
        assert await error(client, ti, description=oom) == "E"  # no try left: ERROR_FATAL

    page = await client.get(f"/ui/workflows/{wf['id']}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "2 tasks:</strong> <span class=\"msg\">killed for memory" in html
    assert "1 task:</strong> <span class=\"msg\">disk full" in html
    assert 'class="graph"' in html and html.count("<line") == 3  # prep -> part0..2
    assert "1 done, 3 failed" in html  # the chart's summary of the last hour
    assert html.count('<tr data-status="') == 7

    failed = await client.get(f"/ui/workflows/{wf['id']}", params={"status": "ERROR_FATAL"})
    assert failed.text.count('<tr data-status="ERROR_FATAL"') == 3
    assert failed.text.count('<tr data-status="') == 3
    later = await client.get(f"/ui/workflows/{wf['id']}", params={"after": ids[4]})
    assert later.text.count('<tr data-status="') == 2  # keyset: after the id given

    fragment = await client.get(f"/ui/workflows/{wf['id']}", params={"fragment": "1"})
    assert fragment.text.lstrip().startswith('<div id="workflow-live"')
    assert "<html" not in fragment.text

    listing = await client.get("/ui/", params={"name": "pag"})
    assert f'data-workflow="{wf["id"]}"' in listing.text
    none = await client.get("/ui/", params={"name": "no such name"})
    assert "No workflows match these filters" in none.text


async def test_a_task_page_explains_a_wait_and_the_farm_shows_the_last_sweep(
    client: httpx.AsyncClient, db: Database
) -> None:
    tasks = [
        {"name": "a", "command": "true"},
        {"name": "b", "command": "true", "depends_on": ["a"]},
    ]
    wf = await submit(client, 0, name="wait", tasks=tasks)
    held = await client.get(f"/ui/tasks/{wf['task_ids'][1]}")
    assert held.status_code == 200
    assert "Why it is held" in held.text and "a" in held.text

    farm = await client.get("/ui/farm")
    assert "Last sweep" in farm.text
    when = datetime(2026, 12, 4, 12, 30, 5, tzinfo=UTC)
    await in_transaction(db, lambda c: store.record_sweep(c, when))
    await in_transaction(db, lambda c: store.record_sweep(c, when))  # (an update the 2nd time)
    assert await in_transaction(db, store.last_sweep) == when
    farm = await client.get("/ui/farm")
    assert "2026-12-04 12:30:05 UTC" in farm.text
