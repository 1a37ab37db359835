"""The worker-node fast path (api/fastpath.py) answers exactly as the framework's routes do.

The same request is sent twice: with `Content-Type: application/json` it takes the fast path;
with another JSON type (`application/vnd.farmstead+json`) FastAPI answers it. Both answers
must be the same, for successes and for every kind of error. Both databases.
"""

import json
from typing import Any

import httpx
import pytest
from factories import FSM, INC, instantiate, launch, live_ti, ok, running_task, submit

from farmstead.api import fastpath

FAST = {"content-type": "application/json"}
SLOW = {"content-type": "application/vnd.farmstead+json"}
JOBMON = "/api/v3"


async def both(client: httpx.AsyncClient, method: str, path: str,
               body: Any = None) -> tuple[httpx.Response, httpx.Response]:
    """(fast path answer, framework answer) of the same request."""
    raw = None if body is None else json.dumps(body).encode()
    fast = await client.request(method, path, content=raw, headers=FAST if raw else None)
    slow = await client.request(method, path, content=raw, headers=SLOW if raw else None)
    return fast, slow


def same(fast: httpx.Response, slow: httpx.Response, code: int) -> Any:
    assert (fast.status_code, slow.status_code) == (code, code), (fast.text, slow.text)
    assert fast.json() == slow.json()
    assert fast.headers["content-type"] == "application/json"
    assert int(fast.headers["content-length"]) == len(fast.content)
    return fast.json()


async def test_reports_answer_alike(client: httpx.AsyncClient) -> None:
    for prefix in (FSM, JOBMON):
        wf = await submit(client, 2)
        a, b = [await live_ti(client, t) for t in wf["task_ids"]]
        await instantiate(client, [a, b], prefix)
        for ti in (a, b):
            await launch(client, ti, prefix)
        run = {"process_group_id": 7, "next_report_increment": INC, "nodename": "n1"}
        fast = await client.post(f"{prefix}/task_instance/{a}/log_running", json=run)
        slow = await client.post(f"{prefix}/task_instance/{b}/log_running",
                                 content=json.dumps(run), headers=SLOW)
        assert fast.status_code == slow.status_code == 200
        fa, sa = fast.json(), slow.json()
        assert fa["task_instance"][1] == sa["task_instance"][1] == "R"
        assert fa.keys() == sa.keys()
        assert [fa["task_instance"][i] for i in (2, 7, 8)] == [sa["task_instance"][i]
                                                               for i in (2, 7, 8)]
        assert same(*await both(client, "POST", f"{prefix}/task_instance/{a}/log_report_by",
                                {"next_report_increment": INC}), 200) == {"status": "R"}
        assert same(*await both(client, "POST", f"{prefix}/task_instance/{a}/log_done",
                                {"nodename": "n1", "wallclock": 1.5}), 200) == {"status": "D"}
        # a heartbeat of a DONE instance answers its status, both ways
        assert same(*await both(client, "POST", f"{prefix}/task_instance/{a}/log_report_by",
                                {"next_report_increment": INC}), 200) == {"status": "D"}


async def test_errors_answer_alike(client: httpx.AsyncClient) -> None:
    _wf, _task_id, ti = await running_task(client)
    missing = ti + 10_000
    cases: list[tuple[str, str, Any, int]] = [
        ("POST", f"{FSM}/task_instance/{missing}/log_done", {}, 404),
        ("POST", f"{FSM}/task_instance/{missing}/log_report_by", {"next_report_increment": 1}, 404),
        ("POST", f"{FSM}/task_instance/{ti}/log_report_by", {"next_report_increment": -1}, 422),
        ("POST", f"{FSM}/task_instance/{ti}/log_report_by", {}, 422),
        ("POST", f"{FSM}/task_instance/{ti}/log_report_by", [1, 2], 422),
        ("POST", f"{FSM}/task_instance/{ti}/log_running", {"next_report_increment": "x"}, 422),
        ("POST", f"{FSM}/task_instance/{ti}/log_error_worker_node", {"error_state": "D"}, 422),
        ("POST", f"{FSM}/task_instance/0/log_done", {}, 422),
        ("POST", f"{FSM}/task_instance/{2**63}/log_done", {}, 422),
        ("GET", f"{FSM}/get_array_task_instance_id/{2**63}/1/0", None, 422),
        ("GET", f"{FSM}/get_array_task_instance_id/1/{2**31}/0", None, 422),
        ("GET", f"{FSM}/get_array_task_instance_id/999999/1/0", None, 404),
    ]
    for method, path, body, code in cases:
        body_out = same(*await both(client, method, path, body), code)
        assert body_out["error"], body_out
    # an invalid move is 409 with the current status, on either path
    await ok(client.post(f"{FSM}/task_instance/{ti}/log_done", json={}))
    fast, slow = await both(client, "POST", f"{FSM}/task_instance/{ti}/log_error_worker_node",
                            {"error_state": "E", "error_description": "late"})
    assert fast.status_code == slow.status_code
    assert fast.json() == slow.json()


async def test_array_lookup_answers_alike(client: httpx.AsyncClient) -> None:
    wf = await ok(client.post("/v3/workflows", json={
        "name": "arr", "array": {"command": "run {i}", "first": 0, "last": 9}}), 201)
    array_id = wf["array_ids"][0]
    found = same(*await both(client, "GET", f"{FSM}/get_array_task_instance_id/{array_id}/1/3"),
                 200)
    assert isinstance(found["task_instance_id"], int)


@pytest.mark.parametrize(("method", "path", "headers", "body", "taken"), [
    ("POST", "/v3/fsm/task_instance/5/log_done", FAST, b"{}", True),
    ("POST", "/api/v3/task_instance/5/log_report_by", FAST, b'{"next_report_increment": 9}', True),
    ("POST", "/v3/fsm/task_instance/5/log_done", {}, b"{}", False),  # no content type
    ("POST", "/v3/fsm/task_instance/5/log_done", SLOW, b"{}", False),
    ("POST", "/v3/fsm/task_instance/5/log_done", {"content-type": "text/plain"}, b"{}", False),
    ("POST", "/v3/fsm/task_instance/5/log_done", FAST, b"{", False),  # not JSON
    ("POST", "/v3/fsm/task_instance/5/log_done", FAST, b'{"maxrss": -1}', False),  # invalid
    ("POST", "/v3/fsm/task_instance/5/log_distributor_id", FAST, b"{}", False),  # not taken
    ("POST", "/v3/fsm/task_instance/0/log_done", FAST, b"{}", False),
    ("GET", "/v3/fsm/task_instance/5/log_done", FAST, b"", False),
    ("GET", "/v3/fsm/get_array_task_instance_id/1/2/3", {}, b"", True),
    ("GET", "/v3/fsm/get_array_task_instance_id/0/2/3", {}, b"", False),
    ("POST", "/api/runs/ab12/task", FAST, b'{"worker_uuid": "w"}', True),
    ("POST", "/api/runs/ab12/task", SLOW, b'{"worker_uuid": "w"}', False),
    ("POST", "/api/runs/ab12/task", FAST, b"{}", False),  # invalid: FastAPI words the 400
    ("PUT", "/api/runs/ab12/tasks/3", FAST, b'{"percentCompleted": 5}', True),
    ("PUT", "/api/runs/ab12/tasks/3", FAST, b'{"percentCompleted": 5, "x": 1}', False),
    ("GET", "/api/runs/ab12/tasks/3", {}, b"", True),
    ("GET", "/api/runs/ab12", {}, b"", False),  # not a worker call
    ("POST", "/api/runs/ab12/restart", FAST, b"", False),
])
async def test_what_the_fast_path_takes(client: httpx.AsyncClient, method: str, path: str,
                                        headers: dict[str, str], body: bytes,
                                        taken: bool) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    app: Any = client._transport.app  # type: ignore[attr-defined]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()], "app": app}
    assert await fastpath.handle(scope, body, send) is taken
    assert bool(sent) is taken
    if taken:  # instance 5 / array 1 may or may not exist: an answer either way
        assert sent[0]["status"] in (200, 404)


async def test_taskfarm_calls_answer_alike(client: httpx.AsyncClient) -> None:
    run = (await ok(client.post("/api/run", json={"numTasks": 4}), 201))["uuid"]
    await ok(client.post("/api/worker", json={"uuid": "w", "hostname": "h", "pid": 1}), 201)
    fast, slow = await both(client, "POST", f"/api/runs/{run}/task", {"worker_uuid": "w"})
    assert fast.status_code == slow.status_code == 201, (fast.text, slow.text)
    assert fast.json().keys() == slow.json().keys()
    assert fast.json()["status"] == slow.json()["status"] == "computing"
    n = fast.json()["task"]
    task = f"/api/runs/{run}/tasks/{n}"
    # an unknown query parameter sends a GET on to FastAPI, which ignores it
    for info in ("", "status", "percentCompleted"):
        got = await client.get(task, params={"info": info})
        framework = await client.get(task, params={"info": info, "slow": "1"})
        assert (got.status_code, got.json()) == (framework.status_code, framework.json()) == (
            200, got.json())
    for query in ({"info": "nope"}, {}):
        bad = f"/api/runs/{run}/tasks/99" if not query else task
        got = await client.get(bad, params=query)
        framework = await client.get(bad, params={**query, "slow": "1"})
        assert got.status_code == framework.status_code == 404
        assert got.json() == framework.json()
    fast, slow = await both(client, "PUT", task, {"percentCompleted": 40})
    assert fast.status_code == slow.status_code == 204 and fast.content == slow.content == b""
    for body in ({"percentCompleted": 140}, {"bogus": 1}):
        fast, slow = await both(client, "PUT", task, body)
        assert fast.status_code == slow.status_code == 400
        assert fast.json() == slow.json()
    same(*await both(client, "PUT", f"/api/runs/nope/tasks/{n}", {"percentCompleted": 1}), 404)
    same(*await both(client, "POST", "/api/runs/nope/task", {"worker_uuid": "w"}), 404)
    assert (await client.get(task, params={"info": "percentCompleted"})).json() == {
        "percentCompleted": 40.0}
