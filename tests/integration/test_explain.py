"""GET /v3/tasks/{id}/explain: why a task is where it is, each reason on its own."""

from typing import Any

import httpx
from factories import done, error, ok, running, sql_exec, submit_array

from farmstead.db.engine import Database


async def _explain(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    return await ok(client.get(f"/v3/tasks/{task_id}/explain"))  # type: ignore[no-any-return]


def _codes(out: dict[str, Any]) -> list[str]:
    return [r["code"] for r in out["reasons"]]


async def _first_task(client: httpx.AsyncClient, wf: int) -> int:
    return int((await ok(client.get(f"/v3/workflows/{wf}/tasks")))["data"][0]["id"])


async def _claim(client: httpx.AsyncClient, limit: int, **extra: Any) -> list[dict[str, Any]]:
    return (await ok(client.post("/v3/claims", json={"limit": limit, **extra})))["data"]  # type: ignore[no-any-return]


async def _agent(client: httpx.AsyncClient) -> int:
    body = {"name": "n", "hostname": "node-7", "kind": "worker"}
    return int((await ok(client.post("/v3/agents", json=body), 201))["id"])


async def test_a_queued_task_with_no_agent_about_says_so(client: httpx.AsyncClient) -> None:
    wf = (await submit_array(client, 0, 2))["id"]
    out = await _explain(client, await _first_task(client, wf))
    assert out["status"] == "Q" and _codes(out) == ["no_agent"]
    assert "no agent has claimed anything yet" in out["reasons"][0]["message"]


async def test_waiting_behind_others_running_and_done(client: httpx.AsyncClient) -> None:
    wf = (await submit_array(client, 0, 4))["id"]
    agent = await _agent(client)
    (claimed,) = await _claim(client, 1, agent_id=agent)
    last = (await ok(client.get(f"/v3/workflows/{wf}/tasks")))["data"][-1]["id"]
    waiting = await _explain(client, last)
    assert _codes(waiting) == ["waiting"]
    assert waiting["reasons"][0]["data"]["ahead"] == 3  # tasks 2..4 go first
    assert waiting["reasons"][0]["data"]["queue"] == "/"

    ti = claimed["task_instance_id"]
    await running(client, ti, nodename="node-7")
    out = await _explain(client, claimed["task_id"])
    assert _codes(out) == ["running"] and "node-7" in out["reasons"][0]["message"]
    assert out["reasons"][0]["data"]["agent_id"] == agent
    await done(client, ti)
    out = await _explain(client, claimed["task_id"])
    assert _codes(out) == ["done"] and out["attempts"] == 1


async def test_limits_that_hold_a_task_are_named(client: httpx.AsyncClient) -> None:
    await ok(client.post("/v3/queues", json={"path": "/small", "maximum_agents": 1}), 201)
    wf = (await submit_array(client, 0, 2, queue="/small", max_concurrently_running=1))["id"]
    await _claim(client, 5, agent_id=await _agent(client))
    tasks = (await ok(client.get(f"/v3/workflows/{wf}/tasks", params={"status": "Q"})))["data"]
    out = await _explain(client, tasks[0]["id"])
    assert _codes(out) == ["array_limit", "queue_maximum"]
    assert out["reasons"][1]["data"] == {"queue": "/small", "maximum": 1, "agents": 1}
    assert "queue /small is at its maximum of 1 agents" in out["reasons"][1]["message"]


async def test_a_retry_hold_and_the_failing_agent(client: httpx.AsyncClient, db: Database) -> None:
    wf = (await submit_array(client, 0, 0, retry_delay=3600))["id"]
    agent = await _agent(client)
    (claimed,) = await _claim(client, 1, agent_id=agent)
    await running(client, claimed["task_instance_id"])
    assert await error(client, claimed["task_instance_id"]) == "E"
    out = await _explain(client, claimed["task_id"])
    assert _codes(out) == ["retry_hold", "avoids_agent"]
    assert out["failures"] == 1
    await sql_exec(
        db, "UPDATE task_instance SET available_date = NULL WHERE workflow_id = :w", w=wf
    )
    assert _codes(await _explain(client, claimed["task_id"])) == ["avoids_agent"]


async def test_cancelled_says_by_whom_and_unknown_is_404(client: httpx.AsyncClient) -> None:
    wf = (await submit_array(client, 0, 1))["id"]
    await ok(client.post(f"/v3/workflows/{wf}/cancel"))
    out = await _explain(client, await _first_task(client, wf))
    assert out["status"] == "F" and _codes(out) == ["cancelled"]
    assert out["reasons"][0]["data"]["by"] is not None
    assert "cancelled by" in out["reasons"][0]["message"]
    missing = await client.get("/v3/tasks/999999/explain")
    assert missing.status_code == 404
