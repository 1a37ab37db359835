"""The event stream's paged JSON form (GET /v3/events): Celery's words for real moves, the
fields Celery consumers read, filters, agents' worker events, retention and the too-old answer.
(The live SSE stream, across server processes: tests/e2e/test_event_stream.py.)"""

from typing import Any

import httpx
from factories import (
    done,
    error,
    live_ti,
    ok,
    running_task,
    sql_exec,
    sql_rows,
    submit,
    to_running,
)

from farmstead.db.engine import Database
from farmstead.fsm.celery import TASK_EVENTS
from farmstead.services.reconciler import Reconciler
from farmstead.settings import Settings


async def _events(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = params.pop("after", 0)
    while True:
        page = await ok(client.get("/v3/events", params={"after": after, "limit": 1000, **params}))
        found += page["data"]
        if page["next_after"] == after:
            return found
        after = page["next_after"]


_CELERY = set(TASK_EVENTS)  # task-sent … task-revoked


def _celery(events: list[dict[str, Any]], task_id: int) -> list[str]:
    return [e["type"] for e in events if e.get("task_id") == task_id and e["type"] in _CELERY]


async def test_a_task_that_succeeds_fails_and_is_retried_reads_as_celery_events(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf, task_id, ti = await running_task(client, max_attempts=2)
    assert await error(client, ti, description="killed for memory") == "E"
    retry = await live_ti(client, task_id)
    await to_running(client, retry, nodename="node7")
    assert await done(client, retry, wallclock=2.5) == "D"

    events = await _events(client, workflow=wf["id"])
    assert _celery(events, task_id) == [
        "task-sent",
        "task-received",
        "task-started",
        "task-retried",  # (its new try is no second task-sent, as in Celery)
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    by_type = {e["type"]: e for e in events if e.get("task_id") == task_id}
    retried, succeeded = by_type["task-retried"], by_type["task-succeeded"]
    assert retried["exception"] == "killed for memory"
    assert succeeded["runtime"] == 2.5 and succeeded["hostname"] == "node7"
    assert succeeded["retries"] == 1 and not succeeded["active"]
    assert by_type["task-started"]["active"] is True
    assert succeeded["uuid"] == retried["uuid"] and succeeded["name"] == "t0"
    assert isinstance(succeeded["timestamp"], float) and succeeded["clock"] == succeeded["id"]
    detail = await ok(client.get(f"/v3/tasks/{task_id}"))  # HySDS's active/inactive
    assert detail["active"] is False and [i["active"] for i in detail["instances"]] == [False] * 2
    # the same rows as the workflow's own event list, in the same order
    own = (await ok(client.get(f"/v3/workflows/{wf['id']}/events")))["data"]
    assert [e["id"] for e in own] == ids


async def test_failed_and_revoked(client: httpx.AsyncClient, db: Database) -> None:
    _, task_id, ti = await running_task(client, max_attempts=1)
    assert await error(client, ti, description="segfault") == "E"  # no try left: task F
    other = await submit(client, 2, name="cancelled")
    running_id = other["task_ids"][0]
    await to_running(client, await live_ti(client, running_id))
    await ok(client.post(f"/v3/workflows/{other['id']}/cancel"))
    stopping = await live_ti(client, running_id)  # KILL_SELF: the worker stops it
    await error(client, stopping, description="stopped: cancelled")

    failed = [e for e in await _events(client, type="task-failed")]
    assert [e["task_id"] for e in failed] == [task_id] and failed[0]["exception"] == "segfault"
    assert await _events(client, type="task-retried") == []  # the last try: failed alone
    revoked = await _events(client, type="task-revoked", workflow=other["id"])
    by_task = {e["task_id"]: e for e in revoked}
    assert set(by_task) == set(other["task_ids"])
    assert by_task[running_id]["terminated"] is True and by_task[running_id]["signum"] == 15
    queued = by_task[other["task_ids"][1]]
    assert queued["terminated"] is False and queued["signum"] is None


async def test_filters_workflow_task_and_types(client: httpx.AsyncClient) -> None:
    a = await submit(client, 3, name="a")
    b = await submit(client, 2, name="b")
    only_b = await _events(client, workflow=b["id"])
    assert only_b and {e["workflow_id"] for e in only_b} == {b["id"]}
    t = a["task_ids"][1]
    one = await _events(client, task=t)
    assert [e["type"] for e in one] == ["task-sent"] and one[0]["task_id"] == t
    both = await _events(client, type=["task-sent,workflow-submitted"])
    assert len([e for e in both if e["type"] == "task-sent"]) == 5
    assert len([e for e in both if e["type"] == "workflow-submitted"]) == 2
    page = await ok(client.get("/v3/events", params={"limit": 2}))
    assert len(page["data"]) == 2 and page["next_after"] == page["data"][-1]["id"]
    bad = await client.get("/v3/events", params={"after": -1})
    assert bad.status_code == 422
    worse = await client.get("/v3/events", headers={"Last-Event-ID": "x"})
    assert worse.status_code == 422 and "Last-Event-ID" in worse.text


async def test_agents_online_heartbeat_offline_and_back(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    agent = await ok(
        client.post("/v3/agents", json={"name": "n1", "hostname": "node1", "kind": "worker"}), 201
    )
    assert (await client.post(f"/v3/agents/{agent['id']}/heartbeat")).status_code == 204
    await sql_exec(
        db,
        "UPDATE agent SET last_seen_date = last_seen_date - INTERVAL '1 hour' WHERE id = :i"
        if "postgresql" in settings.database_url
        else "UPDATE agent SET last_seen_date = datetime(last_seen_date, '-1 hour') WHERE id = :i",
        i=agent["id"],
    )
    assert await Reconciler(db, settings).housekeeping() == (1, 0)
    assert await Reconciler(db, settings).housekeeping() == (0, 0)  # once
    assert (await client.post(f"/v3/agents/{agent['id']}/heartbeat")).status_code == 204
    workers = await _events(client, type="worker-online,worker-heartbeat,worker-offline")
    assert [e["type"] for e in workers] == [
        "worker-online",
        "worker-heartbeat",
        "worker-offline",
        "worker-online",
    ]
    assert {e["hostname"] for e in workers} == {"node1"} and workers[0]["workflow_id"] == 0


async def test_retention_prunes_in_chunks_and_says_when_an_id_is_too_old(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    await submit(client, 30)
    rows = await sql_rows(db, "SELECT id FROM event ORDER BY id")
    ids = [r["id"] for r in rows]
    assert len(ids) == 31  # workflow-submitted and 30 task-sent
    old = ids[:20]
    back = (
        "time - INTERVAL '40 days'"
        if "postgresql" in settings.database_url
        else "datetime(time, '-40 days')"
    )
    await sql_exec(db, f"UPDATE event SET time = {back} WHERE id <= :last", last=old[-1])
    tight = settings.model_copy(update={"reconciler_chunk": 7, "event_retention": 30 * 86400})
    assert await Reconciler(db, tight).housekeeping() == (0, 20)
    kept = [r["id"] for r in await sql_rows(db, "SELECT id FROM event ORDER BY id")]
    assert kept == ids[20:]

    gone = await client.get("/v3/events", params={"after": old[5]})
    assert gone.status_code == 410
    body = gone.json()
    assert body["error"] == "Gone" and str(old[-1]) in body["detail"]
    too_old = await client.get("/v3/events", headers={"Last-Event-ID": str(old[3])})
    assert too_old.status_code == 410
    resumed = await _events(client, after=old[-1])
    assert [e["id"] for e in resumed] == ids[20:]
    assert [e["id"] for e in await _events(client)] == ids[20:]  # from the oldest kept


async def test_the_newest_event_is_never_pruned(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    await submit(client, 2)
    back = (
        "time - INTERVAL '40 days'"
        if "postgresql" in settings.database_url
        else "datetime(time, '-40 days')"
    )
    await sql_exec(db, f"UPDATE event SET time = {back}")
    assert await Reconciler(db, settings).housekeeping() == (0, 2)
    left = await sql_rows(db, "SELECT id FROM event")
    assert len(left) == 1
    await submit(client, 1)
    newer = await sql_rows(db, "SELECT id FROM event ORDER BY id")
    assert newer[0]["id"] == left[0]["id"] and newer[1]["id"] > left[0]["id"]


async def test_the_feed_never_passes_an_event_whose_transaction_is_still_open(
    db: Database, settings: Settings
) -> None:
    """A transaction draws an event id, another draws the next and commits first: the feed
    waits for the first (commit: both in order; rollback: its id is passed over for good)."""
    from sqlalchemy import insert

    from farmstead.db.types import db_now
    from farmstead.services.events import EventFeed
    from farmstead.services.uow import in_transaction
    from farmstead.store import events as store
    from farmstead.store.sql import EVENT

    def row(n: int) -> Any:
        return insert(EVENT).values(
            time=db_now(), workflow_id=0, entity="test", entity_id=n, to_status="X"
        )

    feed = EventFeed(db, 0.1)
    feed.cursor = feed.floor = await in_transaction(db, store.newest_id)
    pg = "postgresql" in settings.database_url
    for outcome in ("commit", "rollback"):
        async with db.engine.connect() as held:
            await held.execute(row(1))  # drawn first, not committed
            if pg:  # (SQLite: one writer; the held transaction blocks the next anyway)
                async with db.engine.begin() as later:
                    await later.execute(row(2))
            assert await feed.poll() == 0
            assert await feed.poll() == 0  # still open: still waiting
            if outcome == "commit":
                await held.commit()
            else:
                await held.rollback()
        if not pg and outcome == "rollback":
            assert await feed.poll() == 0  # nothing was written
            continue
        got = []
        for _ in range(3):  # a rolled-back id is passed once every writer then running ended
            await feed.poll()
            got = [e["entity_id"] for e in feed.events if e["entity"] == "test"]
            if got[-1:] == [2] or (not pg and got):
                break
        kinds = [e["entity_id"] for e in feed.events if e["entity"] == "test"]
        if outcome == "commit":
            assert kinds[-2:] == [1, 2] if pg else kinds[-1:] == [1]
        else:
            assert kinds[-1] == 2 and kinds.count(1) == 1  # the rolled-back 1 never shows
    ids = [e["id"] for e in feed.events]
    assert ids == sorted(set(ids))


async def test_a_workflow_subscriber_gets_its_events_from_memory_and_history_alike(
    db: Database, monkeypatch: Any
) -> None:
    """Followers of one workflow are served from the feed's per-workflow memory while it is
    trimmed under them, and from the table when they start behind it: each of their events
    once, in order, none of another workflow's."""
    import asyncio

    from sqlalchemy import insert

    from farmstead.db.types import db_now
    from farmstead.services import events as feed_module
    from farmstead.services.events import EventFeed, Filters
    from farmstead.services.uow import in_transaction
    from farmstead.store import events as store
    from farmstead.store.sql import EVENT

    monkeypatch.setattr(feed_module, "KEEP", 8)  # trims every few polls
    feed = EventFeed(db, 0.02)
    start = await in_transaction(db, store.newest_id)

    async def take(after: int | None, workflow_id: int, want: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async for batch in feed.follow(after, Filters(workflow_id=workflow_id), keepalive=0.5):
            got += batch
            if len(got) >= want:
                return got
        return got

    live = asyncio.create_task(take(None, 1, 15))
    while feed.listeners == 0:
        await asyncio.sleep(0.01)
    written: dict[int, list[int]] = {1: [], 2: []}
    for burst in range(6):
        async with db.engine.begin() as conn:
            for n in range(5):
                wf = 1 + (burst * 5 + n) % 2
                stmt = insert(EVENT).values(
                    time=db_now(), workflow_id=wf, entity="test", entity_id=n, to_status="X"
                )
                written[wf].append((await conn.execute(stmt)).inserted_primary_key[0])
        await asyncio.sleep(0.08)
    got = await asyncio.wait_for(live, 20)
    assert [e["id"] for e in got] == written[1]
    assert feed.floor > start  # memory was trimmed meanwhile
    late = await asyncio.wait_for(take(start, 2, 15), 20)  # behind memory: the table first
    assert [e["id"] for e in late] == written[2]
    assert all(e["workflow_id"] == 2 for e in late)
    for kept in feed._by_workflow.values():
        assert all(e["id"] > feed.floor for e in kept)
    await feed.stop()
