"""End to end: many clients racing on the same rows never deadlock, and the invariants hold.

A real `farmstead serve --workers 2` (with its reconciler sweeping fast) is driven by 64
concurrent clients for about 30 s: worker nodes claiming and reporting (log_distributor_id,
log_running, heartbeats, log_done, log_error_worker_node), distributors sending batch heartbeats
and array moves with ids in random order, stray single transitions, and operators cancelling and
resuming the same workflows; taskfarm workers claiming, updating and giving back the tasks of a
run while an operator restarts it. On PostgreSQL every row lock is taken in one global order
(instances by id, then tasks by id, then arrays by id), so the database never has to break a
deadlock: `pg_stat_database.deadlocks` does not move and no answer was a deadlock. On both
databases the only 5xx allowed is a 503 with Retry-After, and `farmstead db check` finds nothing.
"""

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from farmstead.db.engine import make_database
from helpers import assert_consistent

pytestmark = pytest.mark.e2e

DURATION = 30.0  # seconds of racing
WORKFLOWS = 6
TASKS_PER_WORKFLOW = 50
FSM = "/v3/fsm/task_instance"
SERVER = {
    "workers": 2,
    "reconciler_enabled": "true",
    "reconciler_interval": 0.5,
    "triage_grace": 1,
    "launch_timeout": 3,
    "no_heartbeat_min_age": 1,
    "kill_self_timeout": 2,
    "pool_size": 20,
}


@dataclass
class Race:
    """What the clients share: the ids they learnt, and every answer they got."""

    client: httpx.AsyncClient
    workflows: list[int]
    arrays: list[int]
    lo: int
    hi: int
    end: float
    run: str = ""  # a taskfarm run's uuid
    ti_array: dict[int, int] = field(default_factory=dict)
    batches: set[tuple[int, int]] = field(default_factory=set)
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)

    def running(self) -> bool:
        return time.monotonic() < self.end

    def some_ids(self, k: int) -> list[int]:
        """Up to `k` distinct instance ids, in random order."""
        pool = range(self.lo, self.hi + 1)
        return random.sample(pool, min(k, len(pool)))

    async def post(self, kind: str, path: str, body: Any = None, **params: Any) -> Any:
        """POST and tally the answer; None unless it was a 2xx."""
        return await self.call(kind, "POST", path, body, **params)

    async def call(self, kind: str, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """Send and tally the answer; None unless it was a 2xx ({} for an empty one)."""
        try:
            resp = await self.client.request(method, path, json=body, params=params or None)
        except httpx.HTTPError as exc:  # the server must answer, not drop us
            self.bad.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        self.answers[(kind, resp.status_code)] += 1
        if resp.status_code >= 500 and not (
            resp.status_code == 503 and "retry-after" in resp.headers
        ):
            self.bad.append(f"{kind}: {resp.status_code} {resp.text[:300]}")
        if not resp.is_success:
            return None
        return resp.json() if resp.content else {}


def _increment() -> float:
    return random.uniform(0.5, 4.0)  # short deadlines: the reconciler expires some


async def _worker(race: Race) -> None:
    """A worker node: claim a few, launch and run them, heartbeat a while, then finish or fail
    each (a failure is retried); many instances stay RUNNING meanwhile, for the others to hit."""
    while race.running():
        claimed = await race.post("claim", "/v3/claims", {"limit": random.randint(1, 8)})
        mine = []
        for item in (claimed or {}).get("data", []):
            ti = item["task_instance_id"]
            mine.append(ti)
            race.hi = max(race.hi, ti)
            race.ti_array[ti] = item["array_id"]
            race.batches.add((item["array_id"], item["array_batch_num"]))
        for ti in mine:
            await race.post(
                "log_distributor_id",
                f"{FSM}/{ti}/log_distributor_id",
                {"distributor_id": f"job{ti}", "next_report_increment": _increment()},
            )
            await race.post(
                "log_running",
                f"{FSM}/{ti}/log_running",
                {"nodename": "n", "next_report_increment": _increment()},
            )
        for _ in range(random.randint(0, 3)):
            await asyncio.sleep(random.uniform(0, 0.3))
            for ti in mine:
                await race.post(
                    "log_report_by",
                    f"{FSM}/{ti}/log_report_by",
                    {"next_report_increment": _increment()},
                )
        for ti in mine:
            if random.random() < 0.5:
                await race.post("log_done", f"{FSM}/{ti}/log_done", {"nodename": "n"})
            else:
                await race.post(
                    "log_error_worker_node",
                    f"{FSM}/{ti}/log_error_worker_node",
                    {"error_state": "E", "error_description": "boom"},
                )


async def _stray(race: Race) -> None:
    """Single transitions on any instance, timely or not (409s are expected)."""
    while race.running():
        ti = random.randint(race.lo, race.hi)
        move = random.choice(["log_running", "log_done", "log_error_worker_node"])
        body: dict[str, Any] = {"next_report_increment": _increment()}
        if move == "log_error_worker_node":
            body = {"error_state": random.choice(["E", "Z"]), "error_description": "stray"}
        elif move == "log_done":
            body = {}
        await race.post(move, f"{FSM}/{ti}/{move}", body)


async def _batch_heartbeats(race: Race) -> None:
    """A distributor's batch heartbeat: hundreds of ids, in random order."""
    while race.running():
        await race.post(
            "batch_heartbeat",
            f"{FSM}/log_report_by/batch",
            {"task_instance_ids": race.some_ids(1000), "next_report_increment": _increment()},
        )


async def _distributor(race: Race) -> None:
    """Set-based distributor routes: instantiate, array job ids, array launch and kill."""
    while race.running():
        await race.post(
            "instantiate",
            f"{FSM}/instantiate_task_instances",
            {"task_instance_ids": race.some_ids(200)},
        )
        array = random.choice(race.arrays)
        ids = [t for t, a in list(race.ti_array.items()) if a == array]
        random.shuffle(ids)
        if ids:
            await race.post(
                "array_distributor_ids",
                f"/v3/fsm/array/{array}/log_distributor_id",
                {str(t): f"job{t}" for t in ids[:300]},
            )
        if race.batches:
            array, batch = random.choice(sorted(race.batches))
            await race.post(
                "array_launch",
                f"/v3/fsm/array/{array}/transition_to_launched",
                {"batch_number": batch, "next_report_increment": _increment()},
            )
            array, batch = random.choice(sorted(race.batches))
            await race.post(
                "array_kill",
                f"/v3/fsm/array/{array}/transition_to_killed",
                {"batch_number": batch},
            )


async def _operator(race: Race) -> None:
    """Cancel a workflow, then resume it (sometimes with fresh tries for everything)."""
    while race.running():
        wf = random.choice(race.workflows)
        await race.post("cancel", f"/v3/workflows/{wf}/cancel")
        await asyncio.sleep(random.uniform(0, 0.2))
        await race.post("resume", f"/v3/workflows/{wf}/resume", all=random.random() < 0.3)


async def _taskfarm_worker(race: Race) -> None:
    """A taskfarm worker: claims a task of the run, reports progress, then finishes it or gives
    it back; it sometimes goes quiet long enough for the run's timeout to expire its task."""
    me = f"w{random.getrandbits(48):x}"
    body = {"uuid": me, "hostname": "n", "pid": 1}
    await race.post("tf_register", "/api/worker", body)
    while race.running():
        task = await race.post("tf_claim", f"/api/runs/{race.run}/task", {"worker_uuid": me})
        if not task:
            await asyncio.sleep(0.1)
            continue
        path = f"/api/runs/{race.run}/tasks/{task['task']}"
        for percent in (25, 50, 100)[: random.randint(1, 3)]:
            await asyncio.sleep(random.uniform(0, 0.6))
            await race.call("tf_progress", "PUT", path, {"percentCompleted": percent})
        status = random.choice(["done", "waiting", "computing"])
        await race.call("tf_status", "PUT", path, {"status": status})


async def _taskfarm_operator(race: Race) -> None:
    """Restart the run now and then: the expired tasks, or everything."""
    while race.running():
        await asyncio.sleep(random.uniform(0.5, 2.0))
        everything = "True" if random.random() < 0.3 else "False"
        await race.post("tf_restart", f"/api/runs/{race.run}/restart", all=everything)


ROLES = [
    (_worker, 22),
    (_stray, 8),
    (_batch_heartbeats, 10),
    (_distributor, 8),
    (_operator, 6),
    (_taskfarm_worker, 8),
    (_taskfarm_operator, 2),
]


async def _setup(client: httpx.AsyncClient) -> tuple[list[int], list[int], int, int]:
    """The workflows, their arrays, and the range of their first instances' ids."""
    workflows, arrays = [], []
    for n in range(WORKFLOWS):
        resp = await client.post(
            "/v3/workflows",
            json={
                "name": f"race{n}",
                "array": {"command": "true {i}", "first": 1, "last": TASKS_PER_WORKFLOW},
                "max_attempts": 1000,
            },
        )
        assert resp.status_code == 201, resp.text
        workflows.append(resp.json()["id"])
        arrays += resp.json()["array_ids"]
    ids = []
    for wf in (workflows[0], workflows[-1]):
        tasks = (await client.get(f"/v3/workflows/{wf}/tasks", params={"limit": 1000})).json()
        for task in tasks["data"]:
            detail = (await client.get(f"/v3/tasks/{task['id']}")).json()
            ids += [i["id"] for i in detail["instances"]]
    return workflows, arrays, min(ids), max(ids)


async def _race(url: str) -> Race:
    # Idle connections are dropped before the server's keep-alive timeout (5 s) could close
    # one under a request being sent.
    limits = httpx.Limits(max_connections=sum(n for _, n in ROLES), keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        workflows, arrays, lo, hi = await _setup(client)
        race = Race(client, workflows, arrays, lo, hi, time.monotonic() + DURATION)
        # a taskfarm run whose claimed tasks expire after 1.5 s without an update
        run = await client.post("/api/run", json={"numTasks": 100, "timeout": 1.5})
        assert run.status_code == 201, run.text
        race.run = run.json()["uuid"]
        await asyncio.gather(*(role(race) for role, n in ROLES for _ in range(n)))
    return race


async def _deadlocks(db_url: str) -> int:
    """PostgreSQL's count of deadlocks it detected (and broke) in the test database."""
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            found = await conn.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            )
            return int(found.scalar_one())
    finally:
        await engine.dispose()


async def _settled_deadlocks(db_url: str) -> int:
    """The count once every server backend has flushed its statistics (they do at exit)."""
    last = await _deadlocks(db_url)
    for _ in range(10):
        await asyncio.sleep(0.5)
        now = await _deadlocks(db_url)
        if now == last:
            return now
        last = now
    return last


async def test_racing_clients_never_deadlock(
    backend: str, db_url: str, server_factory: Any
) -> None:
    postgres = backend == "postgresql"
    before = await _deadlocks(db_url) if postgres else 0
    server = server_factory(**SERVER)
    race = await _race(server.url)
    server.stop()
    detected = (await _settled_deadlocks(db_url) - before) if postgres else 0
    log = server.log_path.read_text()
    in_log = log.lower().count("deadlock detected")
    trouble = [line[:300] for line in log.splitlines() if "deadlock" in line or "Error" in line]

    summary = sorted(race.answers.items())
    print(f"{backend}: deadlocks {detected} (log {in_log}); answers {summary}")
    assert detected == 0, f"PostgreSQL broke {detected} deadlock(s): {summary} {trouble[:20]}"
    assert in_log == 0, f"{in_log} request(s) failed with a deadlock: {trouble[:20]}"
    assert not race.bad, (race.bad[:10], trouble[:20])
    # The race did race: every kind of move was applied many times.
    for kind in ("claim", "log_running", "log_done", "log_error_worker_node", "cancel", "resume"):
        assert race.answers[(kind, 200)] > 0, (kind, summary)
    assert sum(n for (_, code), n in race.answers.items() if code == 200) > 500, summary
    for kind, code in (("tf_claim", 201), ("tf_progress", 204), ("tf_status", 204)):
        assert race.answers[(kind, code)] > 0, (kind, summary)
    assert race.answers[("tf_restart", 204)] > 0, summary

    db = make_database(db_url)
    try:
        await assert_consistent(db)
    finally:
        await db.dispose()
