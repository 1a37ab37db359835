"""Every worker-node and distributor route, under /v3/fsm and (Jobmon's mount) /api/v3."""

import asyncio
from datetime import datetime

import httpx
import pytest
from factories import (
    FSM,
    INC,
    PREFIXES,
    done,
    error,
    events,
    heartbeat,
    instantiate,
    launch,
    live_ti,
    ok,
    running,
    running_task,
    seconds_to_deadline,
    set_ti_status,
    sql_scalar,
    submit,
    submit_array,
    task,
    task_row,
    ti_row,
    to_running,
)

from farmstead.db.engine import Database
from farmstead.fsm import tables_as_json
from helpers import assert_consistent

API = "/api/v3"  # the mount Jobmon's own clients use
BOTH = pytest.mark.parametrize("prefix", PREFIXES)


@BOTH
async def test_log_running_answers_jobmons_nine_tuple(
    client: httpx.AsyncClient, db: Database, prefix: str
) -> None:
    wf = await submit(client, 1, resources={"stdout": "/logs/out", "stderr": "/logs/err",
                                            "memory": 2})
    task_id = wf["task_ids"][0]
    ti_id = await live_ti(client, task_id)
    await instantiate(client, [ti_id], prefix)
    await launch(client, ti_id, prefix)
    resp = await client.post(
        f"{prefix}/task_instance/{ti_id}/log_running",
        params={"client_jobmon_version": "3.4.8"},
        json={"process_group_id": 1234, "next_report_increment": 279.0,
              "nodename": "node1.cluster", "distributor_id": "77_0"},
    )
    body = await ok(resp)
    assert body["task_instance"] == [ti_id, "R", wf["id"], task_id, "t0", "echo 0", wf["id"],
                                     "/logs/out", "/logs/err"]
    if "resources" in body:  # farmstead's addition: the instance's own resources
        assert body["resources"] == {"stdout": "/logs/out", "stderr": "/logs/err", "memory": 2}
    row = await ti_row(db, ti_id)
    assert (row["status"], row["nodename"], row["process_group_id"], row["distributor_id"]) == (
        "R", "node1.cluster", "1234", "77_0")
    assert 250 < await seconds_to_deadline(db, ti_id) <= 280
    assert (await task_row(db, task_id))["status"] == "R"


async def test_log_running_without_log_dirs_answers_nulls(
    client: httpx.AsyncClient, prefix: str = API
) -> None:
    wf = await submit(client, 1)
    ti_id = await live_ti(client, wf["task_ids"][0])
    await instantiate(client, [ti_id], prefix)
    await launch(client, ti_id, prefix)
    tup = await running(client, ti_id, prefix)
    assert tup[1] == "R" and tup[7:] == [None, None]


@BOTH
async def test_log_report_by_extends_a_running_deadline(
    client: httpx.AsyncClient, db: Database, prefix: str
) -> None:
    _, _, ti_id = await running_task(client)
    assert await heartbeat(client, ti_id, 3600, prefix, stdout="/o", stderr="/e") == "R"
    assert 3500 < await seconds_to_deadline(db, ti_id) <= 3600
    row = await ti_row(db, ti_id)
    assert (row["stdout"], row["stderr"]) == ("/o", "/e")


async def test_log_report_by_on_a_queued_instance_answers_its_status(
    client: httpx.AsyncClient, db: Database, prefix: str = API
) -> None:
    wf = await submit(client, 1)
    ti_id = await live_ti(client, wf["task_ids"][0])
    assert await heartbeat(client, ti_id, 60, prefix) == "Q"
    assert (await ti_row(db, ti_id))["report_by_date"] is None


async def test_log_report_by_batch_extends_launched_and_running_only(
    client: httpx.AsyncClient, db: Database, prefix: str = API
) -> None:
    wf = await submit(client, 4)
    tis = [await live_ti(client, t) for t in wf["task_ids"]]
    await instantiate(client, tis[:3])
    await launch(client, tis[0], inc=5)
    await launch(client, tis[1], inc=5)
    await running(client, tis[1], inc=5)
    # tis[2] stays INSTANTIATED, tis[3] stays QUEUED: neither is touched
    body = await ok(client.post(f"{prefix}/task_instance/log_report_by/batch",
                                json={"next_report_increment": 1000,
                                      "task_instance_ids": [*tis, 999_999]}))
    assert body == {"updated": 2}
    for ti_id in tis[:2]:
        assert 900 < await seconds_to_deadline(db, ti_id) <= 1000
    for ti_id in tis[2:]:
        assert (await ti_row(db, ti_id))["report_by_date"] is None
    empty = await ok(client.post(f"{prefix}/task_instance/log_report_by/batch",
                                 json={"next_report_increment": 10, "task_instance_ids": []}))
    assert empty == {"updated": 0}


async def test_a_finished_instance_keeps_the_deadline_its_last_heartbeat_set(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 2)
    tis = [await live_ti(client, t) for t in wf["task_ids"]]
    await instantiate(client, tis)
    for ti_id in tis:
        await launch(client, ti_id, inc=5)
    await running(client, tis[0], inc=5)
    await ok(client.post(f"{FSM}/task_instance/log_report_by/batch",
                         json={"next_report_increment": 1000, "task_instance_ids": tis}))
    extended = {ti_id: (await ti_row(db, ti_id))["report_by_date"] for ti_id in tis}
    assert await done(client, tis[0]) == "D"
    for ti_id in tis:  # the deadline as the heartbeat left it: a record, or still live
        assert (await ti_row(db, ti_id))["report_by_date"] == extended[ti_id]
    live = await sql_scalar(db, "SELECT task_instance_id FROM task_instance_deadline")
    assert live == tis[1]  # only the LAUNCHED one still has a deadline row
    await assert_consistent(db)


async def test_log_done_finishes_instance_and_task(
    client: httpx.AsyncClient, db: Database, prefix: str = FSM
) -> None:
    wf, task_id, ti_id = await running_task(client)
    resp = await client.post(f"{prefix}/task_instance/{ti_id}/log_done",
                             json={"stdout_log": "all good", "nodename": "n2", "wallclock": 1.5,
                                   "maxrss": 1024})
    assert await ok(resp) == {"status": "D"}
    row = await ti_row(db, ti_id)
    assert (row["status"], row["stdout_log"], row["nodename"], row["wallclock"],
            row["maxrss"]) == ("D", "all good", "n2", 1.5, 1024)
    t = await task_row(db, task_id)
    assert (t["status"], t["progress"]) == ("D", 100.0)
    assert t["time_finished"] is not None and t["time_started"] is not None
    summary = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert (summary["status"], summary["percent_done"]) == ("D", 100.0)


@BOTH
async def test_log_error_worker_node_and_error_log(
    client: httpx.AsyncClient, db: Database, prefix: str
) -> None:
    _, task_id, ti_id = await running_task(client)
    assert await error(client, ti_id, "E", "exit code 3", prefix, stderr_log="trace") == "E"
    row = await ti_row(db, ti_id)
    assert (row["status"], row["stderr_log"]) == ("E", "trace")
    assert (await task_row(db, task_id))["last_error"] == "exit code 3"
    log = await ok(client.get(f"{prefix}/task_instance/{ti_id}/task_instance_error_log"))
    entries = log["task_instance_error_log"]
    assert len(entries) == 1
    entry_id, when, description = entries[0]
    assert isinstance(entry_id, int) and description == "exit code 3"
    assert datetime.fromisoformat(when)
    other = await live_ti(client, task_id)  # the retry: no errors yet
    assert await ok(client.get(f"{prefix}/task_instance/{other}/task_instance_error_log")) == {
        "task_instance_error_log": []}


@BOTH
async def test_get_array_task_instance_id_steps_from_zero(
    client: httpx.AsyncClient, prefix: str
) -> None:
    wf = await submit_array(client, 1, 3)
    array_id = wf["array_ids"][0]
    ids = await ok(client.get(f"/v3/workflows/{wf['id']}/tasks"))
    expected = [await live_ti(client, t["id"]) for t in ids["data"]]
    got = [
        (await ok(client.get(f"{prefix}/get_array_task_instance_id/{array_id}/1/{step}"))
         )["task_instance_id"]
        for step in range(3)
    ]
    assert got == expected
    for path in (f"{array_id}/1/3", f"{array_id}/2/0", f"{array_id + 1000}/1/0"):
        resp = await client.get(f"{prefix}/get_array_task_instance_id/{path}")
        assert resp.status_code == 404, resp.text
        assert "detail" in resp.json()


async def test_log_distributor_id_launches_once(
    client: httpx.AsyncClient, db: Database, prefix: str = API
) -> None:
    wf = await submit(client, 1)
    task_id = wf["task_ids"][0]
    ti_id = await live_ti(client, task_id)
    await instantiate(client, [ti_id], prefix)
    first = await launch(client, ti_id, prefix, distributor_id="1234", inc=600)
    assert first == {"message": "Task instance transitioned to LAUNCHED"}
    row = await ti_row(db, ti_id)
    assert (row["status"], row["distributor_id"]) == ("O", "1234")
    assert row["submitted_date"] is not None
    assert 500 < await seconds_to_deadline(db, ti_id) <= 600
    assert (await task_row(db, task_id))["status"] == "O"
    again = await launch(client, ti_id, prefix, distributor_id="1234", inc=600)
    assert again == {"message": "already LAUNCHED"}
    await running(client, ti_id)
    late = await launch(client, ti_id, prefix, distributor_id="1234")
    assert "RUNNING" in late["message"]
    assert (await ti_row(db, ti_id))["status"] == "R"


async def test_log_no_distributor_id_retries_the_task(
    client: httpx.AsyncClient, db: Database, prefix: str = API
) -> None:
    wf = await submit(client, 1)
    task_id = wf["task_ids"][0]
    ti_id = await live_ti(client, task_id)
    await instantiate(client, [ti_id], prefix)
    resp = await client.post(f"{prefix}/task_instance/{ti_id}/log_no_distributor_id",
                             json={"no_id_err_msg": "sbatch: error"})
    assert await ok(resp) == {"message": ""}
    assert (await ti_row(db, ti_id))["status"] == "W"
    t = await task_row(db, task_id)
    assert (t["status"], t["num_attempts"]) == ("Q", 2)
    log = await ok(client.get(f"{prefix}/task_instance/{ti_id}/task_instance_error_log"))
    assert [e[2] for e in log["task_instance_error_log"]] == ["sbatch: error"]


async def test_log_known_error(client: httpx.AsyncClient, db: Database, prefix: str = API) -> None:
    wf = await submit(client, 1)
    task_id = wf["task_ids"][0]
    ti_id = await live_ti(client, task_id)
    await instantiate(client, [ti_id])
    await launch(client, ti_id)
    resp = await client.post(
        f"{prefix}/task_instance/{ti_id}/log_known_error",
        json={"error_state": "Z", "error_message": "OOM killed", "nodename": "n7",
              "distributor_id": "99"},
    )
    assert await ok(resp) == {"message": ""}
    row = await ti_row(db, ti_id)
    assert (row["status"], row["nodename"], row["distributor_id"]) == ("Z", "n7", "99")
    assert (await task_row(db, task_id))["status"] == "Q"
    log = await ok(client.get(f"{prefix}/task_instance/{ti_id}/task_instance_error_log"))
    assert [e[2] for e in log["task_instance_error_log"]] == ["OOM killed"]


@BOTH
async def test_log_unknown_error_waits_for_the_deadline(
    client: httpx.AsyncClient, db: Database, prefix: str
) -> None:
    _, task_id, ti_id = await running_task(client)
    body = {"error_state": "U", "error_message": "lost"}
    url = f"{prefix}/task_instance/{ti_id}/log_unknown_error"
    fresh = await ok(client.post(url, json=body))
    assert fresh["message"] and "deadline" in fresh["message"]
    assert (await ti_row(db, ti_id))["status"] == "R"
    assert await sql_scalar(db, "SELECT count(*) FROM task_instance_error_log") == 0
    assert await heartbeat(client, ti_id, 0.05) == "R"
    await asyncio.sleep(0.3)
    assert await ok(client.post(url, json=body)) == {"message": ""}
    assert (await ti_row(db, ti_id))["status"] == "U"
    assert (await task_row(db, task_id))["status"] == "Q"
    log = await ok(client.get(f"{prefix}/task_instance/{ti_id}/task_instance_error_log"))
    assert [e[2] for e in log["task_instance_error_log"]] == ["lost"]


@BOTH
async def test_instantiate_answers_batches(
    client: httpx.AsyncClient, db: Database, prefix: str
) -> None:
    wf = await submit_array(client, 0, 2, name="job_{i}")
    array_id = wf["array_ids"][0]
    tasks = (await ok(client.get(f"/v3/workflows/{wf['id']}/tasks")))["data"]
    tis = [await live_ti(client, t["id"]) for t in tasks]
    # the third task's first instance fails before instantiation: its retry is in batch 2
    await instantiate(client, [tis[2]])
    await client.post(f"{FSM}/task_instance/{tis[2]}/log_no_distributor_id", json={})
    retry = await live_ti(client, tasks[2]["id"])
    batches = await instantiate(client, [tis[1], tis[0], retry, 999_999], prefix)
    assert batches == [[array_id, "job_{i}", 1, None, sorted(tis[:2])],
                       [array_id, "job_{i}", 2, None, [retry]]]
    for t in tasks:
        assert (await task_row(db, t["id"]))["status"] == "I"
    # instantiating again moves nothing
    assert await instantiate(client, [tis[0], tis[1], retry], prefix) == []


@BOTH
async def test_array_launch_kill_and_distributor_ids(
    client: httpx.AsyncClient, db: Database, prefix: str
) -> None:
    wf = await submit_array(client, 0, 3)
    array_id = wf["array_ids"][0]
    tasks = (await ok(client.get(f"/v3/workflows/{wf['id']}/tasks")))["data"]
    tis = [await live_ti(client, t["id"]) for t in tasks]
    await instantiate(client, tis[:3])
    launched = await ok(client.post(f"{prefix}/array/{array_id}/transition_to_launched",
                                    json={"batch_number": 1, "next_report_increment": 500}))
    assert launched == {"launched": 3}
    for ti_id in tis[:3]:
        row = await ti_row(db, ti_id)
        assert row["status"] == "O" and row["submitted_date"] is not None
        assert 400 < await seconds_to_deadline(db, ti_id) <= 500
    assert (await ti_row(db, tis[3]))["status"] == "Q"  # not instantiated: not launched
    mapping = {str(ti_id): f"555_{n}" for n, ti_id in enumerate(tis[:3])}
    assert await ok(client.post(f"{prefix}/array/{array_id}/log_distributor_id",
                                json=mapping)) == {"success": True}
    for n, ti_id in enumerate(tis[:3]):
        assert (await ti_row(db, ti_id))["distributor_id"] == f"555_{n}"
    # two instances are told to stop; the distributor then kills the batch
    await running(client, tis[0])
    await set_ti_status(db, tis[0], "K")
    await set_ti_status(db, tis[1], "K")
    killed = await ok(client.post(f"{prefix}/array/{array_id}/transition_to_killed",
                                  json={"batch_number": 1}))
    assert killed == {"killed": 2}
    for ti_id, t in zip(tis[:2], tasks[:2], strict=True):
        assert (await ti_row(db, ti_id))["status"] == "F"
        assert (await task_row(db, t["id"]))["status"] == "F"
    assert (await ti_row(db, tis[2]))["status"] == "O"
    again = await ok(client.post(f"{prefix}/array/{array_id}/transition_to_killed",
                                 json={"batch_number": 1}))
    assert again == {"killed": 0}


@BOTH
async def test_cluster_lookup(client: httpx.AsyncClient, prefix: str) -> None:
    body = await ok(client.get(f"{prefix}/cluster/local"))
    cluster_id, name, kind, params = body["cluster"]
    assert (name, kind, params) == ("local", "multiprocess", None) and cluster_id >= 1
    assert await ok(client.get(f"{prefix}/cluster/nowhere")) == {"cluster": None}


async def test_transitions_table_is_served(client: httpx.AsyncClient) -> None:
    body = await ok(client.get("/v3/fsm/transitions"))
    assert body == tables_as_json()
    assert "R" in body["task_instance"]["valid"]["T"]
    assert body["task_instance"]["valid"]["D"] == []
    assert set(body["task"]["statuses"]) == set("GQIORDEAFHB")
    taskfarm = body["vocabularies"]["taskfarm"]
    assert set(taskfarm) == set("GQIORDEAFHB")  # every status has a word
    assert (taskfarm["Q"], taskfarm["R"], taskfarm["D"]) == ("waiting", "computing", "done")


@BOTH
async def test_every_route_appears_under_both_prefixes(
    client: httpx.AsyncClient, prefix: str
) -> None:
    spec = await ok(client.get("/openapi.json"))
    paths = {p.removeprefix(prefix) for p in spec["paths"] if p.startswith(prefix + "/")}
    for route in [
        "/task_instance/{task_instance_id}/log_running",
        "/task_instance/{task_instance_id}/log_report_by",
        "/task_instance/log_report_by/batch",
        "/task_instance/{task_instance_id}/log_done",
        "/task_instance/{task_instance_id}/log_error_worker_node",
        "/task_instance/{task_instance_id}/task_instance_error_log",
        "/get_array_task_instance_id/{array_id}/{batch_num}/{step_id}",
        "/task_instance/{task_instance_id}/log_distributor_id",
        "/task_instance/{task_instance_id}/log_no_distributor_id",
        "/task_instance/{task_instance_id}/log_known_error",
        "/task_instance/{task_instance_id}/log_unknown_error",
        "/task_instance/instantiate_task_instances",
        "/array/{array_id}/transition_to_launched",
        "/array/{array_id}/transition_to_killed",
        "/array/{array_id}/log_distributor_id",
        "/cluster/{cluster_name}",
    ]:
        assert route in paths, route


@BOTH
async def test_a_whole_try_through_the_routes(
    client: httpx.AsyncClient, prefix: str
) -> None:
    """One instance Q -> I -> O -> R -> D through `prefix` only, read back through /v3."""
    wf = await submit(client, 1)
    task_id = wf["task_ids"][0]
    ti_id = await live_ti(client, task_id)
    await instantiate(client, [ti_id], prefix)
    await launch(client, ti_id, prefix)
    await running(client, ti_id, prefix)
    assert await heartbeat(client, ti_id, INC, prefix) == "R"
    # Jobmon's client sends fields farmstead does not know: they are ignored, not refused
    resp = await client.post(f"{prefix}/task_instance/{ti_id}/log_done",
                             params={"client_jobmon_version": "3.4.8"},
                             json={"usage_str": "x", "exec_time": 3, "nodename": "n"})
    assert (await ok(resp))["status"] == "D"
    detail = await task(client, task_id)
    assert detail["status"] == "D" and [i["status"] for i in detail["instances"]] == ["D"]
    moves = [(e["entity"], e["from_status"], e["to_status"]) for e in await events(client, wf["id"])
             if e["entity"] != "workflow"]
    assert moves == [
        ("task_instance", None, "Q"),  # queued at submission (task-sent)
        ("task_instance", "Q", "I"), ("task", "Q", "I"),
        ("task_instance", "I", "O"), ("task", "I", "O"),
        ("task_instance", "O", "R"), ("task", "O", "R"),
        ("task_instance", "R", "D"), ("task", "R", "D"),
    ]


async def test_log_running_from_queued_walks_the_task(client: httpx.AsyncClient, db: Database,
                                                    prefix: str = FSM) -> None:
    """Q straight to R (a worker started by hand): the task walks Q -> I -> R."""
    wf = await submit(client, 2)
    t0, t1 = wf["task_ids"]
    ti0 = await live_ti(client, t0)
    assert (await running(client, ti0, prefix))[1] == "R"
    assert (await task_row(db, t0))["status"] == "R"
    ti1 = await live_ti(client, t1)
    await to_running(client, ti1)
    assert (await task_row(db, t1))["status"] == "R"
