"""Faults with real processes: a server killed with SIGKILL under load, PostgreSQL stopped and
started under load, and a worker's done report racing the reconciler's expiry.

The PostgreSQL that is stopped is a private one this module starts (tests/pg_cluster.py), never
the shared server the other tests use: running the suite must not take a developer's database
server down.

After each, `farmstead db check` (the real CLI, in a subprocess) must find every invariant
intact, and nothing may be left stuck: the reconciler retries what the fault lost.
"""

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import IN_CI, PG_ADMIN_URL, ServerProcess
from farmstead.db.engine import Database, make_database
from farmstead.db.migrate import upgrade
from farmstead.services.reconciler import Reconciler
from farmstead.settings import Settings
from pg_cluster import PrivateCluster, find_bindir, private_cluster

pytestmark = pytest.mark.e2e

FSM = "/v3/fsm/task_instance"
LONG = 600.0  # a heartbeat increment that never expires during a test


# ---- helpers --------------------------------------------------------------------------------


def db_check(url: str) -> subprocess.CompletedProcess[str]:
    """`farmstead db check` in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "farmstead.cli.main", "db", "check", "--database-url", url],
        capture_output=True, text=True, timeout=120, check=False,
    )


def assert_db_check_passes(url: str) -> None:
    """The real CLI finds every invariant intact (exit 0)."""
    result = db_check(url)
    assert result.returncode == 0, f"db check failed:\n{result.stdout}\n{result.stderr}"


async def rows(db: Database, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a read-only query, as dicts."""
    async with db.read_engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(text(sql), params)).mappings().all()]


async def scalar(db: Database, sql: str, **params: Any) -> Any:
    """The one value a query returns."""
    async with db.read_engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def statuses(db: Database, ids: Sequence[int]) -> dict[int, str]:
    """{instance id: status} for the instances of `ids`."""
    lo, hi = min(ids), max(ids)
    got = await rows(db, "SELECT id, status FROM task_instance WHERE id BETWEEN :lo AND :hi",
                     lo=lo, hi=hi)
    wanted = set(ids)
    return {r["id"]: r["status"] for r in got if r["id"] in wanted}


async def submit(c: httpx.AsyncClient, url: str, tasks: list[dict[str, Any]]) -> int:
    """Submit a workflow of listed tasks; returns its id."""
    resp = await c.post(f"{url}/v3/workflows", json={"name": "faults", "tasks": tasks})
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


async def launched(c: httpx.AsyncClient, url: str, db: Database, wf_id: int, inc: float
                   ) -> list[int]:
    """Instantiate and launch (array batch route) every instance of a new workflow."""
    ids = [r["id"] for r in await rows(
        db, "SELECT id FROM task_instance WHERE workflow_id = :w ORDER BY id", w=wf_id)]
    resp = await c.post(f"{url}{FSM}/instantiate_task_instances",
                        json={"task_instance_ids": ids})
    assert resp.status_code == 200, resp.text
    for array_id, _name, batch, *_ in resp.json()["task_instance_batches"]:
        resp = await c.post(f"{url}/v3/fsm/array/{array_id}/transition_to_launched",
                            json={"batch_number": batch, "next_report_increment": inc})
        assert resp.status_code == 200, resp.text
    return ids


async def post_retrying(c: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response:
    """POST as a worker does: a 503 with Retry-After is tried again (shortly, in a test)."""
    for _ in range(50):
        resp = await c.post(url, json=body)
        if resp.status_code != 503 or "retry-after" not in resp.headers:
            return resp
        await asyncio.sleep(0.2)
    return resp


async def pool(items: Sequence[int], size: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Run `work` on every item, `size` at a time."""
    queue = list(items)

    async def worker() -> None:
        while queue:
            await work(queue.pop(0))

    await asyncio.gather(*(worker() for _ in range(size)))


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"not within {timeout} s: {what}")


def sweeper(db: Database, url: str, **overrides: Any) -> Reconciler:
    """A reconciler in the test process."""
    values: dict[str, Any] = {
        "database_url": url, "reconciler_enabled": False, "triage_grace": 60.0,
        "launch_timeout": 600.0, "no_heartbeat_min_age": 600.0, "kill_self_timeout": 600.0,
    } | overrides
    return Reconciler(db, Settings(**values))


# ---- kill -9 under load ---------------------------------------------------------------------


@dataclass
class Load:
    """What the simulated workers saw."""

    done: list[int] = field(default_factory=list)  # answered DONE: must stay DONE
    server_errors: list[tuple[int, int, str]] = field(default_factory=list)
    cut_off: int = 0  # requests that died with the server


async def load_then_kill(c: httpx.AsyncClient, server: Any, ids: Sequence[int],
                         kill_after_done: int) -> Load:
    """Worker nodes (running, two heartbeats, done) on every instance, 40 at a time; the
    server is killed with SIGKILL once `kill_after_done` of them are DONE."""
    load = Load()
    killed = asyncio.Event()

    async def post(path: str, body: dict[str, Any], ti: int) -> httpx.Response | None:
        if killed.is_set():
            return None
        try:
            resp = await c.post(f"{server.url}{FSM}/{ti}/{path}", json=body)
        except httpx.TransportError:
            load.cut_off += 1
            return None
        if resp.status_code >= 500 and not (
                resp.status_code == 503 and "retry-after" in resp.headers):
            load.server_errors.append((ti, resp.status_code, resp.text))
        return resp

    async def worker_node(ti: int) -> None:
        if await post("log_running", {"next_report_increment": 1.0}, ti) is None:
            return
        for _ in range(2):
            await asyncio.sleep(0.02)
            if await post("log_report_by", {"next_report_increment": 1.0}, ti) is None:
                return
        resp = await post("log_done", {}, ti)
        if resp is not None and resp.status_code == 200 and resp.json()["status"] == "D":
            load.done.append(ti)

    async def killer() -> None:
        deadline = time.monotonic() + 10
        while len(load.done) < kill_after_done and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        server.stop(kill=True)  # SIGKILL, with requests in flight
        killed.set()

    await asyncio.gather(pool(random.sample(list(ids), len(ids)), 40, worker_node), killer())
    return load


async def assert_retried_or_failed(db: Database, lost: Sequence[int],
                                   max_attempts: dict[int, int]) -> None:
    """Each lost instance's task has a new QUEUED instance, or is ERROR_FATAL if out of tries."""
    for ti in lost:
        task = (await rows(db, "SELECT t.id, t.status, t.num_attempts FROM task t JOIN "
                               "task_instance ti ON ti.task_id = t.id WHERE ti.id = :i",
                           i=ti))[0]
        later = await rows(db, "SELECT id, status FROM task_instance WHERE task_id = :t "
                               "AND id > :i", t=task["id"], i=ti)
        if max_attempts[ti] == 1:
            assert task["status"] == "F" and later == [], (ti, task, later)
        else:
            assert task["status"] == "Q" and task["num_attempts"] == 2, (ti, task)
            assert [r["status"] for r in later] == ["Q"], (ti, later)


async def test_kill_9_under_load_then_restart_recovers_every_lost_instance(
    db_url: str, db: Database, server_factory: Any
) -> None:
    server = server_factory(pool_size=10)
    async with httpx.AsyncClient(timeout=10) as c:
        tasks = [{"name": f"t{i}", "command": f"run {i}", "max_attempts": 1 if i % 2 else 3}
                 for i in range(200)]
        wf_id = await submit(c, server.url, tasks)
        ids = await launched(c, server.url, db, wf_id, inc=1.0)
        load = await load_then_kill(c, server, ids, kill_after_done=50)
    max_attempts = {r["id"]: r["max_attempts"] for r in await rows(
        db, "SELECT ti.id, t.max_attempts FROM task_instance ti JOIN task t "
            "ON t.id = ti.task_id WHERE ti.workflow_id = :w", w=wf_id)}

    assert not load.server_errors, load.server_errors[:5]
    assert server.proc.returncode == -9
    # every transaction was all or nothing: the database is consistent as the server left it
    assert_db_check_passes(db_url)
    at_kill = await statuses(db, ids)
    lost_running = [i for i, s in at_kill.items() if s == "R"]
    lost_launched = [i for i, s in at_kill.items() if s == "O"]
    assert lost_running, f"the kill left nothing RUNNING: {at_kill}"
    assert lost_launched, "the kill left nothing LAUNCHED"
    assert all(at_kill[i] == "D" for i in load.done), "an answered DONE was lost"

    restarted = server_factory(
        pool_size=10, reconciler_enabled="true", reconciler_interval=0.2, triage_grace=0.2,
        no_heartbeat_min_age=0, launch_timeout=1, kill_self_timeout=1,
    )

    async def settled() -> bool:
        now = await statuses(db, ids)
        return not any(s in "ROTXI" for s in now.values())

    await wait_for(settled, 20, "every lost instance expired by the restarted reconciler")
    final = await statuses(db, ids)
    assert all(final[i] == "U" for i in lost_running), {i: final[i] for i in lost_running}
    assert all(final[i] == "E" for i in lost_launched), {i: final[i] for i in lost_launched}
    assert all(final[i] == "D" for i in load.done)
    await assert_retried_or_failed(db, lost_running + lost_launched, max_attempts)
    # a worker of a lost instance that reports late is told what became of it
    async with httpx.AsyncClient(timeout=10) as c:
        resp = await c.post(f"{restarted.url}{FSM}/{lost_running[0]}/log_done", json={})
        assert resp.status_code == 200 and resp.json() == {"status": "U"}, resp.text
    assert_db_check_passes(db_url)


# ---- PostgreSQL stopped and started under load ----------------------------------------------


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    """A PostgreSQL server of this test's own, to stop and start (removed afterwards)."""
    bindir = find_bindir()
    if bindir is None:
        missing = "PostgreSQL's server programs (initdb, pg_ctl, postgres) are not installed"
        if IN_CI:
            pytest.fail(f"{missing}: CI needs them")
        pytest.skip(missing)
    with private_cluster(bindir) as cluster:
        yield cluster


@pytest.fixture
def private_pg_url(private_pg: PrivateCluster) -> str:
    """The private server's `postgres` database, migrated."""
    url = private_pg.url()
    upgrade(url)
    return url


@pytest.fixture
async def private_db(private_pg_url: str) -> AsyncIterator[Database]:
    database = make_database(private_pg_url)
    yield database
    await database.dispose()


@pytest.fixture
def private_server(private_pg_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server on the private PostgreSQL, reconciling every 0.2 s."""
    server = ServerProcess(private_pg_url, tmp_path / "server.log", reconciler_enabled="true",
                           reconciler_interval=0.2, triage_grace=60).start()
    yield server
    server.stop()


async def _postmaster_started(url: str) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT pg_postmaster_start_time()"))).scalar()
    finally:
        await engine.dispose()


@pytest.fixture
def shared_pg_untouched() -> Iterator[None]:
    """The shared PostgreSQL (if there is one) runs throughout: same postmaster start time."""
    try:
        before = asyncio.run(_postmaster_started(PG_ADMIN_URL))
    except Exception:
        before = None
    yield
    if before is not None:
        assert asyncio.run(_postmaster_started(PG_ADMIN_URL)) == before, "shared PG restarted"


@dataclass
class Answer:
    sent: float
    received: float
    code: int  # 0: no HTTP answer at all
    retry_after: bool
    error: str = ""


async def test_postgresql_stop_and_start_under_load_answers_503_then_recovers(
    private_pg: PrivateCluster, private_pg_url: str, private_db: Database,
    private_server: ServerProcess, shared_pg_untouched: None
) -> None:
    db, db_url, server = private_db, private_pg_url, private_server
    answers: list[Answer] = []
    stop_load = asyncio.Event()
    timeout = httpx.Timeout(6.0)
    async with httpx.AsyncClient(timeout=timeout) as c:
        wf_id = await submit(c, server.url, [{"name": f"t{i}", "command": "x"}
                                             for i in range(40)])
        ids = await launched(c, server.url, db, wf_id, inc=LONG)

        async def go(ti: int) -> None:
            resp = await c.post(f"{server.url}{FSM}/{ti}/log_running",
                                json={"next_report_increment": LONG})
            assert resp.status_code == 200, resp.text

        await pool(ids, 8, go)

        async def one(k: int) -> None:
            ti = ids[k % len(ids)]
            sent = time.monotonic()
            try:
                if k % 3 == 0:
                    resp = await c.get(f"{server.url}/v3/workflows/{wf_id}")
                else:
                    resp = await c.post(f"{server.url}{FSM}/{ti}/log_report_by",
                                        json={"next_report_increment": LONG})
            except httpx.HTTPError as exc:
                answers.append(Answer(sent, time.monotonic(), 0, False, repr(exc)))
                return
            answers.append(Answer(sent, time.monotonic(), resp.status_code,
                                  "retry-after" in resp.headers, resp.text[:300]))

        async def load(lane: int) -> None:
            k = lane
            while not stop_load.is_set():
                await one(k)
                k += 8
                await asyncio.sleep(0.02)

        loaders = [asyncio.create_task(load(lane)) for lane in range(8)]
        try:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(private_pg.stop)
            down_from = time.monotonic()
            await asyncio.sleep(3)
            down_until = time.monotonic()
            await asyncio.to_thread(private_pg.start)  # returns once it accepts connections
            up_at = time.monotonic()

            async def answering() -> bool:
                recent = [a for a in answers if a.sent > time.monotonic() - 1.0]
                return len(recent) >= 10 and all(a.code == 200 for a in recent[-10:])

            await wait_for(answering, 10, "the server answers again after PostgreSQL restarts")
            recovered_at = time.monotonic()
            await asyncio.sleep(0.5)
        finally:
            stop_load.set()
            await asyncio.gather(*loaders, return_exceptions=True)

        # the reconciler loop survived the outage: a fresh expiry is still swept
        probe = ids[0]
        resp = await c.post(f"{server.url}{FSM}/{probe}/log_report_by",
                            json={"next_report_increment": 0.1})
        assert resp.status_code == 200 and resp.json() == {"status": "R"}, resp.text
        await db.dispose()  # the test's own pooled connections died with the database

        async def swept() -> bool:
            return (await statuses(db, [probe]))[probe] == "T"

        await wait_for(swept, 10, "the reconciler sweeps again after the outage")

    hung = [a for a in answers if a.code == 0]
    assert not hung, f"{len(hung)} requests got no answer: {hung[:3]}"
    slow = [a for a in answers if a.received - a.sent > 5]
    assert not slow, f"{len(slow)} answers took over 5 s: {slow[:3]}"
    bad = [a for a in answers if a.code not in (200, 503)]
    assert not bad, f"answers other than 200 and 503: {bad[:5]}"
    unhinted = [a for a in answers if a.code == 503 and not a.retry_after]
    assert not unhinted, f"503 without Retry-After: {unhinted[:3]}"
    while_down = [a for a in answers if a.sent >= down_from + 0.2 and a.received <= down_until]
    assert len(while_down) >= 10, f"only {len(while_down)} requests while PostgreSQL was down"
    assert all(a.code == 503 for a in while_down), [a for a in while_down if a.code != 503][:3]
    assert recovered_at - up_at <= 10
    assert server.proc is not None and server.proc.poll() is None, "the server died"
    assert_db_check_passes(db_url)


# ---- log_done racing the reconciler's expiry ------------------------------------------------


async def test_log_done_racing_reconciler_expiry_has_exactly_one_winner(
    db_url: str, db: Database, server_factory: Any
) -> None:
    server = server_factory(pool_size=10)
    n = 160
    async with httpx.AsyncClient(timeout=30) as c:
        wf_id = await submit(c, server.url, [{"name": f"t{i}", "command": "x",
                                              "max_attempts": 3} for i in range(n)])
        ids = await launched(c, server.url, db, wf_id, inc=LONG)

        async def go(ti: int) -> None:
            resp = await post_retrying(c, f"{server.url}{FSM}/{ti}/log_running",
                                       {"next_report_increment": 0.2})
            assert resp.status_code == 200, resp.text

        await pool(ids, 16, go)
        await asyncio.sleep(0.4)
        # every instance is past its deadline: all TRIAGING; then half rescued to RUNNING with
        # a deadline that expires at once, so the race meets both kinds of expiry
        assert (await sweeper(db, db_url).sweep()).moved == {"T": n}
        rescued = ids[::2]
        for ti in rescued:
            resp = await c.post(f"{server.url}{FSM}/{ti}/log_report_by",
                                json={"next_report_increment": 0.05})
            assert resp.json() == {"status": "R"}
        await asyncio.sleep(0.2)

        answers: dict[int, httpx.Response] = {}

        async def done(ti: int) -> None:
            answers[ti] = await post_retrying(c, f"{server.url}{FSM}/{ti}/log_done", {})

        async def expire() -> None:
            await sweeper(db, db_url, triage_grace=0, reconciler_chunk=10).sweep()

        order = random.sample(ids, len(ids))
        # the sweeps start first: on SQLite a sweeper waiting in the busy handler could otherwise
        # find every report already written (a race that never happened proves nothing)
        await asyncio.gather(expire(), expire(), pool(order, 32, done))
        # whatever is left TRIAGING or RUNNING past its deadline expires now
        await sweeper(db, db_url, triage_grace=0).sweep()

    assert all(r.status_code == 200 for r in answers.values()), [
        (t, r.status_code, r.text) for t, r in answers.items() if r.status_code != 200][:5]
    final = await statuses(db, ids)
    said = {ti: r.json()["status"] for ti, r in answers.items()}
    assert set(final.values()) <= {"D", "U"}, final
    for ti in ids:
        assert said[ti] == final[ti], (ti, said[ti], final[ti])
    winners = {s: sum(1 for v in final.values() if v == s) for s in ("D", "U")}
    assert winners["D"] and winners["U"], f"no race happened: {winners}"

    events = await rows(db, "SELECT entity_id, from_status, to_status FROM event "
                            "WHERE entity = 'task_instance' AND to_status IN ('D', 'U')")
    ends: dict[int, list[str]] = {}
    for e in events:
        ends.setdefault(e["entity_id"], []).append(e["to_status"])
    for ti in ids:
        assert ends.get(ti) == [final[ti]], (ti, ends.get(ti))
    errors = {r["task_instance_id"]: r["n"] for r in await rows(
        db, "SELECT task_instance_id, count(*) AS n FROM task_instance_error_log "
            "GROUP BY task_instance_id")}
    for ti in ids:
        assert errors.get(ti, 0) == (1 if final[ti] == "U" else 0), (ti, errors.get(ti))
    tasks = {r["ti"]: r for r in await rows(
        db, "SELECT ti.id AS ti, t.status, t.num_attempts, (SELECT count(*) FROM task_instance "
            "x WHERE x.task_id = t.id) AS n FROM task_instance ti JOIN task t "
            "ON t.id = ti.task_id WHERE ti.workflow_id = :w", w=wf_id)}
    for ti in ids:
        task = tasks[ti]
        if final[ti] == "D":
            assert (task["status"], task["num_attempts"], task["n"]) == ("D", 1, 1), task
        else:
            assert (task["status"], task["num_attempts"], task["n"]) == ("Q", 2, 2), task
    assert_db_check_passes(db_url)


# ---- one of several servers dies ------------------------------------------------------------


async def test_expiries_are_still_reconciled_after_one_of_two_servers_is_killed(
    db_url: str, db: Database, server_factory: Any
) -> None:
    """Two reconciling servers; the first (on SQLite: the one holding the reconciler lock) is
    killed with SIGKILL. The survivor must go on expiring instances: nothing stays stuck."""
    fast = {"reconciler_enabled": "true", "reconciler_interval": 0.2, "triage_grace": 0.2,
            "pool_size": 5}
    first = server_factory(**fast)
    survivor = server_factory(**fast)
    first.stop(kill=True)
    async with httpx.AsyncClient(timeout=10) as c:
        wf_id = await submit(c, survivor.url, [{"name": f"t{i}", "command": "x"}
                                               for i in range(5)])
        ids = await launched(c, survivor.url, db, wf_id, inc=LONG)
        for ti in ids:
            resp = await post_retrying(c, f"{survivor.url}{FSM}/{ti}/log_running",
                                       {"next_report_increment": 0.3})
            assert resp.status_code == 200, resp.text

    async def expired() -> bool:
        return set((await statuses(db, ids)).values()) == {"U"}

    await wait_for(expired, 8, "the surviving server reconciles the expired instances")
    assert_db_check_passes(db_url)
