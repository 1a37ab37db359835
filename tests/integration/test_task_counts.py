"""A workflow's task counts by status come from running counters (task_count, kept by triggers
on task, migration 0011), never from a scan of its tasks: after every kind of move they equal a
real count of the task rows, and `farmstead db check` says when they do not."""

from typing import Any

import httpx
from factories import (
    done,
    error,
    instantiate,
    launch,
    live_ti,
    ok,
    running,
    sql_exec,
    sql_rows,
    sql_scalar,
    submit,
    submit_array,
    task_ids,
)

from farmstead.db.engine import Conn, Database
from farmstead.services.check import check
from farmstead.services.uow import in_transaction
from farmstead.store import workflows as store
from helpers import assert_consistent

SPEC = {
    "name": "t{i}",
    "command": "echo {i}",
    "max_attempts": 3,
    "priority": 0,
    "resources": None,
    "resource_scales": None,
}


async def _real(db: Database, workflow_id: int) -> dict[str, int]:
    """A workflow's tasks by status, counted from the rows."""
    rows = await sql_rows(
        db,
        "SELECT status, count(*) AS n FROM task WHERE workflow_id = :w GROUP BY status",
        w=workflow_id,
    )
    return {r["status"]: int(r["n"]) for r in rows}


async def _agree(db: Database, *workflow_ids: int) -> dict[int, dict[str, int]]:
    """The counters of each workflow equal a real count (one by one, and all at once), and
    the check finds no array whose counters are off; returns the counts."""
    real = {w: await _real(db, w) for w in workflow_ids}
    for w in workflow_ids:
        one = await in_transaction(db, lambda c, w=w: store.task_counts(c, w), write=False)
        assert one == real[w], (w, one, real[w])
    many = await in_transaction(
        db, lambda c: store.task_counts_of(c, list(workflow_ids)), write=False
    )
    assert many == real
    findings = {f.name: f for f in await check(db)}
    assert findings["task_counter_mismatch"].count == 0, findings["task_counter_mismatch"]
    return real


async def _claim(client: httpx.AsyncClient, workflow_id: int, limit: int) -> list[int]:
    body = {"limit": limit, "workflow_id": workflow_id}
    claimed = (await ok(client.post("/v3/claims", json=body)))["data"]
    return [int(c["task_instance_id"]) for c in claimed]


async def test_a_submission_is_counted(
    client: httpx.AsyncClient, db: Database, backend: str
) -> None:
    listed = await submit(client, 5)
    array = await submit_array(client, 0, 2999)
    graph = await ok(
        client.post(
            "/v3/workflows",
            json={
                "name": "g",
                "tasks": [
                    {"name": "a", "command": "true"},
                    {"name": "b", "command": "true", "depends_on": ["a"]},
                    {"name": "c", "command": "true", "depends_on": ["a", "b"]},
                ],
            },
        ),
        201,
    )
    after = await submit_array(client, 0, 9, depends_on=[{"workflow": array["id"]}])
    counts = await _agree(db, listed["id"], array["id"], graph["id"], after["id"])
    assert counts == {
        listed["id"]: {"Q": 5},
        array["id"]: {"Q": 3000},
        graph["id"]: {"Q": 1, "H": 2},
        after["id"]: {"H": 10},
    }
    if backend == "postgresql":  # the row its triggers lock first, before it has instances
        held = "SELECT count(*) FROM array_count WHERE workflow_id = :w"
        assert await sql_scalar(db, held, w=after["id"]) == 1
    # what a workflow's summary shows comes from the same counters
    assert (await ok(client.get(f"/v3/workflows/{array['id']}")))["counts"] == {"Q": 3000}
    # no counts for a workflow with no tasks (or none at all)
    assert await in_transaction(db, lambda c: store.task_counts(c, 10**9), write=False) == {}
    assert await in_transaction(db, lambda c: store.task_counts_of(c, [10**9]), write=False) == {
        10**9: {}
    }
    await assert_consistent(db)


async def test_every_move_of_a_task_life_is_counted(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = (await submit(client, 6, max_attempts=2))["id"]
    assert await _agree(db, wf) == {wf: {"Q": 6}}
    # claimed (an agent's claim: instances and tasks moved in one statement on PostgreSQL)
    claimed = await _claim(client, wf, 4)
    assert len(claimed) == 4
    assert await _agree(db, wf) == {wf: {"I": 4, "Q": 2}}
    # launched, then running
    for ti in claimed:
        await launch(client, ti)
    assert await _agree(db, wf) == {wf: {"O": 4, "Q": 2}}
    for ti in claimed:
        await running(client, ti)
    assert await _agree(db, wf) == {wf: {"R": 4, "Q": 2}}
    # done; an error with a try left (a new QUEUED try); an error fatal at once
    assert await done(client, claimed[0]) == "D"
    assert await error(client, claimed[1], "E", "exit 1") == "E"
    assert await error(client, claimed[2], "F", "it broke") == "F"
    assert await _agree(db, wf) == {wf: {"D": 1, "Q": 3, "F": 1, "R": 1}}
    # the retry runs and fails again: no try left, so the task ends ERROR_FATAL
    retried = await sql_rows(db, "SELECT task_id FROM task_instance WHERE id = :i", i=claimed[1])
    retry = await live_ti(client, retried[0]["task_id"])
    await instantiate(client, [retry])
    await launch(client, retry)
    await running(client, retry)
    assert await _agree(db, wf) == {wf: {"D": 1, "Q": 2, "F": 1, "R": 2}}
    assert await error(client, retry, "E", "exit 1 again") == "E"
    assert await _agree(db, wf) == {wf: {"D": 1, "Q": 2, "F": 2, "R": 1}}
    # the distributor's route for many at once, and a resume of the failed tasks
    queued = [
        r["id"]
        for r in await sql_rows(
            db, "SELECT id FROM task_instance WHERE workflow_id = :w AND status = 'Q'", w=wf
        )
    ]
    await instantiate(client, queued)
    assert await _agree(db, wf) == {wf: {"D": 1, "I": 2, "F": 2, "R": 1}}
    await ok(client.post(f"/v3/workflows/{wf}/resume"))
    assert await _agree(db, wf) == {wf: {"D": 1, "I": 2, "Q": 2, "R": 1}}
    await assert_consistent(db)


async def test_cancel_and_resume_are_counted(client: httpx.AsyncClient, db: Database) -> None:
    wf = (await submit(client, 8))["id"]
    other = (await submit(client, 3))["id"]
    ids = await task_ids(client, wf)
    for t in ids[:3]:
        ti = await live_ti(client, t)
        await instantiate(client, [ti])
        await launch(client, ti)
        await running(client, ti)
    assert await done(client, await live_ti(client, ids[0])) == "D"
    await instantiate(client, [await live_ti(client, ids[3])])
    assert (await _agree(db, wf, other))[wf] == {"D": 1, "R": 2, "I": 1, "Q": 4}

    # queued and instantiated work ends ERROR_FATAL; running work is told to stop (KILL_SELF)
    await ok(client.post(f"/v3/workflows/{wf}/cancel"))
    counts = await _agree(db, wf, other)
    assert counts[other] == {"Q": 3}
    # the running tasks stay RUNNING until their instances' last word
    assert counts[wf] == {"D": 1, "R": 2, "F": 5}
    for t in ids[1:3]:  # the killed instances report their end: their tasks end ERROR_FATAL
        assert await error(client, await live_ti(client, t), "E", "killed") == "F"
    assert (await _agree(db, wf, other))[wf] == {"D": 1, "F": 7}

    # a resume gives the failed tasks fresh tries; the DONE one stays DONE
    await ok(client.post(f"/v3/workflows/{wf}/resume"))
    counts = await _agree(db, wf, other)
    assert counts == {wf: {"D": 1, "Q": 7}, other: {"Q": 3}}
    assert (await ok(client.get(f"/v3/workflows/{wf}")))["counts"] == counts[wf]
    await assert_consistent(db)


async def test_a_cancelled_graph_and_its_blocked_downstream_are_counted(
    client: httpx.AsyncClient, db: Database
) -> None:
    up = (await submit(client, 2))["id"]
    down = (await submit_array(client, 0, 4, depends_on=[{"workflow": up}]))["id"]
    assert await _agree(db, up, down) == {up: {"Q": 2}, down: {"H": 5}}
    await ok(client.post(f"/v3/workflows/{up}/cancel"))  # ERROR_FATAL: what waits is BLOCKED
    assert await _agree(db, up, down) == {up: {"F": 2}, down: {"B": 5}}
    await ok(client.post(f"/v3/workflows/{up}/resume"))  # re-opened: HELD again
    assert await _agree(db, up, down) == {up: {"Q": 2}, down: {"H": 5}}
    for t in await task_ids(client, up):  # the upstream done: the downstream is released
        ti = await live_ti(client, t)
        await instantiate(client, [ti])
        await launch(client, ti)
        await running(client, ti)
        assert await done(client, ti) == "D"
    assert await _agree(db, up, down) == {up: {"D": 2}, down: {"Q": 5}}
    await assert_consistent(db)


async def test_bulk_moves_of_many_tasks_in_one_statement_are_counted(
    client: httpx.AsyncClient, db: Database
) -> None:
    big = (await submit_array(client, 0, 4999))["id"]
    # the distributor instantiates 3000 instances in one request; a claim takes 1000 more
    queued = await sql_rows(
        db,
        "SELECT id FROM task_instance WHERE workflow_id = :w ORDER BY id LIMIT 3000",
        w=big,
    )
    await instantiate(client, [r["id"] for r in queued])
    assert len(await _claim(client, big, 1000)) == 1000
    assert await _agree(db, big) == {big: {"I": 4000, "Q": 1000}}
    # a cancel moves them all in a few set-based statements
    await ok(client.post(f"/v3/workflows/{big}/cancel"))
    assert await _agree(db, big) == {big: {"F": 5000}}
    await ok(client.post(f"/v3/workflows/{big}/resume"))
    assert await _agree(db, big) == {big: {"Q": 5000}}
    await assert_consistent(db)


async def _workflow_of_arrays(conn: Conn, sizes: list[int]) -> int:
    """A workflow with one array per size (as Jobmon's face makes them): store calls."""
    wf = await store.create_workflow(conn, "arrays", 0.0)
    for k, size in enumerate(sizes):
        array = await store.create_array(conn, wf, f"a{k}", 1, 10_000)
        await store.insert_range(conn, wf, array, 0, size - 1, SPEC, 1000)
    return wf


async def test_one_statement_over_many_arrays_and_workflows_is_counted(db: Database) -> None:
    first = await in_transaction(db, lambda c: _workflow_of_arrays(c, [300, 1, 250, 40]))
    second = await in_transaction(db, lambda c: _workflow_of_arrays(c, [120, 7]))
    assert await _agree(db, first, second) == {first: {"Q": 591}, second: {"Q": 127}}
    # one UPDATE over every array of both workflows, some rows changing status, some not
    await sql_exec(
        db,
        "UPDATE task SET status = CASE id % 4 WHEN 0 THEN 'D' WHEN 1 THEN 'F' WHEN 2 THEN 'R' "
        "ELSE status END, progress = 50 WHERE workflow_id IN (:a, :b)",
        a=first,
        b=second,
    )
    counts = await _agree(db, first, second)
    assert sum(counts[first].values()) == 591 and sum(counts[second].values()) == 127
    assert set(counts[first]) == {"D", "F", "R", "Q"}
    # one that changes no status changes no count; one that swaps two statuses keeps both
    await sql_exec(db, "UPDATE task SET progress = 70 WHERE workflow_id = :a", a=first)
    await sql_exec(
        db,
        "UPDATE task SET status = CASE status WHEN 'D' THEN 'F' WHEN 'F' THEN 'D' "
        "ELSE status END WHERE workflow_id = :a",
        a=first,
    )
    swapped = await _agree(db, first, second)
    assert (swapped[first]["D"], swapped[first]["F"]) == (counts[first]["F"], counts[first]["D"])
    # every task of a workflow moved to one status: the other statuses drop out of the counts
    await sql_exec(db, "UPDATE task SET status = 'D' WHERE workflow_id = :b", b=second)
    assert (await _agree(db, first, second))[second] == {"D": 127}


async def _delete_tasks(db: Database, where: str, **params: Any) -> int:
    """Delete tasks matching `where` with everything that refers to them (test only: farmstead
    itself never deletes a task)."""
    ti = f"SELECT id FROM task_instance WHERE task_id IN (SELECT id FROM task WHERE {where})"
    for sql in (
        f"DELETE FROM task_instance_deadline WHERE task_instance_id IN ({ti})",
        f"DELETE FROM task_instance_error_log WHERE task_instance_id IN ({ti})",
        f"DELETE FROM task_instance WHERE task_id IN (SELECT id FROM task WHERE {where})",
        f"DELETE FROM task_edge WHERE downstream_id IN (SELECT id FROM task WHERE {where}) "
        f"OR upstream_id IN (SELECT id FROM task WHERE {where})",
    ):
        await sql_exec(db, sql, **params)
    return await sql_exec(db, f"DELETE FROM task WHERE {where}", **params)


async def test_deleted_tasks_are_counted_out(client: httpx.AsyncClient, db: Database) -> None:
    first = await in_transaction(db, lambda c: _workflow_of_arrays(c, [50, 30]))
    second = (await submit(client, 4))["id"]
    ids = await task_ids(client, second)
    ti = await live_ti(client, ids[0])
    await instantiate(client, [ti])
    await launch(client, ti)
    await running(client, ti)
    assert await done(client, ti) == "D"
    # one statement over both arrays of the first workflow and part of the second
    deleted = await _delete_tasks(
        db, "(workflow_id = :a AND id % 2 = 0) OR id = :t", a=first, t=ids[0]
    )
    assert deleted == 41
    assert await _agree(db, first, second) == {first: {"Q": 40}, second: {"Q": 3}}
    await _delete_tasks(db, "workflow_id = :a", a=first)
    assert await _agree(db, first, second) == {first: {}, second: {"Q": 3}}


async def test_the_check_finds_counters_that_differ_from_the_tasks(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit_array(client, 0, 9)
    other = await submit(client, 2)
    await _agree(db, wf["id"], other["id"])
    (array,) = wf["array_ids"]

    async def broken() -> tuple[int, list[int]]:
        found = {f.name: f for f in await check(db)}["task_counter_mismatch"]
        return found.count, found.sample

    await sql_exec(db, "UPDATE task_count SET n = n + 1 WHERE array_id = :a", a=array)
    assert await broken() == (1, [array])
    await sql_exec(db, "UPDATE task_count SET n = n - 1 WHERE array_id = :a", a=array)
    assert await broken() == (0, [])
    # a count of a status its array has no task in
    await sql_exec(
        db,
        "INSERT INTO task_count (array_id, status, workflow_id, n) VALUES (:a, 'D', :w, 2)",
        a=array,
        w=wf["id"],
    )
    assert await broken() == (1, [array])
    await sql_exec(db, "DELETE FROM task_count WHERE array_id = :a AND status = 'D'", a=array)
    # a count missing, and one filed under another workflow
    await sql_exec(db, "DELETE FROM task_count WHERE array_id = :a", a=array)
    assert await broken() == (1, [array])
    await sql_exec(
        db,
        "INSERT INTO task_count (array_id, status, workflow_id, n) VALUES (:a, 'Q', :w, 10)",
        a=array,
        w=other["id"],
    )
    assert await broken() == (1, [array])
    await sql_exec(
        db, "UPDATE task_count SET workflow_id = :w WHERE array_id = :a", a=array, w=wf["id"]
    )
    assert await broken() == (0, [])
