"""Several server processes, one database: every expired instance is moved exactly once.

On PostgreSQL every process reconciles (chunks locked with FOR UPDATE SKIP LOCKED); on SQLite
one process holds the reconciler lock and the others only serve requests.
"""

import asyncio
import fcntl
import time
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from factories import sql_rows, sql_scalar

from farmstead.db.engine import Database
from helpers import assert_consistent

FAST_RECONCILER = {
    "reconciler_enabled": "true", "reconciler_interval": 0.2, "triage_grace": 0.2,
    "reconciler_chunk": 200, "no_heartbeat_min_age": 600, "launch_timeout": 600,
    # the PostgreSQL cluster is shared (max_connections 100): ten connections per server
    "pool_size": 5,
}



async def running_instances(
    urls: Sequence[str], db: Database, n: int, inc: float, concurrency: int = 64
) -> list[int]:
    """Submit an array of `n` tasks and take every instance to RUNNING (increment `inc`),
    the requests spread over every server; returns the instance ids."""
    async with httpx.AsyncClient(timeout=60) as c:
        resp = await c.post(f"{urls[0]}/v3/workflows", json={
            "name": "many", "array": {"command": "run {i}", "first": 1, "last": n}})
        assert resp.status_code == 201, resp.text
        wf = resp.json()
        ids = [r["id"] for r in await sql_rows(
            db, "SELECT id FROM task_instance WHERE workflow_id = :w ORDER BY id", w=wf["id"])]
        assert len(ids) == n
        resp = await c.post(f"{urls[0]}/v3/fsm/task_instance/instantiate_task_instances",
                            json={"task_instance_ids": ids})
        assert resp.status_code == 200, resp.text
        for array_id, _name, batch, *_ in resp.json()["task_instance_batches"]:
            resp = await c.post(f"{urls[-1]}/v3/fsm/array/{array_id}/transition_to_launched",
                                json={"batch_number": batch, "next_report_increment": 600})
            assert resp.status_code == 200, resp.text

        answers: list[tuple[int, int, str]] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for ti in ids:
            queue.put_nowait(ti)

        async def worker(k: int) -> None:
            url = urls[k % len(urls)]
            while not queue.empty():
                ti = queue.get_nowait()
                for _ in range(50):  # a worker retries a 503, as its Retry-After says
                    r = await c.post(f"{url}/v3/fsm/task_instance/{ti}/log_running",
                                     json={"next_report_increment": inc})
                    if r.status_code != 503 or "retry-after" not in r.headers:
                        break
                    await asyncio.sleep(0.2)
                answers.append((ti, r.status_code, r.text))

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    bad = [a for a in answers if a[1] != 200]
    assert not bad, bad[:5]
    return ids


async def wait_until_expired(db: Database, ids: Sequence[int], timeout: float) -> None:
    """Until none of `ids` is RUNNING or TRIAGING any more."""
    lo, hi = min(ids), max(ids)
    deadline = time.monotonic() + timeout
    left = -1
    while time.monotonic() < deadline:
        left = int(await sql_scalar(
            db, "SELECT count(*) FROM task_instance WHERE id BETWEEN :lo AND :hi "
                "AND status IN ('R', 'T')", lo=lo, hi=hi))
        if left == 0:
            return
        await asyncio.sleep(0.25)
    pytest.fail(f"{left} instances still RUNNING or TRIAGING after {timeout} s")


async def assert_moved_exactly_once(db: Database, ids: Sequence[int]) -> None:
    """Each instance: one R→T event, one T→U, one retry; no event written twice."""
    lo, hi = min(ids), max(ids)
    counts = await sql_rows(
        db, "SELECT entity_id, "
            "sum(CASE WHEN from_status = 'R' AND to_status = 'T' THEN 1 ELSE 0 END) AS rt, "
            "sum(CASE WHEN from_status = 'T' AND to_status = 'U' THEN 1 ELSE 0 END) AS tu "
            "FROM event WHERE entity = 'task_instance' AND entity_id BETWEEN :lo AND :hi "
            "GROUP BY entity_id", lo=lo, hi=hi)
    by_id = {r["entity_id"]: (int(r["rt"]), int(r["tu"])) for r in counts}
    wrong = {i: by_id.get(i) for i in ids if by_id.get(i) != (1, 1)}
    assert not wrong, f"{len(wrong)} instances not moved exactly once: {list(wrong.items())[:10]}"
    statuses = await sql_rows(
        db, "SELECT status, count(*) AS n FROM task_instance WHERE id BETWEEN :lo AND :hi "
            "GROUP BY status", lo=lo, hi=hi)
    assert {r["status"]: r["n"] for r in statuses} == {"U": len(ids)}
    dupes = await sql_rows(
        db, "SELECT entity, entity_id, from_status, to_status, count(*) AS n FROM event "
            "WHERE entity != 'workflow' GROUP BY entity, entity_id, from_status, to_status "
            "HAVING count(*) > 1")
    assert dupes == [], dupes[:10]
    errors = await sql_rows(
        db, "SELECT task_instance_id, count(*) AS n FROM task_instance_error_log "
            "GROUP BY task_instance_id HAVING count(*) != 1")
    assert errors == []
    assert int(await sql_scalar(db, "SELECT count(*) FROM task_instance_error_log")) == len(ids)
    # one retry per task: two instances each, the second QUEUED
    tasks = await sql_rows(
        db, "SELECT num_attempts, status, count(*) AS n FROM task GROUP BY num_attempts, status")
    assert tasks == [{"num_attempts": 2, "status": "Q", "n": len(ids)}]
    queued = int(await sql_scalar(db, "SELECT count(*) FROM task_instance WHERE status = 'Q'"))
    assert queued == len(ids)
    await assert_consistent(db)


async def test_two_servers_on_postgresql_move_each_expired_instance_exactly_once(
    backend: str, server_factory: Any, db: Database
) -> None:
    if backend != "postgresql":
        pytest.skip("several reconciling servers on one database need PostgreSQL "
                    "(SQLite: see the single-reconciler test)")
    servers = [server_factory(**FAST_RECONCILER) for _ in range(2)]
    ids = await running_instances([s.url for s in servers], db, 2000, inc=0.5)
    await wait_until_expired(db, ids, timeout=60)
    # let a few more intervals pass: a late duplicate would show now
    await asyncio.sleep(0.6)
    await assert_moved_exactly_once(db, ids)
    for s in servers:
        assert s.proc is not None and s.proc.poll() is None, s.log_path.read_text()[-3000:]
        log = s.log_path.read_text()
        assert "reconciler sweep failed" not in log and "Traceback" not in log, log[-3000:]


async def test_two_servers_on_one_sqlite_file_only_one_reconciles(
    backend: str, server_factory: Any, db: Database
) -> None:
    if backend != "sqlite":
        pytest.skip("the single-reconciler lock is SQLite's")
    servers = [server_factory(**FAST_RECONCILER) for _ in range(2)]
    # one of them holds the reconciler lock on the side file
    lock_path = f"{db.write_engine.url.database}.reconciler.lock"
    with open(lock_path, "ab") as handle, pytest.raises(OSError):
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ids = await running_instances([s.url for s in servers], db, 300, inc=0.5, concurrency=16)
    await wait_until_expired(db, ids, timeout=60)
    await asyncio.sleep(0.6)
    await assert_moved_exactly_once(db, ids)
    for s in servers:
        assert s.proc is not None and s.proc.poll() is None, s.log_path.read_text()[-3000:]
        assert "reconciler sweep failed" not in s.log_path.read_text()
