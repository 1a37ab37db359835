"""Submission of workflows (tasks one by one, or an array over a range) and reading them back."""

import asyncio
from typing import Any

import httpx
from factories import (
    FSM,
    app_client,
    done,
    each_case,
    error,
    instances_of,
    live_ti,
    ok,
    running,
    sql_rows,
    submit,
    submit_array,
    task,
    task_ids,
)

from farmstead.db.engine import Database
from farmstead.settings import Settings


async def _layout(db: Database, wf_id: int) -> list[dict[str, Any]]:
    """Every task of a workflow with its instance's status, batch and step, by task id."""
    return await sql_rows(
        db,
        "SELECT t.id AS task_id, t.name, t.command, t.status AS task_status, t.num_attempts, "
        "t.max_attempts, t.array_id AS task_array, i.id AS ti_id, i.status, i.array_id, "
        "i.array_batch_num AS batch, i.array_step_id AS step FROM task t "
        "JOIN task_instance i ON i.task_id = t.id WHERE t.workflow_id = :w ORDER BY t.id, i.id",
        w=wf_id,
    )


async def test_tasks_one_by_one(client: httpx.AsyncClient, db: Database) -> None:
    body = {
        "name": "listed",
        "max_attempts": 2,
        "resources": {"memory": 1, "stdout": "/out"},
        "tasks": [
            {"name": "prep", "command": "prep.sh"},
            {"name": "fit", "command": "fit.py --x 1", "max_attempts": 5,
             "resources": {"memory": 8}},
            {"name": "plot", "command": "plot.R", "priority": 3},
        ],
    }
    wf = await ok(client.post("/v3/workflows", json=body), 201)
    assert (wf["name"], wf["status"], wf["total"], wf["counts"], wf["percent_done"]) == (
        "listed", "R", 3, {"Q": 3}, 0.0)
    assert len(wf["array_ids"]) == 1
    rows = await _layout(db, wf["id"])
    assert [(r["name"], r["command"]) for r in rows] == [
        ("prep", "prep.sh"), ("fit", "fit.py --x 1"), ("plot", "plot.R")]
    assert [r["max_attempts"] for r in rows] == [2, 5, 2]
    assert all(r["task_status"] == "Q" and r["status"] == "Q" and r["num_attempts"] == 1
               for r in rows)
    assert [(r["batch"], r["step"]) for r in rows] == [(1, 0), (1, 1), (1, 2)]
    assert {r["array_id"] for r in rows} == {r["task_array"] for r in rows} == set(wf["array_ids"])
    fit = await task(client, rows[1]["task_id"])
    assert fit["resources"] == {"memory": 8}
    assert fit["instances"][0]["resources"] == {"memory": 8}
    prep = await task(client, rows[0]["task_id"])
    assert prep["resources"] == {"memory": 1, "stdout": "/out"}
    assert (await task(client, rows[2]["task_id"]))["priority"] == 3


async def test_an_array_over_a_range(client: httpx.AsyncClient, db: Database) -> None:
    wf = await submit_array(client, 5, 9, command="run.sh --n {i} --out o_{i}.csv", name="x_{i}")
    assert (wf["total"], wf["counts"]) == (5, {"Q": 5})
    rows = await _layout(db, wf["id"])
    assert [(r["name"], r["command"]) for r in rows] == [
        (f"x_{i}", f"run.sh --n {i} --out o_{i}.csv") for i in range(5, 10)]
    assert [(r["batch"], r["step"], r["status"]) for r in rows] == [
        (1, s, "Q") for s in range(5)]
    one = await submit_array(client, -2, -2, command="echo {i}")
    assert [(r["command"], r["step"]) for r in await _layout(db, one["id"])] == [("echo -2", 0)]


async def test_batches_follow_array_batch_size(db_url: str, db: Database) -> None:
    settings = Settings(database_url=db_url, array_batch_size=3, reconciler_enabled=False)
    async with app_client(settings) as client:
        wf = await submit_array(client, 0, 7)
        rows = await _layout(db, wf["id"])
        assert [(r["batch"], r["step"]) for r in rows] == [
            (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1)]
        array_id = wf["array_ids"][0]
        for r in rows:
            got = await ok(client.get(
                f"{FSM}/get_array_task_instance_id/{array_id}/{r['batch']}/{r['step']}"))
            assert got == {"task_instance_id": r["ti_id"]}
        # a retry takes the next batch number after the submitted ones
        ti = rows[4]["ti_id"]
        await running(client, ti)
        await error(client, ti, "E", "x")
        retry = next(i for i in await instances_of(db, rows[4]["task_id"]) if i["id"] != ti)
        assert (retry["array_batch_num"], retry["array_step_id"]) == (4, 0)


async def test_counts_and_percent_done(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 4, max_attempts=1)
    t = wf["task_ids"]
    await running(client, await live_ti(client, t[0]))
    await done(client, await live_ti(client, t[0]))
    got = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert (got["counts"], got["percent_done"], got["status"]) == ({"D": 1, "Q": 3}, 25.0, "R")
    ti = await live_ti(client, t[1])
    await running(client, ti)
    await error(client, ti, "E", "x")
    got = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert (got["counts"], got["percent_done"], got["status"]) == (
        {"D": 1, "F": 1, "Q": 2}, 25.0, "R")
    for task_id in t[2:]:
        ti = await live_ti(client, task_id)
        await running(client, ti)
        await done(client, ti)
    got = await ok(client.get(f"/v3/workflows/{wf['id']}"))
    assert (got["counts"], got["percent_done"], got["status"], got["status_name"]) == (
        {"D": 3, "F": 1}, 75.0, "F", "FAILED")
    listed = await ok(client.get("/v3/workflows"))
    assert listed["data"][0]["id"] == wf["id"] and listed["data"][0]["percent_done"] == 75.0


async def test_percent_done_rounds(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 3)
    ti = await live_ti(client, wf["task_ids"][0])
    await running(client, ti)
    await done(client, ti)
    assert (await ok(client.get(f"/v3/workflows/{wf['id']}")))["percent_done"] == 33.33


async def test_listing_workflows_newest_first(client: httpx.AsyncClient) -> None:
    ids = [(await submit(client, 1, name=f"w{n}"))["id"] for n in range(3)]
    listed = await ok(client.get("/v3/workflows"))
    assert [w["id"] for w in listed["data"]] == ids[::-1] and listed["count"] == 3
    page = await ok(client.get("/v3/workflows", params={"limit": 1, "offset": 1}))
    assert [w["id"] for w in page["data"]] == [ids[1]]


async def test_task_paging_and_status_filter(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 25)
    ids = wf["task_ids"]
    url = f"/v3/workflows/{wf['id']}/tasks"
    pages: list[list[int]] = []
    after = 0
    while True:
        page = await ok(client.get(url, params={"limit": 10, "after_id": after}))
        assert page["count"] == 25
        if not page["data"]:
            break
        pages.append([t["id"] for t in page["data"]])
        after = pages[-1][-1]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == ids == sorted(ids)
    offset = await ok(client.get(url, params={"limit": 3, "offset": 4}))
    assert [t["id"] for t in offset["data"]] == ids[4:7]
    first = (await ok(client.get(url, params={"limit": 1})))["data"][0]
    assert first == {"id": ids[0], "name": "t0", "status": "Q", "num_attempts": 1,
                     "max_attempts": 3, "array_id": wf["array_ids"][0], "progress": 0.0,
                     "last_error": None, "attempts": 0, "failures": 0, "active": True}
    for task_id in ids[:3]:
        ti = await live_ti(client, task_id)
        await running(client, ti)
        await done(client, ti)
    await running(client, await live_ti(client, ids[3]))
    only_done = await ok(client.get(url, params={"status": "D"}))
    assert [t["id"] for t in only_done["data"]] == ids[:3] and only_done["count"] == 3
    two = await ok(client.get(url, params=[("status", "D"), ("status", "R"), ("limit", 2)]))
    assert [t["id"] for t in two["data"]] == ids[:2] and two["count"] == 4
    rest = await ok(client.get(url, params={"status": "R", "after_id": ids[0]}))
    assert [t["id"] for t in rest["data"]] == [ids[3]]
    none = await ok(client.get(url, params={"status": "F"}))
    assert none == {"data": [], "count": 0}


async def test_task_detail_has_instances_and_error_log(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 1)
    task_id = wf["task_ids"][0]
    first = await live_ti(client, task_id)
    await running(client, first, nodename="n1")
    await error(client, first, "E", "segfault", stderr_log="core dumped")
    second = await live_ti(client, task_id)
    await running(client, second)
    await done(client, second)
    got = await task(client, task_id)
    assert (got["id"], got["workflow_id"], got["status"], got["num_attempts"], got["command"]) == (
        task_id, wf["id"], "D", 2, "echo 0")
    assert [(i["id"], i["status"]) for i in got["instances"]] == [(first, "E"), (second, "D")]
    assert got["instances"][0]["nodename"] == "n1"
    assert got["instances"][0]["stderr_log"] == "core dumped"
    assert [i["array_batch_num"] for i in got["instances"]] == [1, 2]
    assert [(e["task_instance_id"], e["description"]) for e in got["error_log"]] == [
        (first, "segfault")]
    assert got["time_started"] and got["time_finished"] and got["time_submitted"]


# ---- refused submissions --------------------------------------------------------------------


def _refused(resp: httpx.Response, *words: str) -> None:
    assert resp.status_code == 422, resp.text
    text = resp.text
    for word in words:
        assert word in text, (word, text)


BAD_SUBMISSIONS: list[tuple[dict[str, Any], tuple[str, ...]]] = [
    ({"name": "w", "array": {"command": "x {i}", "first": 5, "last": 4}}, ("last", "first")),
    ({"name": "w", "array": {"command": "x {i}", "first": 0, "last": 1_000_000}},
     ("1000001", "1000000")),
    ({"name": "w", "tasks": [{"name": "a", "command": "b"}], "colour": "red"}, ("colour",)),
    ({"name": "w", "tasks": [{"name": "a", "command": "b", "cmd": "c"}]}, ("cmd",)),
    ({"name": "w", "array": {"command": "x", "last": 3, "step": 2}}, ("step",)),
    ({"name": "w", "tasks": [{"name": "a", "command": "b"}],
      "array": {"command": "x", "last": 1}}, ("tasks", "array")),
    ({"name": "w"}, ("tasks", "array")),
    ({"name": "w", "tasks": []}, ("tasks",)),
    ({"name": "", "tasks": [{"name": "a", "command": "b"}]}, ("name",)),
    ({"name": "w", "tasks": [{"name": "a"}]}, ("command",)),
    ({"name": "w", "array": {"command": "x"}}, ("last",)),
    ({"name": "w", "max_attempts": 0, "array": {"command": "x", "last": 1}},
     ("max_attempts",)),
]


async def test_bad_submissions_are_422(client: httpx.AsyncClient) -> None:
    async def check(body: dict[str, Any], words: tuple[str, ...]) -> None:
        _refused(await client.post("/v3/workflows", json=body), *words)

    await each_case({str(c[0]): c for c in BAD_SUBMISSIONS}, check)
    assert (await ok(client.get("/v3/workflows")))["count"] == 0


async def test_the_size_limit(db_url: str) -> None:
    settings = Settings(database_url=db_url, max_tasks_per_request=5, reconciler_enabled=False)
    async with app_client(settings) as client:
        for body in (
            {"name": "w", "array": {"command": "x {i}", "first": 1, "last": 6}},
            {"name": "w", "tasks": [{"name": f"t{i}", "command": "x"} for i in range(6)]},
        ):
            resp = await client.post("/v3/workflows", json=body)
            _refused(resp, "6", "5")
            assert resp.json()["field"] in body
        assert (await ok(client.get("/v3/workflows")))["count"] == 0
        wf = await submit_array(client, 1, 5)
        assert wf["total"] == 5


# ---- a large array --------------------------------------------------------------------------


async def test_a_20000_task_array_resolves_every_step(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit_array(client, 1, 20_000, command="work {i}")
    assert (wf["total"], wf["counts"]) == (20_000, {"Q": 20_000})
    array_id = wf["array_ids"][0]
    expected = {
        (r["batch"], r["step"]): (r["ti_id"], r["command"])
        for r in await sql_rows(
            db,
            "SELECT i.array_batch_num AS batch, i.array_step_id AS step, i.id AS ti_id, "
            "t.command FROM task_instance i JOIN task t ON t.id = i.task_id "
            "WHERE i.array_id = :a AND i.array_batch_num IN (1, 2)",
            a=array_id,
        )
    }
    assert len(expected) == 2000
    # batch b, step s is task number (b - 1) * 1000 + s of the range, in order
    assert expected[(1, 0)][1] == "work 1" and expected[(2, 999)][1] == "work 2000"
    assert all(cmd == f"work {(b - 1) * 1000 + s + 1}" for (b, s), (_, cmd) in expected.items())

    async def lookup(batch: int, step: int) -> int:
        got = await ok(client.get(f"{FSM}/get_array_task_instance_id/{array_id}/{batch}/{step}"))
        return int(got["task_instance_id"])

    keys = sorted(expected)
    found: dict[tuple[int, int], int] = {}
    for start in range(0, len(keys), 200):
        chunk = keys[start:start + 200]
        for key, ti_id in zip(chunk, await asyncio.gather(*(lookup(*k) for k in chunk)),
                              strict=True):
            found[key] = ti_id
    assert found == {k: v[0] for k, v in expected.items()}
    assert len(set(found.values())) == 2000
    last = await ok(client.get(f"{FSM}/get_array_task_instance_id/{array_id}/20/999"))
    assert last["task_instance_id"] not in found.values()
    missing = await client.get(f"{FSM}/get_array_task_instance_id/{array_id}/21/0")
    assert missing.status_code == 404
    assert len(await task_ids(client, wf["id"])) == 20_000
