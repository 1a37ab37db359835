"""Retries the server queues itself: in the transaction of the error, with adjusted resources,
held back by the workflow's retry delay. They are what the reconciler's expiries lead to."""

import asyncio
from typing import Any

import httpx
import pytest
from factories import (
    error,
    instances_of,
    instantiate,
    live_ti,
    ok,
    running_task,
    sql_rows,
    submit,
    task_row,
    ti_row,
)

from farmstead.db.engine import Database
from helpers import assert_consistent


async def entity_events(db: Database, after: int = 0) -> list[tuple[str, str | None, str]]:
    """(entity, from, to) of task and instance events with id above `after`, oldest first."""
    rows = await sql_rows(db, "SELECT entity, from_status, to_status FROM event WHERE id > :a "
                              "AND entity != 'workflow' ORDER BY id", a=after)
    return [(r["entity"], r["from_status"], r["to_status"]) for r in rows]


async def last_event_id(db: Database) -> int:
    """The id of the newest event (0 if none)."""
    rows = await sql_rows(db, "SELECT coalesce(max(id), 0) AS m FROM event")
    return int(rows[0]["m"])


async def fail_running(client: httpx.AsyncClient, ti_id: int, state: str) -> None:
    """Take a QUEUED instance to RUNNING, then report error `state` for it."""
    await instantiate(client, [ti_id])
    await ok(client.post(f"/v3/fsm/task_instance/{ti_id}/log_distributor_id",
                         json={"distributor_id": "j", "next_report_increment": 300}))
    await ok(client.post(f"/v3/fsm/task_instance/{ti_id}/log_running",
                         json={"next_report_increment": 300}))
    assert await error(client, ti_id, state) == state


async def test_an_error_with_tries_left_requeues_in_the_same_transaction(
    client: httpx.AsyncClient, db: Database
) -> None:
    _wf, task_id, ti = await running_task(client, max_attempts=3)
    before = await last_event_id(db)

    assert await error(client, ti, "E", "exit 1") == "E"

    task = await task_row(db, task_id)
    assert task["status"] == "Q" and task["num_attempts"] == 2
    assert task["last_error"] == "exit 1"
    old, new = await instances_of(db, task_id)
    assert old["id"] == ti and old["status"] == "E"
    assert new["status"] == "Q" and new["array_id"] == old["array_id"]
    assert new["array_batch_num"] > old["array_batch_num"] and new["array_step_id"] == 0
    assert new["available_date"] is None
    # one transaction wrote all of it, the instance's event first
    assert await entity_events(db, before) == [
        ("task_instance", "R", "E"), ("task", "R", "E"), ("task", "E", "Q"),
        ("task_instance", None, "Q"),
    ]
    assert await live_ti(client, task_id) == new["id"]
    await assert_consistent(db)


async def test_retries_use_up_the_tries_then_the_task_is_fatal(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1, max_attempts=2)
    [task_id] = wf["task_ids"]
    await fail_running(client, await live_ti(client, task_id), "E")
    second = await live_ti(client, task_id)
    await fail_running(client, second, "E")

    task = await task_row(db, task_id)
    assert task["status"] == "F" and task["num_attempts"] == 2
    assert [i["status"] for i in await instances_of(db, task_id)] == ["E", "E"]
    assert (await ok(client.get(f"/v3/workflows/{wf['id']}")))["status"] == "F"
    await assert_consistent(db)


@pytest.mark.parametrize(
    ("resources", "scales", "first", "second"),
    [
        # the default: memory and runtime x1.5, integers rounded up, other keys untouched
        ({"memory": 2, "runtime": 100, "cores": 4, "queue": "all.q"}, None,
         {"memory": 3, "runtime": 150, "cores": 4, "queue": "all.q"},
         {"memory": 5, "runtime": 225, "cores": 4, "queue": "all.q"}),
        ({"memory": 2.5, "runtime": 60.0}, None,
         {"memory": 3.75, "runtime": 90.0}, {"memory": 5.625, "runtime": 135.0}),
        # custom scales: only the keys they name
        ({"memory": 2, "runtime": 100, "cores": 4}, {"memory": 2.0, "cores": 1.5},
         {"memory": 4, "runtime": 100, "cores": 6}, {"memory": 8, "runtime": 100, "cores": 9}),
        # no scaling at all
        ({"memory": 2, "runtime": 100}, {},
         {"memory": 2, "runtime": 100}, {"memory": 2, "runtime": 100}),
    ],
    ids=["default", "floats", "custom", "none"],
)
async def test_a_resource_error_retries_with_scaled_resources(
    client: httpx.AsyncClient, db: Database, resources: dict[str, Any],
    scales: dict[str, float] | None, first: dict[str, Any], second: dict[str, Any],
) -> None:
    extra: dict[str, Any] = {"resources": resources, "max_attempts": 3}
    if scales is not None:
        extra["resource_scales"] = scales
    wf = await submit(client, 1, **extra)
    [task_id] = wf["task_ids"]
    before = await last_event_id(db)
    await fail_running(client, await live_ti(client, task_id), "Z")

    retry = (await instances_of(db, task_id))[-1]
    assert retry["status"] == "Q" and retry["resources"] == first
    assert [e for e in await entity_events(db, before) if e[0] == "task"][-3:] == [
        ("task", "R", "E"), ("task", "E", "A"), ("task", "A", "Q")]
    # a second resource error scales the retry's resources again
    await fail_running(client, retry["id"], "Z")
    assert (await instances_of(db, task_id))[-1]["resources"] == second
    # the task keeps what was asked for
    assert (await task_row(db, task_id))["resources"] == resources
    await assert_consistent(db)


async def test_a_plain_error_retry_keeps_the_resources(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1, resources={"memory": 2, "runtime": 100})
    [task_id] = wf["task_ids"]
    await fail_running(client, await live_ti(client, task_id), "E")
    assert (await instances_of(db, task_id))[-1]["resources"] == {"memory": 2, "runtime": 100}


async def test_the_retry_delay_holds_the_new_instance_back(
    client: httpx.AsyncClient, db: Database
) -> None:
    delay = 1.0
    held = await submit(client, 1, retry_delay=delay, max_attempts=3)
    free = await submit(client, 1, max_attempts=3)
    retries = []
    for wf in (held, free):
        [task_id] = wf["task_ids"]
        await fail_running(client, await live_ti(client, task_id), "E")
        retries.append((await instances_of(db, task_id))[-1])
    held_ti, free_ti = retries
    assert held_ti["available_date"] is not None and free_ti["available_date"] is None

    batches = await instantiate(client, [held_ti["id"], free_ti["id"]])
    assert [tis for *_, tis in batches] == [[free_ti["id"]]]
    assert (await ti_row(db, held_ti["id"]))["status"] == "Q"
    assert (await ti_row(db, free_ti["id"]))["status"] == "I"

    await asyncio.sleep(delay + 0.2)
    batches = await instantiate(client, [held_ti["id"]])
    assert [tis for *_, tis in batches] == [[held_ti["id"]]]
    assert batches[0][2] == held_ti["array_batch_num"]
    assert (await ti_row(db, held_ti["id"]))["status"] == "I"
    await assert_consistent(db)
