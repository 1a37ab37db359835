"""End to end: the live event stream (SSE) of real server processes. A subscriber that keeps
disconnecting and reconnecting, each time to the other of two server processes on the same
database, with `Last-Event-ID`, loses and repeats nothing while more than 10,000 events flow
from concurrent writers through both processes."""

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from farmstead.db.engine import make_database

pytestmark = pytest.mark.e2e
ITERATIONS = 12  # per writer: a 100-task workflow, then 20 of its tasks run to DONE
WRITERS = 4


def sse(
    url: str, last_id: int, budget: int, idle: float = 60
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Up to `budget` events of the stream at `url` after `last_id`; then hang up (also after
    `idle` seconds without a byte: httpx.ReadTimeout)."""
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last_id)}
    with (
        httpx.Client(timeout=httpx.Timeout(30, read=idle)) as client,
        client.stream("GET", f"{url}/v3/events", headers=headers) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        for line in resp.iter_lines():
            if not line:
                if "id" in event:
                    yield int(event["id"]), event["event"], json.loads(event["data"])
                    budget -= 1
                    if budget <= 0:
                        return
                event = {}
                continue
            if line.startswith(":"):
                continue  # a ping
            key, _, value = line.partition(":")
            event[key] = value[1:] if value.startswith(" ") else value


def write(url: str, seed: int) -> None:
    """Submit workflows and run some of their tasks, as many clients would."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(ITERATIONS):
            tasks = [{"name": f"w{seed}-{i}-{k}", "command": "true"} for k in range(100)]
            wf = c.post("/v3/workflows", json={"name": f"w{seed}-{i}", "tasks": tasks})
            assert wf.status_code == 201, wf.text
            claimed = c.post("/v3/claims", json={"limit": 20, "workflow_id": wf.json()["id"]})
            assert claimed.status_code == 200, claimed.text
            for item in claimed.json()["data"]:
                ti = item["task_instance_id"]
                r = c.post(f"/v3/fsm/task_instance/{ti}/log_running",
                           json={"nodename": f"n{seed}", "next_report_increment": 600})  # fmt: skip
                assert r.status_code == 200, r.text
                r = c.post(f"/v3/fsm/task_instance/{ti}/log_done", json={"wallclock": 0.1})
                assert r.status_code == 200, r.text
                if rng.random() < 0.1:
                    time.sleep(0.01)


def all_event_ids(db_url: str) -> list[int]:
    async def read() -> list[int]:
        db = make_database(db_url)
        try:
            async with db.engine.connect() as conn:
                rows = await conn.execute(text("SELECT id FROM event ORDER BY id"))
                return [int(r[0]) for r in rows]
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_reconnecting_subscriber_loses_and_repeats_nothing(
    server_factory: Any, db_url: str
) -> None:
    servers = [server_factory(event_poll_interval=0.1) for _ in range(2)]
    received: list[int] = []
    types: dict[str, int] = {}
    finished = threading.Event()
    final: list[int] = []
    errors: list[BaseException] = []

    def subscribe() -> None:
        try:
            rng = random.Random(7)
            hop = 0
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                last = received[-1] if received else 0
                if finished.is_set() and final and last >= final[-1]:
                    return
                url = servers[hop % 2].url
                hop += 1
                with contextlib.suppress(httpx.ReadTimeout):  # quiet: look at the time, go on
                    for event_id, kind, data in sse(url, last, rng.randint(300, 1500), idle=3):
                        assert data["id"] == event_id and data["type"] == kind
                        received.append(event_id)
                        types[kind] = types.get(kind, 0) + 1
                        if finished.is_set() and final and event_id >= final[-1]:
                            break
            raise AssertionError(f"the subscriber did not catch up: {len(received)} events")
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=subscribe)
    reader.start()
    writers = [threading.Thread(target=write, args=(servers[i % 2].url, i)) for i in range(WRITERS)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    ids = all_event_ids(db_url)
    final.append(ids[-1])
    finished.set()
    reader.join(timeout=300)
    assert not errors, errors
    assert len(ids) > 10_000
    assert received == ids  # every event once, in order, across 2 processes and many hops
    assert types["task-sent"] == WRITERS * ITERATIONS * 100
    assert types["task-succeeded"] == WRITERS * ITERATIONS * 20
