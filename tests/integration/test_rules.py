"""The rules in which farmstead does better than Jobmon, observed through HTTP and the database."""

from typing import Any

import httpx
import pytest
from factories import (
    FSM,
    INC,
    LIVE,
    done,
    each_case,
    error,
    events,
    heartbeat,
    instances_of,
    instantiate,
    launch,
    live_ti,
    ok,
    running,
    running_task,
    seconds_to_deadline,
    set_task_status,
    set_ti_status,
    sql_exec,
    sql_rows,
    submit,
    task_row,
    ti_row,
    written,
)
from sqlalchemy.exc import IntegrityError

from farmstead.db.engine import Database


def moves(evs: list[dict[str, Any]], entity: str, entity_id: int) -> list[tuple[Any, str]]:
    """The (from, to) moves recorded for one row."""
    return [(e["from_status"], e["to_status"]) for e in evs
            if e["entity"] == entity and e["entity_id"] == entity_id]


async def _error_rows(db: Database, ti_id: int) -> list[str]:
    rows = await sql_rows(db, "SELECT description FROM task_instance_error_log "
                              "WHERE task_instance_id = :i ORDER BY id", i=ti_id)
    return [r["description"] for r in rows]


# ---- TRIAGING: a late worker is rescued, its reports accepted ------------------------------


async def test_heartbeat_rescues_a_triaging_instance(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf, task_id, ti_id = await running_task(client)
    await set_ti_status(db, ti_id, "T")
    assert await heartbeat(client, ti_id, 900, stdout="/late") == "R"
    row = await ti_row(db, ti_id)
    assert (row["status"], row["stdout"]) == ("R", "/late")
    assert 800 < await seconds_to_deadline(db, ti_id) <= 900
    assert (await task_row(db, task_id))["status"] == "R"
    evs = await events(client, wf["id"])
    assert moves(evs, "task_instance", ti_id)[-1] == ("T", "R")
    assert moves(evs, "task", task_id)[-1] == ("O", "R")  # no task event for the rescue
    # and it is a normal RUNNING instance again: the next heartbeat is a plain one
    assert await heartbeat(client, ti_id) == "R"


async def test_log_running_rescues_a_triaging_instance(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf, task_id, ti_id = await running_task(client)
    await set_ti_status(db, ti_id, "T")
    tup = await running(client, ti_id, inc=700)
    assert tup[1] == "R"
    assert (await ti_row(db, ti_id))["status"] == "R"
    assert 600 < await seconds_to_deadline(db, ti_id) <= 700
    assert (await task_row(db, task_id))["status"] == "R"
    assert moves(await events(client, wf["id"]), "task_instance", ti_id)[-1] == ("T", "R")


async def test_done_from_triaging_is_accepted(client: httpx.AsyncClient, db: Database) -> None:
    _, task_id, ti_id = await running_task(client)
    await set_ti_status(db, ti_id, "T")
    assert await done(client, ti_id, stdout_log="finished late") == "D"
    assert (await task_row(db, task_id))["status"] == "D"
    assert (await ti_row(db, ti_id))["stdout_log"] == "finished late"


async def test_error_from_triaging_is_accepted(client: httpx.AsyncClient, db: Database) -> None:
    _, task_id, ti_id = await running_task(client)
    await set_ti_status(db, ti_id, "T")
    assert await error(client, ti_id, "E", "exit 1") == "E"
    t = await task_row(db, task_id)
    assert (t["status"], t["num_attempts"]) == ("Q", 2)
    assert await _error_rows(db, ti_id) == ["exit 1"]


# ---- repeated requests: 200, same status, nothing written ----------------------------------


REPEATS: dict[str, tuple[str, str, dict[str, Any], Any]] = {
    # name: (instance status before, route, body, expected answer)
    "log_running": ("O", "log_running",
                    {"process_group_id": 7, "next_report_increment": INC, "nodename": "n"}, "R"),
    "log_done": ("R", "log_done", {"stdout_log": "ok"}, {"status": "D"}),
    "log_error_worker_node": ("R", "log_error_worker_node",
                              {"error_state": "E", "error_description": "x"}, {"status": "E"}),
    "log_error_worker_node_fatal": ("R", "log_error_worker_node",
                                    {"error_state": "F", "error_description": "x"},
                                    {"status": "F"}),
    "log_known_error": ("O", "log_known_error", {"error_state": "Z", "error_message": "oom"},
                        {"message": ""}),
    "log_no_distributor_id": ("I", "log_no_distributor_id", {"no_id_err_msg": "no"},
                              {"message": ""}),
    "log_distributor_id": ("I", "log_distributor_id",
                           {"distributor_id": "12", "next_report_increment": INC},
                           None),
}


async def _instance_in(client: httpx.AsyncClient, status: str, **submit_extra: Any) -> tuple[
        dict[str, Any], int, int]:
    wf = await submit(client, 1, **submit_extra)
    task_id = wf["task_ids"][0]
    ti_id = await live_ti(client, task_id)
    if status in "IOR":
        await instantiate(client, [ti_id])
    if status in "OR":
        await launch(client, ti_id)
    if status == "R":
        await running(client, ti_id)
    return wf, task_id, ti_id


async def test_a_repeated_request_writes_nothing(client: httpx.AsyncClient, db: Database) -> None:
    async def check(before_status: str, route: str, body: dict[str, Any], expected: Any) -> None:
        _, _, ti_id = await _instance_in(client, before_status)
        assert (await ti_row(db, ti_id))["status"] == before_status
        url = f"{FSM}/task_instance/{ti_id}/{route}"
        first = await ok(client.post(url, json=body))
        after_first = await written(db, ti_id)
        assert after_first["ti"]["status"] != before_status
        second = await ok(client.post(url, json=body))
        assert await written(db, ti_id) == after_first
        if route == "log_running":
            assert first["task_instance"] == second["task_instance"]
            assert second["task_instance"][1] == expected
        elif expected is None:
            assert second["message"] in ("", "already LAUNCHED")
        else:
            assert first == second == expected

    await each_case(REPEATS, check)


# ---- error-log rows only for applied transitions -------------------------------------------


NOT_APPLIED: dict[str, tuple[str, str, dict[str, Any], int]] = {
    # name: (instance status, route, body, expected code)
    "invalid E from Q": ("Q", "log_error_worker_node", {"error_state": "E"}, 409),
    "invalid W from R": ("R", "log_no_distributor_id", {"no_id_err_msg": "x"}, 409),
    "invalid known E from Q": ("Q", "log_known_error", {"error_state": "E"}, 409),
    "untimely E on D": ("D", "log_error_worker_node", {"error_state": "E"}, 200),
    "untimely U on D": ("D", "log_known_error", {"error_state": "U"}, 200),
    "untimely U on E": ("E", "log_known_error", {"error_state": "U"}, 200),
    "untimely Z on E": ("E", "log_error_worker_node", {"error_state": "Z"}, 200),
    "untimely W on F": ("F", "log_no_distributor_id", {"no_id_err_msg": "x"}, 200),
}


async def test_no_error_log_row_unless_the_transition_applies(
    client: httpx.AsyncClient, db: Database
) -> None:
    async def check(status: str, route: str, body: dict[str, Any], code: int) -> None:
        if status in "QR":
            _, _, ti_id = await _instance_in(client, status)
        else:
            _, _, ti_id = await _instance_in(client, "R")
            if status == "D":
                await done(client, ti_id)
            else:
                await error(client, ti_id, status, "first")
        body = {**body, "error_description": "late", "error_message": "late"}
        before = await written(db, ti_id)
        resp = await client.post(f"{FSM}/task_instance/{ti_id}/{route}", json=body)
        assert resp.status_code == code, resp.text
        answer = resp.json()
        if code == 409:
            assert answer["status"] == status, answer
        else:
            assert answer.get("status", status) == status, answer
            assert answer.get("message", "x") != "", answer
        assert await written(db, ti_id) == before

    await each_case(NOT_APPLIED, check)


# ---- omitted optional fields never overwrite ------------------------------------------------


async def test_omitted_fields_never_overwrite_stored_values(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1)
    ti_id = await live_ti(client, wf["task_ids"][0])
    await instantiate(client, [ti_id])
    await launch(client, ti_id, distributor_id="d1")
    await running(client, ti_id, nodename="n1")
    assert await heartbeat(client, ti_id, stdout="/o", stderr="/e", distributor_id="d2") == "R"
    assert await heartbeat(client, ti_id) == "R"  # nothing optional
    row = await ti_row(db, ti_id)
    assert (row["nodename"], row["distributor_id"], row["stdout"], row["stderr"],
            row["process_group_id"]) == ("n1", "d2", "/o", "/e", "42")
    assert await done(client, ti_id, stdout_log="tail") == "D"
    row = await ti_row(db, ti_id)
    assert (row["nodename"], row["distributor_id"], row["stdout"], row["stderr"],
            row["stdout_log"], row["stderr_log"], row["process_group_id"]) == (
        "n1", "d2", "/o", "/e", "tail", None, "42")


async def test_error_reports_keep_omitted_fields(client: httpx.AsyncClient, db: Database) -> None:
    _, _, ti_id = await running_task(client)
    await heartbeat(client, ti_id, stdout="/o", stderr="/e", distributor_id="j9")
    await ok(client.post(f"{FSM}/task_instance/{ti_id}/log_known_error",
                         json={"error_state": "U", "error_message": "gone"}))
    row = await ti_row(db, ti_id)
    assert (row["status"], row["stdout"], row["stderr"], row["distributor_id"]) == (
        "U", "/o", "/e", "j9")


async def test_a_worker_error_without_extras_keeps_them(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, _, ti_id = await running_task(client)
    await heartbeat(client, ti_id, stdout="/o", stderr="/e")
    assert await error(client, ti_id, "E", "bad") == "E"
    row = await ti_row(db, ti_id)
    assert (row["stdout"], row["stderr"], row["nodename"]) == ("/o", "/e", None)


async def test_a_heartbeat_for_a_finished_instance_writes_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    """Jobmon moves report_by and NULLs omitted fields even on a DONE instance; not here."""
    _, _, ti_id = await running_task(client)
    await heartbeat(client, ti_id, stdout="/o")
    assert await done(client, ti_id) == "D"
    before = await written(db, ti_id)
    assert await heartbeat(client, ti_id, 5000, stderr="/e") == "D"
    assert await written(db, ti_id) == before


# ---- orphans: an instance of a settled task ends ERROR_FATAL, the task untouched ------------


ORPHAN_REPORTS: dict[str, tuple[str, dict[str, Any]]] = {
    "done": ("log_done", {}),
    "error": ("log_error_worker_node", {"error_state": "E", "error_description": "late"}),
    "resource": ("log_error_worker_node", {"error_state": "Z", "error_description": "late"}),
    "unknown": ("log_known_error", {"error_state": "U", "error_message": "late"}),
}


async def test_an_orphan_ends_error_fatal(client: httpx.AsyncClient, db: Database) -> None:
    async def check(task_status: str, route: str, body: dict[str, Any]) -> None:
        _, task_id, ti_id = await running_task(client)
        await set_task_status(db, task_id, task_status)
        task_before = await task_row(db, task_id)
        instances = len(await instances_of(db, task_id))
        resp = await ok(client.post(f"{FSM}/task_instance/{ti_id}/{route}", json=body))
        if "status" in resp:
            assert resp["status"] == "F", resp
        assert (await ti_row(db, ti_id))["status"] == "F"
        # the task is not moved (the orphan's end is counted among its failed tries: the
        # instance ends ERROR_FATAL whatever it reported)
        task_after = await task_row(db, task_id)
        assert task_after.pop("failures") == task_before.pop("failures") + 1
        assert task_after == task_before
        assert len(await instances_of(db, task_id)) == instances

    cases = {f"{name} with task {ts}": (ts, *case)
             for name, case in ORPHAN_REPORTS.items() for ts in ("D", "F")}
    await each_case(cases, check)


# ---- KILL_SELF ------------------------------------------------------------------------------


async def test_kill_self_heartbeat_says_stop_then_fatal(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, task_id, ti_id = await running_task(client)
    await set_ti_status(db, ti_id, "K")
    assert await heartbeat(client, ti_id) == "K"
    assert await error(client, ti_id, "F", "killed by the server") == "F"
    assert (await ti_row(db, ti_id))["status"] == "F"
    t = await task_row(db, task_id)
    assert t["status"] == "F"
    assert not [i for i in await instances_of(db, task_id) if i["status"] in LIVE]
    assert await _error_rows(db, ti_id) == ["killed by the server"]


async def test_kill_self_may_still_finish(client: httpx.AsyncClient, db: Database) -> None:
    _, task_id, ti_id = await running_task(client)
    await set_ti_status(db, ti_id, "K")
    assert await done(client, ti_id) == "D"
    assert (await task_row(db, task_id))["status"] == "D"


async def test_kill_self_log_running_ends_fatal(client: httpx.AsyncClient, db: Database) -> None:
    wf = await submit(client, 1)
    ti_id = await live_ti(client, wf["task_ids"][0])
    await instantiate(client, [ti_id])
    await launch(client, ti_id)
    await set_ti_status(db, ti_id, "K")
    assert (await running(client, ti_id))[1] == "F"
    assert (await ti_row(db, ti_id))["status"] == "F"


@pytest.mark.parametrize("report", ["E", "U", "Z"])
async def test_kill_self_error_reports_end_fatal(
    client: httpx.AsyncClient, db: Database, report: str
) -> None:
    _, task_id, ti_id = await running_task(client)
    await set_ti_status(db, ti_id, "K")
    assert await error(client, ti_id, report, "stopped") == "F"
    assert len(await instances_of(db, task_id)) == 1  # no retry of a killed instance


# ---- NO_HEARTBEAT: a worker that starts late gets its instance retried ----------------------


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("log_running", {"next_report_increment": INC}),
        ("log_known_error", {"error_state": "E", "error_message": "never reported"}),
        ("log_known_error", {"error_state": "U", "error_message": "never reported"}),
    ],
)
async def test_no_heartbeat_then_a_late_report_retries(
    client: httpx.AsyncClient, db: Database, route: str, body: dict[str, Any]
) -> None:
    wf = await submit(client, 1)
    task_id = wf["task_ids"][0]
    ti_id = await live_ti(client, task_id)
    await instantiate(client, [ti_id])
    await launch(client, ti_id)
    await set_ti_status(db, ti_id, "X")
    answer = await ok(client.post(f"{FSM}/task_instance/{ti_id}/{route}", json=body))
    if route == "log_running":
        assert answer["task_instance"][1] == "E"  # the worker must not run it
    assert (await ti_row(db, ti_id))["status"] == "E"
    t = await task_row(db, task_id)
    assert (t["status"], t["num_attempts"]) == ("Q", 2)
    assert await heartbeat(client, ti_id) == "E"


# ---- at most one live instance per task -----------------------------------------------------


async def test_the_database_refuses_a_second_live_instance(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1)
    task_id = wf["task_ids"][0]
    first = (await instances_of(db, task_id))[0]
    insert = (
        "INSERT INTO task_instance (task_id, workflow_id, array_id, array_batch_num, "
        "array_step_id, status, status_date) VALUES (:t, :w, :a, 99, :step, :s, :d)"
    )
    params = {"t": task_id, "w": wf["id"], "a": first["array_id"], "d": first["status_date"]}
    for n, status in enumerate(LIVE):
        with pytest.raises(IntegrityError):
            await sql_exec(db, insert, step=n, s=status, **params)
    # a terminal instance beside the live one is fine: the index is partial
    assert await sql_exec(db, insert, step=50, s="E", **params) == 1


async def test_one_live_instance_through_every_retry(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf, task_id, ti_id = await running_task(client, max_attempts=3)
    for attempt in (1, 2, 3):
        t = await task_row(db, task_id)
        assert t["num_attempts"] == attempt
        rows = await instances_of(db, task_id)
        assert len(rows) == attempt
        assert [r["id"] for r in rows if r["status"] in LIVE] == [ti_id]
        assert await error(client, ti_id, "E", f"try {attempt}") == "E"
        if attempt < 3:
            ti_id = await live_ti(client, task_id)
            await running(client, ti_id)
    rows = await instances_of(db, task_id)
    assert [r["status"] for r in rows] == ["E", "E", "E"]
    t = await task_row(db, task_id)
    assert (t["status"], t["num_attempts"]) == ("F", 3)
    summary = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert (summary["status"], summary["counts"]) == ("F", {"F": 1})


# ---- retries --------------------------------------------------------------------------------


async def test_an_error_with_tries_left_queues_a_new_instance(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 3, resources={"memory": 4, "runtime": 100})
    task_id = wf["task_ids"][1]
    ti_id = await live_ti(client, task_id)
    old = await ti_row(db, ti_id)
    await instantiate(client, [ti_id])
    await launch(client, ti_id)
    await running(client, ti_id)
    assert await error(client, ti_id, "E", "exit 2") == "E"
    t = await task_row(db, task_id)
    assert (t["status"], t["num_attempts"], t["last_error"]) == ("Q", 2, "exit 2")
    new = [r for r in await instances_of(db, task_id) if r["id"] != ti_id]
    assert len(new) == 1
    new_ti = new[0]
    assert new_ti["status"] == "Q" and new_ti["array_id"] == old["array_id"]
    assert new_ti["array_batch_num"] == 2 and new_ti["array_step_id"] == 0
    assert new_ti["resources"] == {"memory": 4, "runtime": 100}  # not a resource error
    batches = await instantiate(client, [new_ti["id"]])
    assert [(b[0], b[2], b[4]) for b in batches] == [(old["array_id"], 2, [new_ti["id"]])]
    lookup = await ok(client.get(f"{FSM}/get_array_task_instance_id/{old['array_id']}/2/0"))
    assert lookup == {"task_instance_id": new_ti["id"]}


async def test_retries_of_one_array_take_distinct_batches(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 3)
    tis = [await live_ti(client, t) for t in wf["task_ids"]]
    for ti_id in tis:
        await running(client, ti_id)
        await error(client, ti_id, "E", "x")
    retries = [await ti_row(db, await live_ti(client, t)) for t in wf["task_ids"]]
    assert sorted(r["array_batch_num"] for r in retries) == [2, 3, 4]


@pytest.mark.parametrize("route", ["log_error_worker_node", "log_known_error"])
async def test_a_resource_error_scales_the_retry(
    client: httpx.AsyncClient, db: Database, route: str
) -> None:
    resources = {"memory": 4, "runtime": 3600, "cores": 2, "queue": "all.q"}
    _, task_id, ti_id = await running_task(client, resources=resources)
    body = ({"error_state": "Z", "error_description": "oom"} if route == "log_error_worker_node"
            else {"error_state": "Z", "error_message": "oom"})
    await ok(client.post(f"{FSM}/task_instance/{ti_id}/{route}", json=body))
    new_id = await live_ti(client, task_id)
    assert (await ti_row(db, new_id))["resources"] == {
        "memory": 6, "runtime": 5400, "cores": 2, "queue": "all.q"}
    # a second resource error scales again, from the retry's resources
    await running(client, new_id)
    await error(client, new_id, "Z", "oom again")
    third = await live_ti(client, task_id)
    assert (await ti_row(db, third))["resources"] == {
        "memory": 9, "runtime": 8100, "cores": 2, "queue": "all.q"}
    assert (await task_row(db, task_id))["num_attempts"] == 3


async def test_resource_scales_of_the_workflow_apply(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, task_id, ti_id = await running_task(
        client, resources={"memory": 2.5, "runtime": 10}, resource_scales={"memory": 2.0})
    await error(client, ti_id, "Z", "oom")
    new = await ti_row(db, await live_ti(client, task_id))
    assert new["resources"] == {"memory": 5.0, "runtime": 10}


async def test_tries_used_up_is_fatal(client: httpx.AsyncClient, db: Database) -> None:
    wf, task_id, ti_id = await running_task(client, max_attempts=1)
    assert await error(client, ti_id, "Z", "oom") == "Z"
    t = await task_row(db, task_id)
    assert (t["status"], t["num_attempts"]) == ("F", 1)
    assert t["time_finished"] is not None
    assert len(await instances_of(db, task_id)) == 1
    summary = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert (summary["status"], summary["percent_done"]) == ("F", 0.0)


# ---- events: one per applied move -----------------------------------------------------------


async def test_every_applied_transition_has_its_events(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1, resources={"memory": 1})
    task_id = wf["task_ids"][0]
    ti1 = await live_ti(client, task_id)
    await instantiate(client, [ti1])
    await launch(client, ti1)
    await running(client, ti1)
    await running(client, ti1)  # repeated: no event
    await heartbeat(client, ti1)  # a plain heartbeat moves nothing: no event
    await error(client, ti1, "Z", "oom")
    ti2 = await live_ti(client, task_id)
    await running(client, ti2)  # from QUEUED
    await error(client, ti2, "E", "exit 1")
    await error(client, ti2, "E", "exit 1")  # repeated: no event
    ti3 = await live_ti(client, task_id)
    await running(client, ti3)
    await set_ti_status(db, ti3, "T")  # setup: no event
    await heartbeat(client, ti3)  # T -> R
    await done(client, ti3)
    await done(client, ti3)  # repeated: no event
    evs = await events(client, wf["id"])
    assert moves(evs, "task_instance", ti1) == [
        (None, "Q"), ("Q", "I"), ("I", "O"), ("O", "R"), ("R", "Z")  # queued at submission
    ]
    assert moves(evs, "task_instance", ti2) == [(None, "Q"), ("Q", "R"), ("R", "E")]
    assert moves(evs, "task_instance", ti3) == [(None, "Q"), ("Q", "R"), ("T", "R"),
                                                ("R", "D")]
    assert moves(evs, "task", task_id) == [
        ("Q", "I"), ("I", "O"), ("O", "R"),  # first try
        ("R", "E"), ("E", "A"), ("A", "Q"),  # resource error, retried
        ("Q", "I"), ("I", "R"),  # second try started by hand
        ("R", "E"), ("E", "Q"),  # error, retried
        ("Q", "I"), ("I", "R"),  # third try
        ("R", "D"),
    ]
    ids = [e["id"] for e in evs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e["workflow_id"] == wf["id"] for e in evs)
