"""Errors: 404 for unknown ids, 422 for bad bodies, 409 for invalid moves, 503 on lock timeouts,
and a server that refuses an un-migrated database. Never a 500."""

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import (
    FSM,
    INC,
    PREFIXES,
    app_client,
    done,
    each_case,
    free_port,
    instantiate,
    launch,
    live_ti,
    ok,
    running_task,
    set_task_status,
    submit,
    ti_row,
    written,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from farmstead.db.engine import Database
from farmstead.settings import Settings
from helpers import pg_admin

MISSING = 987_654

# (method, path, body) of every route that names a task instance in its path
TI_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/task_instance/{id}/log_running", {"next_report_increment": INC}),
    ("POST", "/task_instance/{id}/log_report_by", {"next_report_increment": INC}),
    ("POST", "/task_instance/{id}/log_done", {}),
    ("POST", "/task_instance/{id}/log_error_worker_node",
     {"error_state": "E", "error_description": "x"}),
    ("GET", "/task_instance/{id}/task_instance_error_log", None),
    ("POST", "/task_instance/{id}/log_distributor_id",
     {"distributor_id": "1", "next_report_increment": INC}),
    ("POST", "/task_instance/{id}/log_no_distributor_id", {"no_id_err_msg": "x"}),
    ("POST", "/task_instance/{id}/log_known_error", {"error_state": "E", "error_message": "x"}),
    ("POST", "/task_instance/{id}/log_unknown_error", {"error_state": "U", "error_message": "x"}),
]


def _not_found(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 404, f"{resp.request.url}: {resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body  # type: ignore[no-any-return]


# ---- 404 ------------------------------------------------------------------------------------


async def test_unknown_task_instance_is_404(client: httpx.AsyncClient) -> None:
    await submit(client, 1)  # a database that is not empty
    failures = []
    for prefix in PREFIXES:
        for method, path, body in TI_ROUTES:
            resp = await client.request(method, prefix + path.format(id=MISSING), json=body)
            try:
                found = _not_found(resp)
                assert str(MISSING) in found["detail"], found
            except (AssertionError, KeyError, ValueError) as exc:
                failures.append(f"{method} {prefix}{path}: {exc}")
    assert not failures, "\n".join(failures)


async def test_unknown_ids_of_farmsteads_own_api_are_404(client: httpx.AsyncClient) -> None:
    for path in (f"/v3/workflows/{MISSING}", f"/v3/workflows/{MISSING}/tasks",
                 f"/v3/workflows/{MISSING}/events", f"/v3/tasks/{MISSING}"):
        _not_found(await client.get(path))


async def test_unknown_array_step_is_404(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 2)
    array_id = wf["array_ids"][0]
    for path in (f"{array_id}/1/2", f"{array_id}/0/0", f"{array_id}/1/-1", f"{MISSING}/1/0"):
        _not_found(await client.get(f"{FSM}/get_array_task_instance_id/{path}"))


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("transition_to_launched", {"batch_number": 1, "next_report_increment": INC}),
        ("transition_to_killed", {"batch_number": 1}),
        ("log_distributor_id", {"1": "123"}),
    ],
)
async def test_unknown_array_is_404(
    client: httpx.AsyncClient, route: str, body: dict[str, Any]
) -> None:
    await submit(client, 1)
    _not_found(await client.post(f"{FSM}/array/{MISSING}/{route}", json=body))


# ---- 422 ------------------------------------------------------------------------------------


def _names_field(resp: httpx.Response, field: str) -> None:
    assert resp.status_code == 422, f"{resp.request.url}: {resp.status_code} {resp.text}"
    body = resp.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    names = [e["field"].split(".")[-1].split("[")[0] for e in body["errors"]]
    assert field in names, body


BAD_BODIES: list[tuple[str, dict[str, Any] | None, str]] = [
    ("/task_instance/{id}/log_running", {"process_group_id": 1}, "next_report_increment"),
    ("/task_instance/{id}/log_running", {"next_report_increment": -1},
     "next_report_increment"),
    ("/task_instance/{id}/log_running", {"next_report_increment": "soon"},
     "next_report_increment"),
    ("/task_instance/{id}/log_report_by", {}, "next_report_increment"),
    ("/task_instance/{id}/log_report_by", {"next_report_increment": 0},
     "next_report_increment"),
    ("/task_instance/log_report_by/batch", {"next_report_increment": 5},
     "task_instance_ids"),
    ("/task_instance/log_report_by/batch",
     {"next_report_increment": 5, "task_instance_ids": ["a"]}, "task_instance_ids"),
    ("/task_instance/{id}/log_error_worker_node", {"error_description": "x"}, "error_state"),
    ("/task_instance/{id}/log_error_worker_node", {"error_state": "D"}, "error_state"),
    ("/task_instance/{id}/log_error_worker_node", {"error_state": "E", "maxrss": -1},
     "maxrss"),
    ("/task_instance/{id}/log_done", {"wallclock": -3}, "wallclock"),
    ("/task_instance/{id}/log_distributor_id", {"next_report_increment": 5},
     "distributor_id"),
    ("/task_instance/{id}/log_known_error", {"error_state": "R"}, "error_state"),
    ("/task_instance/{id}/log_unknown_error", {"error_message": "x"}, "error_state"),
    ("/task_instance/instantiate_task_instances", {}, "task_instance_ids"),
    ("/array/1/transition_to_launched", {"next_report_increment": 5}, "batch_number"),
    ("/array/1/transition_to_killed", {"batch_number": "first"}, "batch_number"),
    ("/array/x/transition_to_killed", {"batch_number": 1}, "array_id"),
    ("/task_instance/0/log_done", {}, "task_instance_id"),
    ("/task_instance/abc/log_done", {}, "task_instance_id"),
    ("/get_array_task_instance_id/1/x/0", None, "batch_num"),
]


async def test_a_bad_body_is_422_naming_the_field(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1)
    ti_id = await live_ti(client, wf["task_ids"][0])
    before = await written(db, ti_id)
    failures = []
    for path, body, field in BAD_BODIES:
        method = "GET" if body is None else "POST"
        resp = await client.request(method, FSM + path.format(id=ti_id), json=body)
        try:
            _names_field(resp, field)
        except (AssertionError, KeyError, ValueError) as exc:
            failures.append(f"{method} {path} {body}: {exc}")
    assert not failures, "\n".join(failures)
    assert await written(db, ti_id) == before


async def test_a_body_that_is_not_json_is_422(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 1)
    ti_id = await live_ti(client, wf["task_ids"][0])
    resp = await client.post(f"{FSM}/task_instance/{ti_id}/log_done", content=b"{not json",
                             headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    resp = await client.post(f"{FSM}/array/1/log_distributor_id", json={"abc": "1"})
    assert resp.status_code == 422, resp.text


async def test_array_log_distributor_id_with_no_ids_is_422(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 1)
    resp = await client.post(f"{FSM}/array/{wf['array_ids'][0]}/log_distributor_id", json={})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"]


async def test_bad_query_parameters_are_422(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 1)
    _names_field(await client.get(f"/v3/workflows/{wf['id']}/tasks", params={"limit": 0}),
                 "limit")
    _names_field(await client.get(f"/v3/workflows/{wf['id']}/tasks", params={"after_id": -1}),
                 "after_id")
    _names_field(await client.get(f"/v3/workflows/{wf['id']}/events", params={"limit": 10**6}),
                 "limit")


# ---- 409 ------------------------------------------------------------------------------------


INVALID: list[tuple[str, str, dict[str, Any], str, str]] = [
    # (instance set up in, route, body, status in the answer, requested in the answer)
    ("Q", "log_done", {}, "Q", "D"),
    ("Q", "log_distributor_id", {"distributor_id": "1", "next_report_increment": INC},
     "Q", "O"),
    ("Q", "log_error_worker_node", {"error_state": "E"}, "Q", "E"),
    ("O", "log_no_distributor_id", {"no_id_err_msg": "x"}, "O", "W"),
    ("I", "log_done", {}, "I", "D"),
    ("orphan", "log_running", {"next_report_increment": INC}, "O", "R"),
]


async def test_an_invalid_transition_is_409_with_the_current_status(
    client: httpx.AsyncClient, db: Database
) -> None:
    async def check(setup: str, path: str, body: dict[str, Any], status: str,
                    requested: str) -> None:
        wf = await submit(client, 1)
        task_id = wf["task_ids"][0]
        ti_id = await live_ti(client, task_id)
        if setup in ("I", "O", "orphan"):
            await instantiate(client, [ti_id])
        if setup in ("O", "orphan"):
            await launch(client, ti_id)
        if setup == "orphan":  # a launched instance whose task is DONE already
            await set_task_status(db, task_id, "D")
        before = await written(db, ti_id)
        resp = await client.post(f"{FSM}/task_instance/{ti_id}/{path}", json=body)
        assert resp.status_code == 409, resp.text
        answer = resp.json()
        assert (answer["status"], answer["requested"]) == (status, requested), answer
        assert answer["task_instance_id"] == ti_id and answer["detail"], answer
        assert await written(db, ti_id) == before

    await each_case({f"{c[1]} on {c[0]}": c for c in INVALID}, check)


# ---- 503 on a lock timeout ------------------------------------------------------------------


class HeldLock:
    """Another client holding a lock: the instance's rows (PostgreSQL), SQLite's write lock."""

    def __init__(self, db_url: str, ti_id: int) -> None:
        self.db_url = db_url
        self.ti_id = ti_id

    async def __aenter__(self) -> "HeldLock":
        if self.db_url.startswith("sqlite"):
            path = self.db_url.split("///", 1)[1]
            self.sqlite = sqlite3.connect(path, isolation_level=None, timeout=5)
            self.sqlite.execute("BEGIN IMMEDIATE")
        else:
            self.engine = create_async_engine(self.db_url)
            self.conn = await self.engine.connect()
            await self.conn.begin()
            await self.conn.execute(
                text("SELECT id FROM task_instance WHERE id = :i FOR UPDATE"), {"i": self.ti_id})
            # and its deadline row, if it has one: a heartbeat writes only that row
            await self.conn.execute(
                text("SELECT 1 FROM task_instance_deadline WHERE task_instance_id = :i "
                     "FOR UPDATE"), {"i": self.ti_id})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.db_url.startswith("sqlite"):
            self.sqlite.execute("ROLLBACK")
            self.sqlite.close()
        else:
            await self.conn.rollback()
            await self.conn.close()
            await self.engine.dispose()


def _unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, f"{resp.request.url}: {resp.status_code} {resp.text}"
    assert int(resp.headers["retry-after"]) > 0
    assert isinstance(resp.json()["detail"], str)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("log_error_worker_node", {"error_state": "E", "error_description": "x"}),  # locks
        ("log_report_by", {"next_report_increment": INC}),  # no lock: a guarded UPDATE
    ],
)
async def test_a_lock_timeout_is_503_with_retry_after(
    db_url: str, db: Database, route: str, body: dict[str, Any]
) -> None:
    settings = Settings(database_url=db_url, lock_timeout=0.5, reconciler_enabled=False)
    async with app_client(settings) as client:
        _, _, ti_id = await running_task(client)
        before = await written(db, ti_id)
        async with HeldLock(db_url, ti_id):
            resp = await client.post(f"{FSM}/task_instance/{ti_id}/{route}", json=body)
        _unavailable(resp)
        assert await written(db, ti_id) == before
        # the lock is gone: the same request now goes through
        retried = await client.post(f"{FSM}/task_instance/{ti_id}/{route}", json=body)
        assert retried.status_code == 200, retried.text


async def test_a_503_says_what_it_is_and_hides_the_database_message(
    db_url: str, db: Database
) -> None:
    settings = Settings(database_url=db_url, lock_timeout=0.5, reconciler_enabled=False)
    async with app_client(settings) as client:
        _, _, ti_id = await running_task(client)
        async with HeldLock(db_url, ti_id):
            resp = await client.post(f"{FSM}/task_instance/{ti_id}/log_done", json={})
        _unavailable(resp)
        body = resp.json()
        # "error" names the kind of error, as on every other error answer (schemas.ErrorOut);
        # the database's own message is for the server log, not for the client
        assert body["error"] == "Unavailable", body


async def test_a_lock_timeout_on_submission_is_503(db_url: str) -> None:
    settings = Settings(database_url=db_url, lock_timeout=0.5, reconciler_enabled=False)
    async with app_client(settings) as client:
        _, _, ti_id = await running_task(client)
        if db_url.startswith("postgresql"):
            pytest.skip("a PostgreSQL submission takes no lock another writer holds")
        async with HeldLock(db_url, ti_id):
            resp = await client.post("/v3/workflows", json={
                "name": "w", "tasks": [{"name": "a", "command": "true"}]})
        _unavailable(resp)
        assert await done(client, ti_id) == "D"


# ---- an un-migrated database ----------------------------------------------------------------


def _serve(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FARMSTEAD_DATABASE_URL": url, "FARMSTEAD_RECONCILER_ENABLED": "false",
           "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "farmstead.cli.main", "serve", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_a_server_refuses_an_unmigrated_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        path = tmp_path / "empty.db"
        path.touch()  # it must exist: a missing file is created and migrated
        result = _serve(f"sqlite+aiosqlite:///{path}")
        assert not sqlite3.connect(path).execute(
            "SELECT name FROM sqlite_master WHERE name = 'alembic_version'").fetchall()
    else:
        base = str(request.getfixturevalue("postgresql_url")).rsplit("/", 1)[0]
        name = f"farmstead_empty_{uuid.uuid4().hex[:10]}"
        asyncio.run(pg_admin(f"{base}/postgres", f'CREATE DATABASE "{name}"'))
        try:
            result = _serve(f"{base}/{name}")
        finally:
            asyncio.run(pg_admin(f"{base}/postgres", f'DROP DATABASE IF EXISTS "{name}" '
                                                      "WITH (FORCE)"))
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output
    assert "farmstead db upgrade" in output, output
    assert "Traceback" not in output, output


async def test_an_unmigrated_database_fails_the_lifespan(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    settings = Settings(database_url=f"sqlite+aiosqlite:///{path}", reconciler_enabled=False)
    with pytest.raises(Exception, match="farmstead db upgrade"):
        async with app_client(settings):
            pass


async def test_ready_reports_the_revision(client: httpx.AsyncClient) -> None:
    body = await ok(client.get("/ready"))
    assert body["status"] == "ready" and body["revision"] == body["head"]
    assert await ok(client.get("/health")) == {"status": "ok"}


async def test_a_row_read_after_errors_is_unchanged(
    client: httpx.AsyncClient, db: Database
) -> None:
    """A run of rejected requests (404, 409, 422) leaves the instance exactly as it was."""
    _, _, ti_id = await running_task(client)
    before = await ti_row(db, ti_id)
    await client.post(f"{FSM}/task_instance/{ti_id}/log_no_distributor_id", json={})
    await client.post(f"{FSM}/task_instance/{ti_id}/log_done", json={"maxrss": "big"})
    await client.post(f"{FSM}/task_instance/{ti_id}/log_error_worker_node",
                      json={"error_state": "X"})
    assert await ti_row(db, ti_id) == before
