"""Queues and agents (issue 12): the admin API, claims by the queue rules and the array limit,
a weighted share that converges, limits under 64 concurrent claimers, task bookkeeping."""

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import httpx
from factories import done, error, ok, running, sql_exec, sql_rows, sql_scalar, submit_array

from farmstead.db.engine import Database
from helpers import assert_consistent


async def _queue(client: httpx.AsyncClient, path: str, **knobs: Any) -> dict[str, Any]:
    return await ok(client.post("/v3/queues", json={"path": path, **knobs}), 201)  # type: ignore[no-any-return]


async def _agent(client: httpx.AsyncClient, name: str = "a") -> int:
    body = {"name": name, "hostname": f"host-{name}", "kind": "worker", "slots": 1}
    return int((await ok(client.post("/v3/agents", json=body), 201))["id"])


async def _claim(client: httpx.AsyncClient, limit: int, **extra: Any) -> list[dict[str, Any]]:
    body = {"limit": limit, **extra}
    return (await ok(client.post("/v3/claims", json=body)))["data"]  # type: ignore[no-any-return]


async def _wf(client: httpx.AsyncClient, n: int, **extra: Any) -> int:
    return int((await submit_array(client, 0, n - 1, **extra))["id"])


async def _assigned(db: Database) -> dict[int, int]:
    """Instances holding an agent, per workflow, counted from the rows (not the counters)."""
    rows = await sql_rows(
        db,
        "SELECT workflow_id, count(*) AS n FROM task_instance "
        "WHERE status IN ('I', 'O', 'R', 'T', 'K') GROUP BY workflow_id",
    )
    return {r["workflow_id"]: r["n"] for r in rows}


def _by_workflow(claimed: list[dict[str, Any]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for c in claimed:
        out[c["workflow_id"]] = out.get(c["workflow_id"], 0) + 1
    return out


# --- admin --------------------------------------------------------------------------------


async def test_queues_are_created_listed_changed_moved_and_deleted(
    client: httpx.AsyncClient,
) -> None:
    assert (await ok(client.get("/v3/queues")))["data"] == []
    render = await _queue(client, "/render", weight=3)
    film = await _queue(client, "/render/film-a", priority=5, maximum_agents=4)
    assert (render["path"], render["parent"], render["weight"]) == ("/render", None, 3)
    assert (film["path"], film["parent"], film["maximum_agents"]) == (
        "/render/film-a",
        "/render",
        4,
    )
    await _queue(client, "/sim")
    wf = await _wf(client, 3, queue="/render/film-a")
    shown = await ok(client.get(f"/v3/workflows/{wf}"))
    assert shown["queue"] == "/render/film-a"

    listed = (await ok(client.get("/v3/queues")))["data"]
    assert [q["path"] for q in listed] == ["/render", "/render/film-a", "/sim"]
    by_path = {q["path"]: q for q in listed}
    assert by_path["/render/film-a"]["queued"] == 3 and by_path["/render"]["queued"] == 3
    assert by_path["/render/film-a"]["workflows"] == [wf] and by_path["/sim"]["queued"] == 0

    # knobs change; a maximum is unset with `clear`
    changed = await ok(
        client.patch("/v3/queues/render/film-a", json={"weight": 7, "clear": ["maximum_agents"]})
    )
    assert (changed["weight"], changed["maximum_agents"], changed["priority"]) == (7, None, 5)
    # a move takes the subtree along; never into itself
    await _queue(client, "/render/film-a/shots")
    moved = await ok(client.patch("/v3/queues/render/film-a", json={"move_to": "/sim"}))
    assert moved["path"] == "/sim/film-a"
    paths = [q["path"] for q in (await ok(client.get("/v3/queues")))["data"]]
    assert paths == ["/render", "/sim", "/sim/film-a", "/sim/film-a/shots"]
    assert (await ok(client.get(f"/v3/workflows/{wf}")))["queue"] == "/sim/film-a"
    assert (
        await client.patch("/v3/queues/sim", json={"move_to": "/sim/film-a"})
    ).status_code == 422

    # errors say what is wrong
    assert (await client.post("/v3/queues", json={"path": "/nope/x"})).status_code == 404
    assert (await client.post("/v3/queues", json={"path": "/sim"})).status_code == 409
    assert (await client.post("/v3/queues", json={"path": "/bad name"})).status_code == 422
    assert (await client.post("/v3/queues", json={"path": "/"})).status_code == 422
    low_high = {"path": "/x", "minimum_agents": 5, "maximum_agents": 2}
    assert (await client.post("/v3/queues", json=low_high)).status_code == 422
    bad = await client.post(
        "/v3/workflows",
        json={"name": "w", "tasks": [{"name": "t", "command": "true"}], "queue": "/missing"},
    )
    assert bad.status_code == 404 and "/missing" in bad.json()["detail"]
    assert (await client.get("/v3/queues/missing")).status_code == 404

    # delete: only an empty queue
    assert (await client.delete("/v3/queues/sim/film-a")).status_code == 409
    assert (await client.delete("/v3/queues/sim/film-a/shots")).status_code == 204
    assert (await client.patch(f"/v3/workflows/{wf}", json={"queue": "/"})).status_code == 204
    assert (await ok(client.get(f"/v3/workflows/{wf}")))["queue"] == "/"
    assert (await client.delete("/v3/queues/sim/film-a")).status_code == 204


# --- the rules, through claims --------------------------------------------------------------


async def test_a_queue_maximum_is_never_passed(client: httpx.AsyncClient, db: Database) -> None:
    await _queue(client, "/capped", maximum_agents=2, priority=9)
    capped = await _wf(client, 10, queue="/capped")
    other = await _wf(client, 10)
    got = _by_workflow(await _claim(client, 10))
    assert got == {capped: 2, other: 8}
    assert await _claim(client, 5, workflow_id=capped) == []  # its workflow filter too
    await assert_consistent(db)


async def test_a_minimum_is_served_before_priority(client: httpx.AsyncClient, db: Database) -> None:
    await _queue(client, "/low", priority=-5, minimum_agents=3)
    await _queue(client, "/high", priority=5)
    low = await _wf(client, 10, queue="/low")
    high = await _wf(client, 10, queue="/high")
    assert _by_workflow(await _claim(client, 5)) == {low: 3, high: 2}


async def test_priority_then_weight_among_workflows(client: httpx.AsyncClient) -> None:
    a = await _wf(client, 20, weight=1)
    b = await _wf(client, 20, weight=3)
    top = await _wf(client, 2, priority=1)
    got = _by_workflow(await _claim(client, 10))
    assert got == {top: 2, a: 2, b: 6}


async def test_a_workflow_maximum_and_the_array_limit_hold(
    client: httpx.AsyncClient, db: Database
) -> None:
    capped = await _wf(client, 10, maximum_agents=1)
    limited = await _wf(client, 10, max_concurrently_running=2)
    got = await _claim(client, 20)
    assert _by_workflow(got) == {capped: 1, limited: 2}
    assert await _claim(client, 20) == []
    # one ends: its array has room for one more
    ti = next(c["task_instance_id"] for c in got if c["workflow_id"] == limited)
    await running(client, ti)
    assert await done(client, ti) == "D"
    assert _by_workflow(await _claim(client, 20)) == {limited: 1}
    await assert_consistent(db)


async def test_weighted_queues_converge_to_their_share(
    client: httpx.AsyncClient, db: Database
) -> None:
    """20 agents claim and finish work in two queues weighted 1:3: a 25/75 share of agents."""
    await _queue(client, "/one", weight=1)
    await _queue(client, "/three", weight=3)
    one = await _wf(client, 300, queue="/one")
    three = await _wf(client, 300, queue="/three")
    agents = [await _agent(client, f"n{i}") for i in range(20)]
    held: dict[int, list[int]] = {}  # agent -> its instance (a list of one)
    for a in agents:
        held[a] = [c["task_instance_id"] for c in await _claim(client, 1, agent_id=a)]
    rng = random.Random(12)
    shares = []
    for step in range(120):
        a = rng.choice(agents)
        for ti in held[a]:
            await running(client, ti)
            await done(client, ti)
        held[a] = [c["task_instance_id"] for c in await _claim(client, 1, agent_id=a)]
        if step >= 40:
            counts = await _assigned(db)
            shares.append(counts.get(one, 0) / (counts.get(one, 0) + counts.get(three, 0)))
    mean = sum(shares) / len(shares)
    assert abs(mean - 0.25) <= 0.05, mean
    queues = {q["path"]: q["agents"] for q in (await ok(client.get("/v3/queues")))["data"]}
    assert queues["/one"] + queues["/three"] == 20
    assert abs(queues["/one"] / 20 - 0.25) <= 0.05
    await assert_consistent(db)


async def test_limits_hold_under_64_concurrent_claimers(
    client: httpx.AsyncClient, db: Database
) -> None:
    await _queue(client, "/capped", maximum_agents=5, priority=9)
    await _queue(client, "/floor", minimum_agents=10, priority=-9)
    capped = await _wf(client, 100, queue="/capped")
    floor = await _wf(client, 100, queue="/floor")
    rest = await _wf(client, 300)
    limited = await _wf(client, 100, max_concurrently_running=7)
    agents = [await _agent(client, f"c{i}") for i in range(64)]

    async def claimer(a: int) -> list[dict[str, Any]]:
        got = []
        for _ in range(3):
            got += await _claim(client, 1, agent_id=a)
        return got

    results = await asyncio.gather(*(claimer(a) for a in agents))
    claimed = [c for r in results for c in r]
    ids = [c["task_instance_id"] for c in claimed]
    assert len(ids) == len(set(ids)) == 64 * 3  # none twice, every claim served
    counts = await _assigned(db)
    assert counts[capped] <= 5 and counts[limited] <= 7
    assert counts[floor] >= 10
    assert counts[capped] + counts[floor] + counts[rest] + counts[limited] == 192
    await assert_consistent(db)


# --- bookkeeping ---------------------------------------------------------------------------


async def test_attempts_failures_times_and_last_error(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await _wf(client, 1, max_attempts=3)
    a, b = await _agent(client, "a"), await _agent(client, "b")
    (first,) = await _claim(client, 1, agent_id=a)
    task = first["task_id"]
    await running(client, first["task_instance_id"])
    assert await error(client, first["task_instance_id"], description="killed") == "E"
    row = (await sql_rows(db, "SELECT * FROM task WHERE id = :t", t=task))[0]
    assert (row["attempts"], row["failures"], row["last_error"]) == (1, 1, "killed")
    # the retry is not offered to the agent it failed on while another agent is about
    assert await _claim(client, 1, agent_id=a) == []
    (second,) = await _claim(client, 1, agent_id=b)
    assert second["task_id"] == task
    await running(client, second["task_instance_id"])
    assert await done(client, second["task_instance_id"]) == "D"
    row = (await sql_rows(db, "SELECT * FROM task WHERE id = :t", t=task))[0]
    assert (row["attempts"], row["failures"], row["last_error"]) == (2, 1, None)
    assert row["time_started"] is not None and row["time_finished"] is not None
    agent_of = await sql_scalar(
        db, "SELECT agent_id FROM task_instance WHERE id = :i", i=second["task_instance_id"]
    )
    assert agent_of == b
    shown = (await ok(client.get(f"/v3/workflows/{wf}/tasks")))["data"][0]
    assert (shown["attempts"], shown["failures"]) == (2, 1)
    await assert_consistent(db)


async def test_an_agent_alone_takes_back_the_retry_that_failed_on_it(
    client: httpx.AsyncClient, db: Database
) -> None:
    await _wf(client, 1, max_attempts=2)
    old = await _agent(client, "gone")
    long_ago = "2000-01-01 00:00:00.000000" if db.is_sqlite else datetime(2000, 1, 1, tzinfo=UTC)
    await sql_exec(db, "UPDATE agent SET last_seen_date = :t WHERE id = :i", t=long_ago, i=old)
    a = await _agent(client, "alone")
    (first,) = await _claim(client, 1, agent_id=a)
    await running(client, first["task_instance_id"])
    assert await error(client, first["task_instance_id"]) == "E"
    (again,) = await _claim(client, 1, agent_id=a)  # nobody else could take it
    assert again["task_id"] == first["task_id"]


async def test_agents_register_heartbeat_and_are_listed(client: httpx.AsyncClient) -> None:
    a = await _agent(client, "x")
    assert (await client.post(f"/v3/agents/{a}/heartbeat")).status_code == 204
    assert (await client.post("/v3/agents/999999/heartbeat")).status_code == 404
    listed = (await ok(client.get("/v3/agents", params={"seen_within": 60})))["data"]
    assert [(x["id"], x["hostname"], x["kind"]) for x in listed] == [(a, "host-x", "worker")]
    unknown = await client.post("/v3/claims", json={"limit": 1, "agent_id": 424242})
    assert unknown.status_code == 404 and "register" in unknown.json()["detail"]
