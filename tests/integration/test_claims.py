"""Claims (POST /v3/claims): priority order from the instances' own copy of their task's
priority, the workflow filter, retry holds, retries keep their priority, and concurrent
claimers never get the same instance."""

import asyncio

import httpx
from factories import error, launch, ok, running, sql_exec, sql_rows, submit, submit_array

from farmstead.db.engine import Database
from helpers import assert_consistent


async def _claim(client: httpx.AsyncClient, limit: int, workflow_id: int | None = None) -> list:
    body: dict = {"limit": limit}
    if workflow_id is not None:
        body["workflow_id"] = workflow_id
    return (await ok(client.post("/v3/claims", json=body)))["data"]  # type: ignore[no-any-return]


async def test_claims_follow_priority_then_id_and_the_workflow_filter(
    client: httpx.AsyncClient, db: Database
) -> None:
    low = await submit_array(client, 0, 4, priority=1)
    high = await submit_array(client, 0, 2, priority=5)
    mid = await submit(client, 2, priority=3)
    rows = await sql_rows(
        db,
        "SELECT i.priority AS ip, t.priority AS tp FROM task_instance i "
        "JOIN task t ON t.id = i.task_id",
    )
    assert rows and all(r["ip"] == r["tp"] for r in rows)

    first = await _claim(client, 2)
    assert [c["workflow_id"] for c in first] == [high["id"]] * 2
    only_low = await _claim(client, 2, low["id"])
    assert [c["workflow_id"] for c in only_low] == [low["id"]] * 2
    next_three = await _claim(client, 3)  # answered in instance id order
    assert sorted(c["workflow_id"] for c in next_three) == sorted([high["id"]] + [mid["id"]] * 2)
    rest = await _claim(client, 100)
    assert [c["workflow_id"] for c in rest] == [low["id"]] * 3
    assert await _claim(client, 10) == []
    await assert_consistent(db)


async def test_a_held_retry_is_not_claimed_and_a_retry_keeps_its_priority(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1, priority=9, retry_delay=3600)
    (claimed,) = await _claim(client, 1)
    ti = claimed["task_instance_id"]
    await launch(client, ti)
    await running(client, ti)
    assert await error(client, ti) == "E"
    (retry,) = await sql_rows(
        db,
        "SELECT id, status, priority FROM task_instance WHERE task_id = :t AND id <> :i",
        t=claimed["task_id"],
        i=ti,
    )
    assert (retry["status"], retry["priority"]) == ("Q", 9)
    assert await _claim(client, 5) == []  # held back by the retry delay
    await sql_exec(
        db, "UPDATE task_instance SET available_date = NULL WHERE id = :i", i=retry["id"]
    )
    assert [c["task_instance_id"] for c in await _claim(client, 5, wf["id"])] == [retry["id"]]
    await assert_consistent(db)


async def test_concurrent_claimers_never_share_an_instance(
    client: httpx.AsyncClient, db: Database
) -> None:
    await submit_array(client, 0, 199)
    results = await asyncio.gather(*[_claim(client, 7) for _ in range(40)])
    ids = [c["task_instance_id"] for batch in results for c in batch]
    assert len(ids) == len(set(ids)) == 200
    instantiated = await sql_rows(db, "SELECT count(*) AS n FROM task_instance WHERE status='I'")
    assert instantiated[0]["n"] == 200
    await assert_consistent(db)


async def test_a_claim_writes_one_event_per_move_instances_first(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 3)
    claimed = await _claim(client, 2, wf["id"])
    ids = [c["task_instance_id"] for c in claimed]
    assert ids == sorted(ids)  # answered in instance id order
    events = await sql_rows(
        db,
        "SELECT entity, entity_id, from_status, to_status, details FROM event "
        "WHERE workflow_id = :w AND to_status = 'I' ORDER BY id",
        w=wf["id"],
    )
    moves = [(e["entity"], e["entity_id"], e["from_status"], e["to_status"]) for e in events]
    assert moves == [("task_instance", c["task_instance_id"], "Q", "I") for c in claimed] + [
        ("task", c["task_id"], "Q", "I") for c in claimed
    ]
    details = [e["details"] for e in events]
    assert all(d in ({"by": "claim"}, '{"by": "claim"}') for d in details[:2]), details
    await assert_consistent(db)


async def test_a_distributor_reads_the_claimed_instances_resources(
    client: httpx.AsyncClient, db: Database
) -> None:
    """`POST /v3/task_instances/status` with `resources`: the task's resources for a first try,
    the scaled ones of a retry after a resource error (what the Slurm executor submits)."""
    wf = await submit(client, 2, resources={"memory": 1, "runtime": 60, "cores": 2})
    claimed = await _claim(client, 2, wf["id"])
    first, other = (c["task_instance_id"] for c in claimed)
    await launch(client, first)
    await running(client, first)
    assert await error(client, first, "Z", "killed for memory") == "Z"
    (retry,) = await _claim(client, 1, wf["id"])
    body = {"task_instance_ids": [other, retry["task_instance_id"], 10**9], "resources": True}
    got = (await ok(client.post("/v3/task_instances/status", json=body)))["data"]
    assert [g["status"] for g in got] == ["I", "I"]  # an unknown id is left out
    assert got[0]["resources"] == {"memory": 1, "runtime": 60, "cores": 2}
    assert got[1]["resources"] == {"memory": 2, "runtime": 90, "cores": 2}  # x1.5, ints up
    plain = await ok(client.post("/v3/task_instances/status", json={"task_instance_ids": [other]}))
    assert plain["data"] == [{"task_instance_id": other, "status": "I"}]  # no resources unasked
    await assert_consistent(db)
