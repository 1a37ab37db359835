"""taskfarm's API (issue 11) on an in-process app with auth on, on both databases: every route
as taskfarm answers it, and what farmstead does better (ownership, expiry, restart, no double
hand-out, progress in farmstead's own API)."""

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from factories import TI, app_client, ok, sql_rows
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import create_async_engine
from test_auth import _admin_token, secured_settings

from farmstead.db.engine import Database, make_database
from farmstead.db.models import TaskInstanceDeadline
from farmstead.db.types import seconds_from_now
from farmstead.services.reconciler import Reconciler
from farmstead.settings import Settings

DEADLINE = TaskInstanceDeadline.__table__

PW = "correct horse battery"


def basic(user: str, password: str = "") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@dataclass
class Farm:
    """An app with auth on: an operator and two worker users, each signed in with a token
    from `GET /api/token` (as taskfarm's client does)."""

    client: httpx.AsyncClient
    auth: dict[str, dict[str, str]]

    async def call(self, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
        """A request; a 503 (nothing done: database busy) is tried again, as taskfarm's
        client does (on a loaded machine 64 in-process claimers can wait long for one of
        the 20 connections)."""
        for _ in range(20):
            resp = await self.client.request(method, "/api/" + path, headers=self.auth[who], **kw)
            if resp.status_code != 503:
                return resp
            await asyncio.sleep(0.2)
        return resp

    async def run(self, n: int, **extra: Any) -> dict[str, Any]:
        return await ok(self.call("op", "POST", "run", json={"numTasks": n, **extra}), 201)

    async def worker(self, who: str, uuid: str) -> str:
        body = {"uuid": uuid, "hostname": f"host-{uuid}", "pid": 42}
        await ok(self.call(who, "POST", "worker", json=body), 201)
        return uuid

    async def claim(self, who: str, run: str, worker: str) -> dict[str, Any] | None:
        resp = await self.call(who, "POST", f"runs/{run}/task", json={"worker_uuid": worker})
        if resp.status_code == 204:
            return None
        return await ok(resp, 201)

    async def put(self, who: str, run: str, n: int, body: dict[str, Any]) -> int:
        return (await self.call(who, "PUT", f"runs/{run}/tasks/{n}", json=body)).status_code

    async def info(self, run: str) -> dict[str, Any]:
        return await ok(self.call("op", "GET", f"runs/{run}"))

    async def task(self, run: str, n: int) -> dict[str, Any]:
        return await ok(self.call("w1", "GET", f"runs/{run}/tasks/{n}"))


async def _farm(client: httpx.AsyncClient, admin: str) -> Farm:
    bearer = {"Authorization": f"Bearer {admin}"}
    auth = {"admin": bearer}
    for name, role in (("op", "operator"), ("w1", "worker"), ("w2", "worker"), ("v", "viewer")):
        body = {"name": name, "role": role, "password": PW}
        await ok(client.post("/v3/users", json=body, headers=bearer), 201)
        got = await ok(client.get("/api/token", headers=basic(name, PW)))
        auth[name] = basic(got["token"])  # a token as the user, with an empty password
    return Farm(client, auth)


@pytest.fixture
async def farm(db_url: str) -> AsyncIterator[Farm]:
    admin = await _admin_token(db_url)
    async with app_client(secured_settings(db_url)) as client:
        yield await _farm(client, admin)


async def sweep(db_url: str) -> dict[str, int]:
    """One pass of the reconciler, with no triage grace (an expiry retries at once)."""
    db = make_database(db_url)
    try:
        settings = Settings(database_url=db_url, reconciler_enabled=False, triage_grace=0.0)
        return (await Reconciler(db, settings).sweep()).moved
    finally:
        await db.dispose()


async def test_every_route_answers_as_taskfarm(farm: Farm) -> None:
    run = await farm.run(3)
    assert set(run) == {"id", "uuid", "numTasks"} and run["numTasks"] == 3
    uuid = run["uuid"]
    assert (await farm.call("op", "POST", "run", json={})).status_code == 400
    assert (await farm.call("op", "POST", "run", json={"numTasks": "3"})).status_code == 400
    listed = await ok(farm.call("w1", "GET", "runs"))
    assert run in listed["data"]
    info = await farm.info(uuid)
    assert info == {**run, "percentDone": 0.0, "numWaiting": 3, "numComputing": 0, "numDone": 0}
    for key in ("percentDone", "numWaiting", "numDone", "numComputing"):
        got = await ok(farm.call("w1", "GET", f"runs/{uuid}", params={"info": key}))
        assert got == {key: info[key]}
    assert (await farm.call("op", "GET", f"runs/{uuid}", params={"info": "x"})).status_code == 404
    assert (await farm.call("op", "GET", "runs/0123abcd")).status_code == 404

    assert (await farm.call("w1", "POST", "worker", json={"uuid": "a"})).status_code == 400
    worker = await farm.worker("w1", "aa11")
    again = {"uuid": worker, "hostname": "h", "pid": 1}
    await ok(farm.call("w1", "POST", "worker", json=again), 201)  # a retry: the same worker
    assert (await farm.call("w2", "POST", "worker", json=again)).status_code == 409
    bad = await farm.call("w1", "POST", f"runs/{uuid}/task", json={})
    assert bad.status_code == 400
    unknown = await farm.call("w1", "POST", f"runs/{uuid}/task", json={"worker_uuid": "zz"})
    assert unknown.status_code == 404
    task = await farm.claim("w1", uuid, worker)
    assert task is not None and task["status"] == "computing" and task["percentCompleted"] == 0
    assert set(task) == {"id", "task", "percentCompleted", "status"}
    n = task["task"]
    assert await farm.task(uuid, n) == task
    got = await ok(farm.call("w1", "GET", f"runs/{uuid}/tasks/{n}", params={"info": "status"}))
    assert got == {"status": "computing"}
    for out_of_range in (-1, 3):
        resp = await farm.call("w1", "GET", f"runs/{uuid}/tasks/{out_of_range}")
        assert resp.status_code == 404
    assert await farm.put("w1", uuid, n, {"percentCompleted": 50}) == 204
    assert await farm.put("w1", uuid, n, {"percent": 50}) == 400
    assert await farm.put("w1", uuid, n, {"percentCompleted": 101}) == 400
    assert await farm.put("w1", uuid, n, {"status": "finished"}) == 400
    assert (await farm.task(uuid, n))["percentCompleted"] == 50
    assert await farm.put("w1", uuid, n, {"percentCompleted": 100, "status": "done"}) == 204
    assert await farm.task(uuid, n) == {**task, "percentCompleted": 100, "status": "done"}
    assert await farm.put("w1", uuid, n, {"status": "done"}) == 204  # a client's retry
    while (await farm.claim("w1", uuid, worker)) is not None:
        pass
    info = await farm.info(uuid)
    assert (info["numComputing"], info["numDone"]) == (2, 1)
    assert info["percentDone"] == pytest.approx(100 / 3)
    resp = await farm.call("op", "POST", f"runs/{uuid}/restart", params={"all": "maybe"})
    assert resp.status_code == 404
    assert (await farm.call("op", "DELETE", f"runs/{uuid}")).status_code == 204
    assert (await farm.call("op", "GET", f"runs/{uuid}")).status_code == 404
    assert (await farm.call("op", "DELETE", f"runs/{uuid}")).status_code == 404
    workflow = await ok(farm.client.get(f"/v3/workflows/{run['id']}", headers=farm.auth["op"]))
    assert workflow["status"] == "R" or workflow["cancelled_date"] is not None


async def test_roles_and_tokens(farm: Farm) -> None:
    run = await farm.run(1)
    assert (await farm.call("w1", "POST", "run", json={"numTasks": 1})).status_code == 403
    assert (await farm.call("v", "GET", f"runs/{run['uuid']}")).status_code == 200
    assert (await farm.call("v", "GET", f"runs/{run['uuid']}/tasks/0")).status_code == 403
    assert (await farm.call("w1", "DELETE", f"runs/{run['uuid']}")).status_code == 403
    # a token from a token keeps its role
    again = await ok(farm.call("w1", "GET", "token"))
    farm.auth["w1b"] = basic(again["token"])
    assert (await farm.call("w1b", "POST", "run", json={"numTasks": 1})).status_code == 403
    assert (await farm.call("w1b", "GET", "runs")).status_code == 200
    assert (await farm.client.get("/api/runs", headers=basic("w1", "wrong pw"))).status_code == 401


async def test_progress_and_runs_show_in_farmsteads_own_api(farm: Farm, db_url: str) -> None:
    run = await farm.run(2)
    ordinary = await ok(
        farm.client.post(
            "/v3/workflows",
            json={"name": "plain", "tasks": [{"name": "t", "command": "true"}]},
            headers=farm.auth["op"],
        ),
        201,
    )
    # farmstead's executors' claim (no workflow named) takes the ordinary task, not the run's
    claimed = await ok(farm.client.post("/v3/claims", json={"limit": 10}, headers=farm.auth["w1"]))
    assert [c["workflow_id"] for c in claimed["data"]] == [ordinary["id"]]
    worker = await farm.worker("w1", "bb22")
    task = await farm.claim("w1", run["uuid"], worker)
    assert task is not None
    assert await farm.put("w1", run["uuid"], task["task"], {"percentCompleted": 37.5}) == 204
    op = farm.auth["op"]
    tasks = await ok(farm.client.get(f"/v3/workflows/{run['id']}/tasks", headers=op))
    assert sorted(t["progress"] for t in tasks["data"]) == [0.0, 37.5]
    detail = await ok(farm.client.get(f"/v3/tasks/{task['id']}", headers=op))
    assert detail["progress"] == 37.5 and detail["status"] == "R"
    assert detail["instances"][-1]["nodename"] == "host-bb22"
    events = await ok(farm.client.get(f"/v3/workflows/{run['id']}/events", headers=op))
    assert any((e.get("details") or {}).get("progress") == 37.5 for e in events["data"])
    workflow = await ok(farm.client.get(f"/v3/workflows/{run['id']}", headers=op))
    assert workflow["counts"] == {"Q": 1, "R": 1}


async def test_no_task_is_handed_out_twice_to_64_concurrent_claimers(farm: Farm) -> None:
    run = await farm.run(300)
    uuid = run["uuid"]
    workers = []
    for k in range(64):  # each with a token of its own, as each TaskFarmWorker gets one
        farm.auth[f"c{k}"] = basic((await ok(farm.call("w1", "GET", "token")))["token"])
        workers.append(await farm.worker(f"c{k}", f"c{k}"))
    handed: Counter[int] = Counter()

    async def claimer(me: str) -> None:
        while (task := await farm.claim(me, uuid, me)) is not None:
            handed[task["task"]] += 1
            assert await farm.put(me, uuid, task["task"], {"percentCompleted": 100}) == 204
            assert await farm.put(me, uuid, task["task"], {"status": "done"}) == 204

    await asyncio.gather(*(claimer(w) for w in workers))
    assert sorted(handed) == list(range(300))
    assert set(handed.values()) == {1}, [n for n, c in handed.items() if c > 1]
    info = await farm.info(uuid)
    assert (info["numDone"], info["percentDone"]) == (300, 100.0)


async def test_a_silent_workers_task_is_handed_out_again(farm: Farm, db_url: str) -> None:
    run = await farm.run(1, timeout=0.05)
    uuid = run["uuid"]
    first = await farm.worker("w1", "silent")
    second = await farm.worker("w2", "alive")
    task = await farm.claim("w1", uuid, first)
    assert task is not None and await farm.claim("w2", uuid, second) is None
    await asyncio.sleep(0.3)  # past the run's update timeout
    moved = await sweep(db_url)
    assert moved.get("U") == 1  # expired, and retried: a new waiting try
    assert (await farm.info(uuid))["numWaiting"] == 1
    # farmstead's own executors do not take the retry either
    claimed = await ok(farm.client.post("/v3/claims", json={"limit": 5}, headers=farm.auth["w1"]))
    assert claimed["data"] == []
    again = await farm.claim("w2", uuid, second)
    assert again is not None and again["task"] == task["task"]
    # the worker that comes back late is told its task moved on
    assert await farm.put("w1", uuid, task["task"], {"percentCompleted": 10}) == 409
    assert await farm.put("w2", uuid, task["task"], {"percentCompleted": 100}) == 204
    assert await farm.put("w2", uuid, task["task"], {"status": "done"}) == 204
    assert (await farm.info(uuid))["numDone"] == 1


async def test_put_only_by_the_holder_or_an_operator_along_the_state_machine(
    farm: Farm,
) -> None:
    run = await farm.run(2)
    uuid = run["uuid"]
    worker = await farm.worker("w1", "own")
    task = await farm.claim("w1", uuid, worker)
    assert task is not None
    n = task["task"]
    assert await farm.put("w2", uuid, n, {"percentCompleted": 5}) == 409
    assert await farm.put("w2", uuid, n, {"status": "done"}) == 409
    assert await farm.put("op", uuid, n, {"percentCompleted": 7}) == 204
    assert await farm.put("v", uuid, n, {"percentCompleted": 7}) == 403
    other = 1 - n  # still waiting: nobody computes it
    assert await farm.put("op", uuid, other, {"status": "done"}) == 409
    assert await farm.put("w1", uuid, other, {"percentCompleted": 3}) == 409
    assert await farm.put("w1", uuid, other, {"status": "waiting"}) == 204  # it is already
    # the holder gives it back: a new try waits, handed out again
    assert await farm.put("w1", uuid, n, {"status": "waiting"}) == 204
    assert (await farm.task(uuid, n))["status"] == "waiting"
    assert (await farm.info(uuid))["numWaiting"] == 2
    got = {(await farm.claim("w1", uuid, worker) or {}).get("task") for _ in range(2)}
    assert got == {0, 1}


async def test_restart_spares_live_workers_and_all_resets_everything(
    farm: Farm, db_url: str
) -> None:
    run = await farm.run(4)
    uuid = run["uuid"]
    worker = await farm.worker("w1", "r1")
    alive, silent, done = [await farm.claim("w1", uuid, worker) for _ in range(3)]
    assert alive and silent and done
    assert await farm.put("w1", uuid, done["task"], {"percentCompleted": 100}) == 204
    assert await farm.put("w1", uuid, done["task"], {"status": "done"}) == 204
    assert await farm.put("w1", uuid, silent["task"], {"percentCompleted": 30}) == 204
    db: Database = make_database(db_url)
    try:  # the silent one's deadline passed (the reconciler has not swept yet)
        async with db.write_engine.begin() as conn:
            live = select(TI.c.id).where(TI.c.task_id == silent["id"], TI.c.status == "R")
            await conn.execute(
                update(DEADLINE)
                .where(DEADLINE.c.task_instance_id == live.scalar_subquery())
                .values(report_by_date=seconds_from_now(-3600))
            )
        assert (await farm.call("op", "POST", f"runs/{uuid}/restart")).status_code == 204
        assert (await farm.task(uuid, alive["task"]))["status"] == "computing"
        assert (await farm.task(uuid, silent["task"]))["status"] == "waiting"
        assert (await farm.task(uuid, silent["task"]))["percentCompleted"] == 30
        assert (await farm.task(uuid, done["task"]))["status"] == "done"
        info = await farm.info(uuid)
        assert (info["numWaiting"], info["numComputing"], info["numDone"]) == (2, 1, 1)
        everything = await farm.call("op", "POST", f"runs/{uuid}/restart", params={"all": "True"})
        assert everything.status_code == 204
        info = await farm.info(uuid)
        assert (info["numWaiting"], info["percentDone"]) == (4, 0.0)
        live = await sql_rows(
            db,
            "SELECT count(*) AS n FROM task_instance WHERE workflow_id = :w AND status = 'Q'",
            w=run["id"],
        )
        assert live[0]["n"] == 4
        # the worker that held a task before the reset is told it moved on
        assert await farm.put("w1", uuid, alive["task"], {"percentCompleted": 50}) == 409
        claimed = [await farm.claim("w1", uuid, worker) for _ in range(5)]
        assert sorted(c["task"] for c in claimed if c) == [0, 1, 2, 3]
    finally:
        await db.dispose()


async def test_a_claim_takes_no_lock_on_the_run(farm: Farm, db_url: str, backend: str) -> None:
    """taskfarm locks the run row for every claim; here a claim waits for nobody: with the
    run's workflow and array rows locked by another transaction as any update of them would
    (FOR NO KEY UPDATE: a claim that wrote or locked them would wait) and one of its QUEUED
    instances locked, claims go on and skip the locked instance. (Rows that reference the run
    take PostgreSQL's shared key lock on it, which only a change of its key would wait for.)
    On SQLite, which has no row locks, claims go on past a reader of the run instead."""
    run = await farm.run(3)
    engine = create_async_engine(db_url)
    try:
        if backend == "sqlite":
            await _claims_pass_an_open_reader(farm, engine, run)
            return
        async with engine.connect() as conn, conn.begin():
            held = {"wf": run["id"]}
            await conn.execute(
                text("SELECT 1 FROM workflow WHERE id = :wf FOR NO KEY UPDATE"), held
            )
            await conn.execute(
                text('SELECT 1 FROM "array" WHERE workflow_id = :wf FOR NO KEY UPDATE'), held
            )
            first = await conn.execute(
                text(
                    "SELECT id, array_step_id FROM task_instance WHERE workflow_id = :wf "
                    "ORDER BY id LIMIT 1 FOR UPDATE"
                ),
                held,
            )
            _, locked_step = first.one()
            worker = await farm.worker("w1", "nolock")
            got = [await asyncio.wait_for(farm.claim("w1", run["uuid"], worker), 30)]
            got.append(await asyncio.wait_for(farm.claim("w1", run["uuid"], worker), 30))
            assert sorted(t["task"] for t in got if t) == sorted({0, 1, 2} - {locked_step})
            # the locked one is not handed out meanwhile: none is left for now
            assert await asyncio.wait_for(farm.claim("w1", run["uuid"], worker), 30) is None
        # once the other transaction ends, it is
        last = await farm.claim("w1", run["uuid"], worker)
        assert last is not None and last["task"] == locked_step
    finally:
        await engine.dispose()


async def _claims_pass_an_open_reader(farm: Farm, engine: Any, run: dict[str, Any]) -> None:
    """SQLite has no row locks and one writer: what a claim must not wait for is a reader.
    With another connection inside a read transaction on the run's rows (WAL), every task of
    the run is still handed out, once."""
    async with engine.connect() as conn, conn.begin():
        held = {"wf": run["id"]}
        await conn.execute(text("SELECT * FROM workflow WHERE id = :wf"), held)
        await conn.execute(text("SELECT * FROM task_instance WHERE workflow_id = :wf"), held)
        worker = await farm.worker("w1", "nolock")
        got = [await asyncio.wait_for(farm.claim("w1", run["uuid"], worker), 30) for _ in "abc"]
        assert sorted(t["task"] for t in got if t) == [0, 1, 2]
