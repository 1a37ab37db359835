"""Helpers for the integration tests: submit workflows, drive instances over HTTP, read rows in SQL.

Everything here goes through the public HTTP API, except the `sql_*` helpers, which read (and
for test setup, write) the database directly through a `Database` from the `db` fixture.
"""

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select, text

from farmstead.api.app import create_app
from farmstead.db.engine import Database
from farmstead.db.models import Task, TaskInstance
from farmstead.db.types import db_now
from farmstead.settings import Settings
from farmstead.store.sql import report_by, with_deadline

FSM = "/v3/fsm"
PREFIXES = ["/v3/fsm", "/api/v3"]
INC = 300.0  # a heartbeat increment that never expires during a test
LIVE = ("Q", "I", "O", "R", "T", "X", "K")
TI = TaskInstance.__table__
TASK = Task.__table__


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- HTTP ---------------------------------------------------------------------------------


async def no_server_errors(response: httpx.Response) -> None:
    """httpx response hook: a 500 (or any 5xx but a 503 with Retry-After) fails the test."""
    if response.status_code >= 500:
        await response.aread()
        ok = response.status_code == 503 and "retry-after" in response.headers
        assert ok, (
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.text}"
        )


def guard(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Make `client` fail the test on any server error."""
    hooks = client.event_hooks
    if no_server_errors not in hooks["response"]:
        client.event_hooks = {**hooks, "response": [*hooks["response"], no_server_errors]}
    return client


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client on an app built with `settings` (lifespan included)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield guard(c)


async def ok(resp: httpx.Response | Any, code: int = 200) -> Any:
    """The JSON body of a response that must have status `code`."""
    if not isinstance(resp, httpx.Response):
        resp = await resp
    assert resp.status_code == code, f"{resp.request.url}: {resp.status_code} {resp.text}"
    return resp.json()


async def submit(
    client: httpx.AsyncClient, n: int = 1, *, name: str = "wf", **extra: Any
) -> dict[str, Any]:
    """Submit a workflow of `n` listed tasks t0..t{n-1}; returns the workflow with `task_ids`."""
    body = {"name": name, "tasks": [{"name": f"t{i}", "command": f"echo {i}"} for i in range(n)]}
    body |= extra
    wf = await ok(client.post("/v3/workflows", json=body), 201)
    wf["task_ids"] = await task_ids(client, wf["id"])
    return wf  # type: ignore[no-any-return]


async def submit_array(
    client: httpx.AsyncClient,
    first: int,
    last: int,
    *,
    command: str = "run {i}",
    name: str = "a{i}",
    **extra: Any,
) -> dict[str, Any]:
    """Submit a workflow of one array over first..last."""
    body = {
        "name": "arr",
        "array": {"command": command, "first": first, "last": last, "name": name},
    } | extra
    return await ok(client.post("/v3/workflows", json=body), 201)  # type: ignore[no-any-return]


async def task_ids(client: httpx.AsyncClient, wf_id: int) -> list[int]:
    """Every task id of a workflow, in order (keyset paging)."""
    ids: list[int] = []
    after = 0
    while True:
        page = await ok(
            client.get(f"/v3/workflows/{wf_id}/tasks", params={"limit": 10_000, "after_id": after})
        )
        if not page["data"]:
            return ids
        ids += [t["id"] for t in page["data"]]
        after = ids[-1]


async def task(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    """GET /v3/tasks/{id}."""
    return await ok(client.get(f"/v3/tasks/{task_id}"))  # type: ignore[no-any-return]


async def live_ti(client: httpx.AsyncClient, task_id: int) -> int:
    """The id of the task's one live instance (through the API)."""
    live = [i["id"] for i in (await task(client, task_id))["instances"] if i["status"] in LIVE]
    assert len(live) == 1, live
    return live[0]


async def events(client: httpx.AsyncClient, wf_id: int) -> list[dict[str, Any]]:
    """A workflow's events, oldest first."""
    return (await ok(client.get(f"/v3/workflows/{wf_id}/events")))["data"]  # type: ignore[no-any-return]


async def instantiate(client: httpx.AsyncClient, ids: list[int], prefix: str = FSM) -> Any:
    """POST instantiate_task_instances; returns the batches."""
    body = await ok(
        client.post(
            f"{prefix}/task_instance/instantiate_task_instances", json={"task_instance_ids": ids}
        )
    )
    return body["task_instance_batches"]


async def launch(
    client: httpx.AsyncClient,
    ti_id: int,
    prefix: str = FSM,
    distributor_id: str = "job1",
    inc: float = INC,
) -> Any:
    """POST log_distributor_id (I -> O)."""
    return await ok(
        client.post(
            f"{prefix}/task_instance/{ti_id}/log_distributor_id",
            json={"distributor_id": distributor_id, "next_report_increment": inc},
        )
    )


async def running(
    client: httpx.AsyncClient, ti_id: int, prefix: str = FSM, inc: float = INC, **extra: Any
) -> list[Any]:
    """POST log_running; returns the task_instance 9-tuple."""
    body = {"process_group_id": 42, "next_report_increment": inc} | extra
    return (await ok(client.post(f"{prefix}/task_instance/{ti_id}/log_running", json=body)))[
        "task_instance"
    ]


async def heartbeat(
    client: httpx.AsyncClient, ti_id: int, inc: float = INC, prefix: str = FSM, **extra: Any
) -> str:
    """POST log_report_by; returns the status."""
    body = {"next_report_increment": inc} | extra
    return (await ok(client.post(f"{prefix}/task_instance/{ti_id}/log_report_by", json=body)))[
        "status"
    ]


async def done(client: httpx.AsyncClient, ti_id: int, prefix: str = FSM, **extra: Any) -> str:
    """POST log_done; returns the status."""
    return (await ok(client.post(f"{prefix}/task_instance/{ti_id}/log_done", json=extra)))["status"]


async def error(
    client: httpx.AsyncClient,
    ti_id: int,
    state: str = "E",
    description: str = "boom",
    prefix: str = FSM,
    **extra: Any,
) -> str:
    """POST log_error_worker_node; returns the status."""
    body = {"error_state": state, "error_description": description} | extra
    return (
        await ok(client.post(f"{prefix}/task_instance/{ti_id}/log_error_worker_node", json=body))
    )["status"]


async def to_running(client: httpx.AsyncClient, ti_id: int, **extra: Any) -> None:
    """Q -> I -> O -> R through the distributor and worker routes."""
    await instantiate(client, [ti_id])
    await launch(client, ti_id)
    assert (await running(client, ti_id, **extra))[1] == "R"


async def running_task(
    client: httpx.AsyncClient, **submit_extra: Any
) -> tuple[dict[str, Any], int, int]:
    """A one-task workflow whose instance is RUNNING: (workflow, task id, instance id)."""
    wf = await submit(client, 1, **submit_extra)
    task_id = wf["task_ids"][0]
    ti_id = await live_ti(client, task_id)
    await to_running(client, ti_id)
    return wf, task_id, ti_id


# ---- SQL ----------------------------------------------------------------------------------


async def sql_rows(db: Database, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a read-only query, as dicts."""
    async with db.read_engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(text(sql), params)).mappings().all()]


async def sql_scalar(db: Database, sql: str, **params: Any) -> Any:
    """The one value a query returns."""
    async with db.read_engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def sql_exec(db: Database, sql: str, **params: Any) -> int:
    """Run a write statement in its own transaction (test setup only); returns the row count."""
    async with db.write_engine.begin() as conn:
        return int((await conn.execute(text(sql), params)).rowcount)


async def ti_row(db: Database, ti_id: int) -> dict[str, Any]:
    """A task instance's row (typed: datetimes and JSON decoded)."""
    async with db.read_engine.connect() as conn:
        # the live deadline while it has one (store.deadlines), as every reader shows it
        record = [c for c in TI.c if c.name not in ("report_by_date", "last_report_date")]
        stmt = select(*record, *report_by()).select_from(with_deadline()).where(TI.c.id == ti_id)
        row = (await conn.execute(stmt)).mappings().first()
    assert row is not None, f"no task instance {ti_id}"
    return dict(row)


async def task_row(db: Database, task_id: int) -> dict[str, Any]:
    """A task's row (typed)."""
    async with db.read_engine.connect() as conn:
        row = (await conn.execute(select(TASK).where(TASK.c.id == task_id))).mappings().first()
    assert row is not None, f"no task {task_id}"
    return dict(row)


async def set_ti_status(db: Database, ti_id: int, status: str) -> None:
    """Put an instance in `status` directly (the reconciler does not exist yet)."""
    assert (
        await sql_exec(db, "UPDATE task_instance SET status = :s WHERE id = :i", s=status, i=ti_id)
        == 1
    )
    # its deadline row comes or goes with it, as a move would keep it (store.deadlines)
    if status in ("O", "R"):
        await sql_exec(
            db,
            "INSERT INTO task_instance_deadline (task_instance_id, report_by_date, "
            "last_report_date) SELECT id, report_by_date, last_report_date FROM task_instance "
            "WHERE id = :i AND id NOT IN (SELECT task_instance_id FROM task_instance_deadline)",
            i=ti_id,
        )
    else:
        for column in ("report_by_date", "last_report_date"):
            await sql_exec(
                db,
                f"UPDATE task_instance SET {column} = coalesce((SELECT d.{column} FROM "
                f"task_instance_deadline d WHERE d.task_instance_id = :i), {column}) "
                "WHERE id = :i",
                i=ti_id,
            )
        await sql_exec(
            db, "DELETE FROM task_instance_deadline WHERE task_instance_id = :i", i=ti_id
        )


async def set_task_status(db: Database, task_id: int, status: str) -> None:
    """Put a task in `status` directly (test setup)."""
    assert await sql_exec(db, "UPDATE task SET status = :s WHERE id = :i", s=status, i=task_id) == 1


async def written(db: Database, ti_id: int) -> dict[str, Any]:
    """Everything a request could have written about an instance and its task, to compare."""
    ti = await ti_row(db, ti_id)
    return {
        "ti": ti,
        "task": await task_row(db, ti["task_id"]),
        "errors": await sql_scalar(
            db, "SELECT count(*) FROM task_instance_error_log WHERE task_instance_id = :i", i=ti_id
        ),
        "events": await sql_scalar(db, "SELECT count(*) FROM event"),
        "instances": await sql_scalar(db, "SELECT count(*) FROM task_instance"),
    }


async def error_log_count(db: Database, ti_id: int) -> int:
    """How many error-log rows an instance has."""
    return int(
        await sql_scalar(
            db, "SELECT count(*) FROM task_instance_error_log WHERE task_instance_id = :i", i=ti_id
        )
    )


async def instances_of(db: Database, task_id: int) -> list[dict[str, Any]]:
    """A task's instances, oldest first (typed)."""
    stmt = select(TI).where(TI.c.task_id == task_id).order_by(TI.c.id)
    async with db.read_engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]


async def db_clock(db: Database) -> datetime:
    """The database's clock now."""
    async with db.read_engine.connect() as conn:
        now = (await conn.execute(select(db_now()))).scalar_one()
    assert isinstance(now, datetime)
    return now


async def seconds_to_deadline(db: Database, ti_id: int) -> float:
    """Seconds from the database's clock now to the instance's report_by_date."""
    deadline = (await ti_row(db, ti_id))["report_by_date"]
    assert deadline is not None
    return (deadline - await db_clock(db)).total_seconds()


async def each_case(cases: dict[str, Any], check: Callable[..., Awaitable[None]]) -> None:
    """Run `check(*case)` for every case; fail once at the end, naming every failing case."""
    failures = []
    for name, case in cases.items():
        try:
            await check(*case)
        except AssertionError as exc:
            failures.append(f"[{name}] {exc}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
