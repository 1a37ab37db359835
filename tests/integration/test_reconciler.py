"""The reconciler's sweeps, one pass at a time: `Reconciler(db, settings).sweep()` called directly.

Every rule is driven with tiny deadlines (a 0.05 s heartbeat increment, a 0.2 s triage grace)
and a short sleep past them, so the tests are deterministic on both SQLite and PostgreSQL.
"""

import asyncio
import json
from typing import Any

import httpx
import pytest
from factories import (
    FSM,
    INC,
    events,
    heartbeat,
    instances_of,
    instantiate,
    launch,
    ok,
    running,
    sql_rows,
    sql_scalar,
    submit,
    task_row,
    ti_row,
)

from farmstead.db.engine import Database
from farmstead.services.reconciler import Reconciler
from farmstead.settings import Settings
from helpers import assert_consistent

SHORT = 0.05  # a heartbeat increment that has expired by the time we sweep
PAST = 0.25  # sleep this long to be past SHORT and a 0.2 s grace or timeout
#: the events of an instance from submission to expiry (submission itself writes none)
FULL_LIFE = [(None, "Q"), ("Q", "I"), ("I", "O"), ("O", "R"), ("R", "T"), ("T", "U")]


def reconciler(db: Database, db_url: str, **overrides: Any) -> Reconciler:
    """A reconciler whose rules fire only when a test asks: every threshold long by default."""
    values: dict[str, Any] = {
        "database_url": db_url, "reconciler_enabled": False, "triage_grace": 60.0,
        "launch_timeout": 600.0, "no_heartbeat_min_age": 0.0, "kill_self_timeout": 120.0,
    } | overrides
    return Reconciler(db, Settings(**values))


async def sweep(db: Database, db_url: str, **overrides: Any) -> dict[str, int]:
    """One pass of every rule; returns what moved, by new status."""
    return (await reconciler(db, db_url, **overrides).sweep()).moved



async def live_instances(db: Database, wf_id: int) -> dict[int, int]:
    """{task id: its first instance id} for every task of a workflow."""
    rows = await sql_rows(db, "SELECT task_id, min(id) AS ti FROM task_instance "
                              "WHERE workflow_id = :w GROUP BY task_id ORDER BY task_id", w=wf_id)
    return {r["task_id"]: r["ti"] for r in rows}


async def start_running(
    client: httpx.AsyncClient, db: Database, n: int, inc: float, **submit_extra: Any
) -> tuple[dict[str, Any], list[int], list[int]]:
    """A workflow of `n` tasks whose instances are RUNNING with heartbeat increment `inc`."""
    wf = await submit(client, n, **submit_extra)
    first = await live_instances(db, wf["id"])
    tis = [first[t] for t in wf["task_ids"]]
    await instantiate(client, tis)
    for ti in tis:
        await launch(client, ti)
        assert (await running(client, ti, inc=inc))[1] == "R"
    return wf, wf["task_ids"], tis


async def ti_events(db: Database, ti_id: int) -> list[tuple[str | None, str]]:
    """An instance's events as (from, to), oldest first."""
    rows = await sql_rows(db, "SELECT from_status, to_status FROM event WHERE "
                              "entity = 'task_instance' AND entity_id = :i ORDER BY id", i=ti_id)
    return [(r["from_status"], r["to_status"]) for r in rows]


async def task_events(db: Database, task_id: int) -> list[tuple[str | None, str]]:
    """A task's events as (from, to), oldest first."""
    rows = await sql_rows(db, "SELECT from_status, to_status FROM event WHERE "
                              "entity = 'task' AND entity_id = :i ORDER BY id", i=task_id)
    return [(r["from_status"], r["to_status"]) for r in rows]


async def error_descriptions(db: Database, ti_id: int) -> list[str]:
    """An instance's error-log descriptions, oldest first."""
    rows = await sql_rows(db, "SELECT description FROM task_instance_error_log "
                              "WHERE task_instance_id = :i ORDER BY id", i=ti_id)
    return [r["description"] for r in rows]


async def snapshot(db: Database) -> dict[str, Any]:
    """Every row a sweep could write, to compare before and after."""
    return {
        "instances": await sql_rows(db, "SELECT * FROM task_instance ORDER BY id"),
        "tasks": await sql_rows(db, "SELECT * FROM task ORDER BY id"),
        "events": await sql_scalar(db, "SELECT count(*) FROM event"),
        "errors": await sql_scalar(db, "SELECT count(*) FROM task_instance_error_log"),
    }


def assert_retried(new: dict[str, Any], old: dict[str, Any]) -> None:
    """`new` is the QUEUED retry of `old`: same task and array, a batch of its own, step 0."""
    assert new["status"] == "Q"
    assert new["task_id"] == old["task_id"] and new["array_id"] == old["array_id"]
    assert new["array_batch_num"] > old["array_batch_num"]
    assert new["array_step_id"] == 0


# ---- RUNNING past its deadline → TRIAGING ---------------------------------------------------


async def test_running_past_deadline_goes_triaging_and_task_stays_running(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    _wf, tasks, tis = await start_running(client, db, 3, SHORT)
    await heartbeat(client, tis[2], inc=INC)  # the third keeps reporting
    await asyncio.sleep(PAST)

    assert await sweep(db, db_url) == {"T": 2}

    assert [(await ti_row(db, i))["status"] for i in tis] == ["T", "T", "R"]
    assert [(await task_row(db, t))["status"] for t in tasks] == ["R", "R", "R"]
    for ti in tis[:2]:
        assert (await ti_events(db, ti))[-1] == ("R", "T")
        assert await error_descriptions(db, ti) == []  # triage is not an error yet
    rows = await sql_rows(db, "SELECT details FROM event WHERE to_status = 'T'")
    assert len(rows) == 2
    for r in rows:
        details = json.loads(r["details"]) if isinstance(r["details"], str) else r["details"]
        assert details["by"] == "reconciler" and details["rule"] == "running past deadline"
    assert await sweep(db, db_url) == {}
    await assert_consistent(db)


@pytest.mark.parametrize("rescue", ["heartbeat", "log_running"])
async def test_a_report_while_triaging_rescues_the_instance(
    client: httpx.AsyncClient, db: Database, db_url: str, rescue: str
) -> None:
    _wf, [task_id], [ti] = await start_running(client, db, 1, SHORT)
    await asyncio.sleep(PAST)
    assert await sweep(db, db_url) == {"T": 1}

    if rescue == "heartbeat":
        assert await heartbeat(client, ti, inc=INC) == "R"
    else:
        assert (await running(client, ti, inc=INC))[1] == "R"

    assert (await ti_row(db, ti))["status"] == "R"
    assert (await task_row(db, task_id))["status"] == "R"
    assert (await ti_events(db, ti))[-2:] == [("R", "T"), ("T", "R")]
    # the rescue gave it a new deadline: past the grace nothing expires it again
    await asyncio.sleep(PAST)
    assert await sweep(db, db_url, triage_grace=0.2) == {}
    assert (await ti_row(db, ti))["status"] == "R"
    # and a second heartbeat is the plain lock-free one
    assert await heartbeat(client, ti, inc=INC) == "R"
    assert (await ti_events(db, ti))[-1] == ("T", "R")
    await assert_consistent(db)


# ---- TRIAGING past the grace → UNKNOWN_ERROR ------------------------------------------------


async def test_triaging_past_grace_becomes_unknown_error_and_is_retried(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    wf, tasks, tis = await start_running(client, db, 3, SHORT, max_attempts=3)
    await heartbeat(client, tis[2], inc=INC)
    await asyncio.sleep(PAST)
    assert await sweep(db, db_url, triage_grace=0.2) == {"T": 2}
    # still within the grace: nothing more
    assert await sweep(db, db_url, triage_grace=0.2) == {}
    await asyncio.sleep(PAST)

    assert await sweep(db, db_url, triage_grace=0.2) == {"U": 2}

    for task_id, ti in zip(tasks[:2], tis[:2], strict=True):
        row = await ti_row(db, ti)
        assert row["status"] == "U"
        deadline = row["report_by_date"]
        [description] = await error_descriptions(db, ti)
        assert description.startswith("no heartbeat since "), description
        last = row["last_report_date"]  # the log_running report: no heartbeat came after it
        assert last is not None and last < deadline
        assert description == (
            f"no heartbeat since {last.isoformat()} (deadline {deadline.isoformat()} passed)"
        )
        assert await ti_events(db, ti) == FULL_LIFE
        task = await task_row(db, task_id)
        assert task["status"] == "Q"
        assert task["num_attempts"] == 2
        assert task["last_error"].startswith("no heartbeat since ")
        assert (await task_events(db, task_id))[-2:] == [("R", "E"), ("E", "Q")]
        old, new = await instances_of(db, task_id)
        assert old["id"] == ti
        assert_retried(new, old)
        assert (await ti_events(db, new["id"])) == [(None, "Q")]
    assert (await ti_row(db, tis[2]))["status"] == "R"
    assert (await task_row(db, tasks[2]))["status"] == "R"
    summary = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert summary["status"] == "R" and summary["counts"] == {"Q": 2, "R": 1}
    assert await sweep(db, db_url, triage_grace=0.2) == {}
    await assert_consistent(db)


async def test_each_task_gets_its_own_instance_error_as_last_error(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    """Two instances expire in one sweep, each with its own deadline in its message."""
    _wf, tasks, tis = await start_running(client, db, 2, SHORT)
    await asyncio.sleep(0.1)
    await heartbeat(client, tis[1], inc=SHORT)  # a different deadline for the second
    await asyncio.sleep(PAST)
    assert await sweep(db, db_url, triage_grace=0) == {"T": 2, "U": 2}
    messages = [(await error_descriptions(db, ti))[0] for ti in tis]
    assert messages[0] != messages[1]
    for task_id, message in zip(tasks, messages, strict=True):
        assert (await task_row(db, task_id))["last_error"] == message


async def test_triaging_past_grace_without_tries_left_fails_the_task(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    wf, [task_id], [ti] = await start_running(client, db, 1, SHORT, max_attempts=1)
    await asyncio.sleep(PAST)
    # a zero grace: both moves in one sweep
    assert await sweep(db, db_url, triage_grace=0) == {"T": 1, "U": 1}
    assert (await ti_row(db, ti))["status"] == "U"
    task = await task_row(db, task_id)
    assert task["status"] == "F" and task["num_attempts"] == 1
    assert task["time_finished"] is not None
    assert len(await instances_of(db, task_id)) == 1
    assert (await task_events(db, task_id))[-2:] == [("R", "E"), ("E", "F")]
    assert (await ok(client.get(f"/v3/workflows/{wf['id']}")))["status"] == "F"
    await assert_consistent(db)


# ---- LAUNCHED, never reported → NO_HEARTBEAT → ERROR ----------------------------------------


async def test_launched_never_reported_goes_no_heartbeat_then_error_and_is_retried(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    wf = await submit(client, 3)
    first = await live_instances(db, wf["id"])
    tis = [first[t] for t in wf["task_ids"]]
    await instantiate(client, tis)
    for ti in tis[:2]:
        await launch(client, ti, inc=SHORT)
    await launch(client, tis[2], inc=INC)  # launched, deadline ahead: healthy
    await asyncio.sleep(PAST)

    # launched too recently for the rule: nothing moves yet
    assert await sweep(db, db_url, no_heartbeat_min_age=60) == {}
    assert await sweep(db, db_url, no_heartbeat_min_age=0) == {"X": 2, "E": 2}

    for task_id, ti in zip(wf["task_ids"][:2], tis[:2], strict=True):
        assert (await ti_row(db, ti))["status"] == "E"
        assert (await ti_events(db, ti))[-2:] == [("O", "X"), ("X", "E")]
        [description] = await error_descriptions(db, ti)
        assert description.startswith("no report since launch; deadline "), description
        task = await task_row(db, task_id)
        assert task["status"] == "Q" and task["num_attempts"] == 2
        assert (await task_events(db, task_id))[-2:] == [("O", "E"), ("E", "Q")]
        old, new = await instances_of(db, task_id)
        assert_retried(new, old)
    assert (await ti_row(db, tis[2]))["status"] == "O"
    assert await sweep(db, db_url) == {}
    await assert_consistent(db)


# ---- INSTANTIATED, never launched → NO_DISTRIBUTOR_ID ---------------------------------------


async def test_instantiated_past_launch_timeout_goes_no_distributor_id_and_is_retried(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    wf = await submit(client, 1)
    [task_id] = wf["task_ids"]
    [ti] = (await live_instances(db, wf["id"])).values()
    await instantiate(client, [ti])
    assert await sweep(db, db_url, launch_timeout=60) == {}
    await asyncio.sleep(PAST)

    assert await sweep(db, db_url, launch_timeout=0.2) == {"W": 1}

    assert (await ti_row(db, ti))["status"] == "W"
    assert (await ti_events(db, ti))[-1] == ("I", "W")
    assert await error_descriptions(db, ti) == ["not launched within 0.2 s of instantiation"]
    task = await task_row(db, task_id)
    assert task["status"] == "Q" and task["num_attempts"] == 2
    assert (await task_events(db, task_id))[-2:] == [("I", "E"), ("E", "Q")]
    old, new = await instances_of(db, task_id)
    assert_retried(new, old)
    # the retry is QUEUED, not INSTANTIATED: the rule leaves it alone
    await asyncio.sleep(PAST)
    assert await sweep(db, db_url, launch_timeout=0.2) == {}
    await assert_consistent(db)


# ---- KILL_SELF unanswered → ERROR_FATAL -----------------------------------------------------


async def test_kill_self_past_timeout_becomes_error_fatal_with_its_task(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    wf, [task_id], [ti] = await start_running(client, db, 1, INC)
    cancelled = await ok(client.post(f"/v3/workflows/{wf['id']}/cancel"))
    assert cancelled["changed"] == {"K": 1}
    assert await sweep(db, db_url, kill_self_timeout=60) == {}
    await asyncio.sleep(PAST)

    assert await sweep(db, db_url, kill_self_timeout=0.2) == {"F": 1}

    assert (await ti_row(db, ti))["status"] == "F"
    assert (await ti_events(db, ti))[-2:] == [("R", "K"), ("K", "F")]
    assert await error_descriptions(db, ti) == ["did not stop within 0.2 s"]
    task = await task_row(db, task_id)
    assert task["status"] == "F" and task["num_attempts"] == 1
    assert len(await instances_of(db, task_id)) == 1  # a cancelled task is not retried
    assert (await ok(client.get(f"/v3/workflows/{wf['id']}")))["status"] == "C"  # CANCELLED
    await assert_consistent(db)


# ---- healthy instances; idempotence; chunks; the loop ----------------------------------------


async def test_healthy_instances_are_never_touched(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    wf = await submit(client, 6)
    first = await live_instances(db, wf["id"])
    queued, inst, launched, run, done_ti, err_ti = (first[t] for t in wf["task_ids"])
    await instantiate(client, [inst, launched, run, done_ti, err_ti])
    for ti in (launched, run, done_ti, err_ti):
        await launch(client, ti, inc=INC)
    for ti in (run, done_ti, err_ti):
        await running(client, ti, inc=INC)
    assert (await ok(client.post(f"{FSM}/task_instance/{done_ti}/log_done", json={})))[
        "status"] == "D"
    await ok(client.post(f"{FSM}/task_instance/{err_ti}/log_error_worker_node",
                         json={"error_state": "E", "error_description": "x"}))
    await asyncio.sleep(PAST)
    before = await snapshot(db)

    # every threshold as short as it goes, but no deadline of these has passed
    moved = await reconciler(db, db_url, triage_grace=0, no_heartbeat_min_age=0,
                             launch_timeout=60, kill_self_timeout=0.01).sweep()

    assert moved.total == 0 and moved.skipped == 0, moved
    assert await snapshot(db) == before
    assert queued  # (a QUEUED instance has no deadline at all)
    await assert_consistent(db)


async def test_sweeping_twice_moves_nothing_the_second_time_across_chunks(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    _wf, _tasks, running_tis = await start_running(client, db, 5, SHORT)
    wf2 = await submit(client, 3)
    launched = list((await live_instances(db, wf2["id"])).values())
    await instantiate(client, launched)
    for ti in launched:
        await launch(client, ti, inc=SHORT)
    await asyncio.sleep(PAST)
    # a grace well beyond two sweeps' time on a loaded machine (a chunked sweep takes ~0.2 s)
    chunked = {"reconciler_chunk": 2, "triage_grace": 1.0}

    assert await sweep(db, db_url, **chunked) == {"T": 5, "X": 3, "E": 3}
    assert await sweep(db, db_url, **chunked) == {}
    await asyncio.sleep(1.05)
    assert await sweep(db, db_url, **chunked) == {"U": 5}
    assert await sweep(db, db_url, **chunked) == {}

    for ti in running_tis:
        assert await ti_events(db, ti) == FULL_LIFE
        assert len(await error_descriptions(db, ti)) == 1
    for ti in launched:
        evs = await ti_events(db, ti)
        assert evs.count(("O", "X")) == 1 and evs.count(("X", "E")) == 1
    dupes = await sql_rows(
        db, "SELECT entity, entity_id, from_status, to_status, count(*) AS n FROM event "
            "WHERE entity != 'workflow' GROUP BY entity, entity_id, from_status, to_status "
            "HAVING count(*) > 1")
    assert dupes == []
    await assert_consistent(db)


async def test_the_background_loop_sweeps_until_stopped(
    client: httpx.AsyncClient, db: Database, db_url: str
) -> None:
    _wf, [task_id], [ti] = await start_running(client, db, 1, SHORT)
    loop = reconciler(db, db_url, reconciler_interval=0.05, triage_grace=0)
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    try:
        for _ in range(100):
            if (await ti_row(db, ti))["status"] == "U":
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)
    assert (await ti_row(db, ti))["status"] == "U"
    assert (await task_row(db, task_id))["status"] == "Q"
    assert [e["to_status"] for e in await events(client, _wf["id"])
            if e["entity"] == "task_instance" and e["entity_id"] == ti][-2:] == ["T", "U"]
    await assert_consistent(db)
