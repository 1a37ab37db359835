"""Workflow status, and the operator actions the reconciler finishes: cancel and resume."""

import asyncio
from typing import Any

import httpx
from factories import (
    INC,
    done,
    error,
    heartbeat,
    instances_of,
    instantiate,
    launch,
    live_ti,
    ok,
    running,
    sql_scalar,
    submit,
    task_row,
    ti_row,
)
from sqlalchemy import text

from farmstead.db.engine import Database
from farmstead.services.reconciler import Reconciler
from farmstead.settings import Settings
from helpers import assert_consistent


async def event_count(db: Database) -> int:
    """How many events (of any entity) are stored."""
    return int(await sql_scalar(db, "SELECT count(*) FROM event"))


async def wf_status(client: httpx.AsyncClient, wf_id: int) -> str:
    """The workflow's status letter."""
    return (await ok(client.get(f"/v3/workflows/{wf_id}")))["status"]  # type: ignore[no-any-return]


async def to_status(client: httpx.AsyncClient, ti: int, status: str) -> None:
    """Walk a QUEUED instance forward to Q, I, O or R."""
    if status == "Q":
        return
    await instantiate(client, [ti])
    if status == "I":
        return
    await launch(client, ti)
    if status == "O":
        return
    assert (await running(client, ti, inc=INC))[1] == "R"


async def cancel(client: httpx.AsyncClient, wf_id: int) -> dict[str, Any]:
    return await ok(client.post(f"/v3/workflows/{wf_id}/cancel"))  # type: ignore[no-any-return]


async def resume(client: httpx.AsyncClient, wf_id: int, everything: bool = False) -> Any:
    params = {"all": "true"} if everything else {}
    return await ok(client.post(f"/v3/workflows/{wf_id}/resume", params=params))


async def kill_self_sweep(db: Database, db_url: str) -> dict[str, int]:
    """A sweep that settles every KILL_SELF instance at once (and nothing else)."""
    await asyncio.sleep(0.15)
    settings = Settings(database_url=db_url, kill_self_timeout=0.1, triage_grace=60,
                        launch_timeout=600, no_heartbeat_min_age=600)
    return (await Reconciler(db, settings).sweep()).moved


# ---- workflow status ------------------------------------------------------------------------


async def test_workflow_is_running_until_every_task_is_done(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 2)
    a, b = [await live_ti(client, t) for t in wf["task_ids"]]
    assert await wf_status(client, wf["id"]) == "R"
    await to_status(client, a, "R")
    assert await done(client, a) == "D"
    assert await wf_status(client, wf["id"]) == "R"  # b is still QUEUED
    await to_status(client, b, "R")
    assert await done(client, b) == "D"
    summary = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert summary["status"] == "D" and summary["percent_done"] == 100.0
    await assert_consistent(db)


async def test_workflow_fails_only_once_nothing_can_move(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 3, max_attempts=1)
    a, b, c = [await live_ti(client, t) for t in wf["task_ids"]]
    await to_status(client, a, "R")
    assert await error(client, a, "E") == "E"  # no tries left: the task is ERROR_FATAL
    assert (await task_row(db, wf["task_ids"][0]))["status"] == "F"
    assert await wf_status(client, wf["id"]) == "R"  # b and c can still move
    await to_status(client, b, "R")
    assert await done(client, b) == "D"
    assert await wf_status(client, wf["id"]) == "R"
    await to_status(client, c, "R")
    assert await error(client, c, "F") == "F"
    summary = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert summary["status"] == "F" and summary["counts"] == {"F": 2, "D": 1}
    await assert_consistent(db)


async def test_workflow_with_a_retry_pending_is_running(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1, max_attempts=2)
    ti = await live_ti(client, wf["task_ids"][0])
    await to_status(client, ti, "R")
    assert await error(client, ti, "E") == "E"
    assert await wf_status(client, wf["id"]) == "R"


# ---- cancel ---------------------------------------------------------------------------------


async def test_cancel_stops_queued_work_and_tells_running_workers(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    wf = await submit(client, 5)
    tis = [await live_ti(client, t) for t in wf["task_ids"]]
    _q, i, o, r, d = tis
    for ti, status in ((i, "I"), (o, "O"), (r, "R"), (d, "R")):
        await to_status(client, ti, status)
    assert await done(client, d) == "D"

    answer = await cancel(client, wf["id"])

    assert answer == {"workflow_id": wf["id"], "changed": {"F": 2, "K": 2}, "total": 4}
    assert [(await ti_row(db, ti))["status"] for ti in tis] == ["F", "F", "K", "K", "D"]
    tasks = [(await task_row(db, t))["status"] for t in wf["task_ids"]]
    assert tasks == ["F", "F", "O", "R", "D"]  # the K instances' tasks wait for their last word
    assert await wf_status(client, wf["id"]) == "R"
    # the running worker learns it from its next heartbeat answer
    resp = await client.post(f"/v3/fsm/task_instance/{r}/log_report_by",
                             json={"next_report_increment": INC})
    assert resp.status_code == 200 and resp.json() == {"status": "K"}
    assert await heartbeat(client, o, inc=INC) == "K"

    # idempotent: a second cancel changes nothing
    before = await ok(client.get(f"/v3/workflows/{wf['id']}/events"))
    assert await cancel(client, wf["id"]) == {"workflow_id": wf["id"], "changed": {}, "total": 0}
    assert await ok(client.get(f"/v3/workflows/{wf['id']}/events")) == before

    # the worker stops (or the reconciler gives up on it): the workflow is CANCELLED
    assert await error(client, r, "E") == "F"  # a stopped worker's error ends in ERROR_FATAL
    assert await kill_self_sweep(db, db_url) == {"F": 1}
    assert [(await ti_row(db, ti))["status"] for ti in tis] == ["F", "F", "F", "F", "D"]
    summary = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert summary["status"] == "C" and summary["counts"] == {"F": 4, "D": 1}  # CANCELLED
    for task_id in wf["task_ids"][:4]:
        assert len(await instances_of(db, task_id)) == 1  # cancelled work is never retried
    await assert_consistent(db)


async def test_cancel_does_not_miss_an_instance_locked_by_a_concurrent_transaction(
    client: httpx.AsyncClient, db: Database, backend: str
) -> None:
    """A transition (or a reconciler sweep) holds one instance's row while the operator
    cancels: once it commits, that instance must be cancelled too, not silently skipped."""
    wf = await submit(client, 3)
    tis = [await live_ti(client, t) for t in wf["task_ids"]]
    for ti in tis:
        await to_status(client, ti, "R")
    async with db.write_engine.connect() as conn:
        await conn.begin()  # on SQLite: BEGIN IMMEDIATE, the database's write lock
        if backend == "postgresql":
            await conn.execute(text("SELECT id FROM task_instance WHERE id = :i FOR UPDATE"),
                               {"i": tis[1]})
        cancelling = asyncio.create_task(cancel(client, wf["id"]))
        await asyncio.sleep(0.5)
        await conn.commit()
    answer = await asyncio.wait_for(cancelling, 10)
    assert [(await ti_row(db, ti))["status"] for ti in tis] == ["K", "K", "K"]
    assert answer["total"] == 3 and answer["changed"] == {"K": 3}
    await assert_consistent(db)


async def test_cancel_of_an_unknown_workflow_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v3/workflows/999999/cancel")).status_code == 404
    assert (await client.post("/v3/workflows/999999/resume")).status_code == 404


# ---- resume ---------------------------------------------------------------------------------


async def test_resume_gives_failed_tasks_fresh_tries_and_leaves_done_alone(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    wf = await submit(client, 3, max_attempts=2)
    a, b, c = wf["task_ids"]
    await to_status(client, await live_ti(client, a), "R")
    assert await done(client, await live_ti(client, a)) == "D"
    await to_status(client, await live_ti(client, c), "R")
    await cancel(client, wf["id"])
    assert await kill_self_sweep(db, db_url) == {"F": 1}
    assert await wf_status(client, wf["id"]) == "C"  # CANCELLED
    done_before = await task_row(db, a)

    answer = await resume(client, wf["id"])

    assert answer == {"workflow_id": wf["id"], "changed": {"resumed": 2}, "total": 2}
    assert await task_row(db, a) == done_before
    assert len(await instances_of(db, a)) == 1
    for task_id in (b, c):
        task = await task_row(db, task_id)
        assert task["status"] == "Q" and task["num_attempts"] == 2
        assert task["attempts_base"] == 1 and task["time_finished"] is None
        old, new = await instances_of(db, task_id)
        assert old["status"] == "F" and new["status"] == "Q"
        assert new["array_batch_num"] > old["array_batch_num"]
    assert await wf_status(client, wf["id"]) == "R"

    # idempotent: nothing is ERROR_FATAL any more
    assert await resume(client, wf["id"]) == {"workflow_id": wf["id"], "changed": {},
                                              "total": 0}
    assert len(await instances_of(db, b)) == 2

    # fresh tries: max_attempts=2 again, so one error is retried, not fatal
    ti = await live_ti(client, b)
    await to_status(client, ti, "R")
    assert await error(client, ti, "E") == "E"
    task = await task_row(db, b)
    assert task["status"] == "Q" and task["num_attempts"] == 3
    await assert_consistent(db)


async def test_resume_all_refreshes_the_tries_of_unfinished_tasks(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 2, max_attempts=2)
    a, b = wf["task_ids"]
    first = await live_ti(client, a)
    await to_status(client, first, "R")
    assert await error(client, first, "E") == "E"  # a is on its last try now
    assert (await task_row(db, a))["num_attempts"] == 2

    # without all=true nothing is ERROR_FATAL, so nothing changes
    assert (await resume(client, wf["id"]))["total"] == 0
    answer = await resume(client, wf["id"], everything=True)
    assert answer == {"workflow_id": wf["id"], "changed": {"refreshed": 1}, "total": 1}
    assert (await task_row(db, a))["attempts_base"] == 1
    assert (await task_row(db, b))["attempts_base"] == 0  # b had used one try only

    # idempotent: a second call changes nothing (no count, no event written)
    events_before = await event_count(db)
    again = await resume(client, wf["id"], everything=True)
    assert again["total"] == 0 and not any(again["changed"].values()), again
    assert await event_count(db) == events_before, "a no-op resume wrote an event"

    # the refreshed try: an error is retried instead of being fatal
    second = await live_ti(client, a)
    await to_status(client, second, "R")
    assert await error(client, second, "E") == "E"
    task = await task_row(db, a)
    assert task["status"] == "Q" and task["num_attempts"] == 3
    await assert_consistent(db)


async def test_resume_all_also_resumes_failed_tasks(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 2, max_attempts=1)
    a, b = wf["task_ids"]
    ti = await live_ti(client, a)
    await to_status(client, ti, "R")
    assert await error(client, ti, "E") == "E"
    assert (await task_row(db, a))["status"] == "F"
    answer = await resume(client, wf["id"], everything=True)
    assert answer["changed"].get("resumed") == 1 and answer["total"] == 1
    assert (await task_row(db, a))["status"] == "Q"
    assert (await task_row(db, b))["status"] == "Q"
    assert (await resume(client, wf["id"], everything=True))["total"] == 0
    await assert_consistent(db)
