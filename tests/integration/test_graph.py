"""Dependencies: tasks HELD until their upstream is DONE, BLOCKED by a failed upstream, released
set-based; edges by name, element by element and all-of-a-workflow; cancel and resume."""

import asyncio
from typing import Any

import httpx
from factories import done, error, instantiate, ok, running, sql_rows, submit_array, task, task_ids

from farmstead.db.engine import Database
from helpers import assert_consistent


async def _graph(client: httpx.AsyncClient, deps: dict[str, list[str]], **extra: Any) -> Any:
    """A workflow of listed tasks named by `deps`' keys, each depending on its list."""
    body = {
        "name": "g",
        "tasks": [{"name": n, "command": f"echo {n}", "depends_on": up} for n, up in deps.items()],
    } | extra
    wf = await ok(client.post("/v3/workflows", json=body), 201)
    ids = await task_ids(client, wf["id"])
    wf["by_name"] = dict(zip(deps, ids, strict=True))
    return wf


async def _status(client: httpx.AsyncClient, task_id: int) -> str:
    return str((await task(client, task_id))["status"])


async def _statuses(client: httpx.AsyncClient, by_name: dict[str, int]) -> dict[str, str]:
    return {n: await _status(client, i) for n, i in by_name.items()}


async def _claim(client: httpx.AsyncClient, task_id: int) -> int:
    """Claim the one live instance of `task_id` (it must be QUEUED) and start it."""
    inst = [i for i in (await task(client, task_id))["instances"] if i["status"] == "Q"]
    assert len(inst) == 1, inst
    await instantiate(client, [inst[0]["id"]])
    await running(client, inst[0]["id"])
    return int(inst[0]["id"])


async def _run(client: httpx.AsyncClient, task_id: int) -> None:
    assert await done(client, await _claim(client, task_id)) == "D"


async def _fail(client: httpx.AsyncClient, task_id: int) -> None:
    assert await error(client, await _claim(client, task_id), "F", "it broke") == "F"


async def _workflow(client: httpx.AsyncClient, wf: int) -> dict[str, Any]:
    return await ok(client.get(f"/v3/workflows/{wf}"))  # type: ignore[no-any-return]


async def _explain(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    return await ok(client.get(f"/v3/tasks/{task_id}/explain"))  # type: ignore[no-any-return]


async def test_a_diamond_runs_in_order(client: httpx.AsyncClient, db: Database) -> None:
    wf = await _graph(client, {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    ids = wf["by_name"]
    assert wf["counts"] == {"Q": 1, "H": 3} and wf["status"] == "R"
    assert await _statuses(client, ids) == {"a": "Q", "b": "H", "c": "H", "d": "H"}
    why = await _explain(client, ids["b"])
    assert [r["code"] for r in why["reasons"]] == ["upstream"]
    assert "'a' (QUEUED)" in why["reasons"][0]["message"]
    await _run(client, ids["a"])
    assert await _statuses(client, ids) == {"a": "D", "b": "Q", "c": "Q", "d": "H"}
    await _run(client, ids["b"])
    why = await _explain(client, ids["d"])
    assert why["reasons"][0]["data"] | {"upstream": None} == {
        "upstream": None, "done": 1, "total": 2
    }  # fmt: skip
    assert [t["name"] for t in why["reasons"][0]["data"]["upstream"]] == ["c"]
    await _run(client, ids["c"])
    assert await _status(client, ids["d"]) == "Q"
    await _run(client, ids["d"])
    assert (await _workflow(client, wf["id"]))["status"] == "D"
    # each release wrote its task's move and its new instance
    moves = await sql_rows(
        db, "SELECT entity_id, from_status, to_status FROM event WHERE entity = 'task' "
        "AND from_status = 'H' ORDER BY entity_id"
    )  # fmt: skip
    assert [(m["entity_id"], m["to_status"]) for m in moves] == [
        (ids["b"], "Q"), (ids["c"], "Q"), (ids["d"], "Q")
    ]  # fmt: skip
    await assert_consistent(db)


async def test_a_failure_blocks_downstream_and_resume_reopens(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await _graph(
        client, {"a": [], "b": ["a"], "c": ["b"], "x": [], "y": ["x"]}, max_attempts=1
    )
    ids = wf["by_name"]
    await _fail(client, ids["a"])
    got = await _statuses(client, ids)
    assert got == {"a": "F", "b": "B", "c": "B", "x": "Q", "y": "H"}
    for name in ("b", "c"):  # each names the failed task, transitively too
        assert (await task(client, ids[name]))["last_error"] == (
            f"upstream task {ids['a']} ended ERROR_FATAL"
        )
    why = await _explain(client, ids["c"])
    assert [r["code"] for r in why["reasons"]] == ["upstream_failed"]
    assert str(ids["a"]) in why["reasons"][0]["message"]
    # the rest of the graph goes on; the workflow fails once nothing can move
    assert (await _workflow(client, wf["id"]))["status"] == "R"
    await _run(client, ids["x"])
    await _run(client, ids["y"])
    out = await _workflow(client, wf["id"])
    assert out["status"] == "F" and out["counts"] == {"F": 1, "B": 2, "D": 2}
    await assert_consistent(db)

    resumed = await ok(client.post(f"/v3/workflows/{wf['id']}/resume", json={}))
    assert resumed["changed"] == {"resumed": 1, "reopened": 2}
    assert await _statuses(client, ids) == {"a": "Q", "b": "H", "c": "H", "x": "D", "y": "D"}
    await _run(client, ids["a"])
    await _run(client, ids["b"])
    await _run(client, ids["c"])
    assert (await _workflow(client, wf["id"]))["status"] == "D"
    await assert_consistent(db)


async def test_bad_graphs_are_named_422(client: httpx.AsyncClient) -> None:
    async def refused(deps: dict[str, list[str]], *words: str) -> None:
        body = {"name": "g", "tasks": [{"name": n, "command": "true", "depends_on": d}
                                       for n, d in deps.items()]}  # fmt: skip
        r = await client.post("/v3/workflows", json=body)
        assert r.status_code == 422, r.text
        for word in words:
            assert word in r.text, r.text

    await refused({"a": ["nope"]}, "unknown task", "'nope'")
    await refused({"a": ["c"], "b": ["a"], "c": ["b"], "d": []}, "cycle", "'a' → 'c' → 'b' → 'a'")
    await refused({"a": ["a"]}, "cycle", "'a' → 'a'")
    twice = [{"name": "a", "command": "true"}, {"name": "a", "command": "true"}]
    body = {"name": "g", "tasks": [*twice, {"name": "b", "command": "true", "depends_on": ["a"]}]}
    r = await client.post("/v3/workflows", json=body)
    assert r.status_code == 422 and "'a'" in r.text, r.text
    # between workflows: an unknown one, and element by element with another size
    arr = await submit_array(client, 0, 2)
    for deps, word in (
        ([{"workflow": 999_999}], "999999"),
        ([{"workflow": arr["id"], "mode": "each"}], "3 tasks"),
    ):
        r = await client.post(
            "/v3/workflows",
            json={"name": "w", "array": {"command": "true", "last": 4}, "depends_on": deps},
        )
        assert r.status_code == 422 and word in r.text, r.text
    # nothing was made by any of these
    listed = await ok(client.get("/v3/workflows"))
    assert [w["id"] for w in listed["data"]] == [arr["id"]]


async def test_workflow_edges_each_and_all(client: httpx.AsyncClient, db: Database) -> None:
    up = await submit_array(client, 0, 2, max_attempts=1)
    each = await submit_array(client, 0, 2, depends_on=[{"workflow": up["id"], "mode": "each"}])
    after = await submit_array(client, 0, 1, depends_on=[{"workflow": up["id"]}])
    assert each["counts"] == {"H": 3} and after["counts"] == {"H": 2}
    up_ids, each_ids, after_ids = [await task_ids(client, w["id"]) for w in (up, each, after)]
    await _run(client, up_ids[1])
    assert [await _status(client, t) for t in each_ids] == ["H", "Q", "H"]
    assert [await _status(client, t) for t in after_ids] == ["H", "H"]
    why = await _explain(client, after_ids[0])
    assert why["reasons"][0]["data"] == {"workflow_id": up["id"], "unfinished": 2}
    await _fail(client, up_ids[0])
    assert [await _status(client, t) for t in each_ids] == ["B", "Q", "H"]
    assert [await _status(client, t) for t in after_ids] == ["B", "B"]
    assert (await _workflow(client, after["id"]))["status"] == "F"
    await _run(client, up_ids[2])
    await _run(client, each_ids[1])
    await _run(client, each_ids[2])
    assert (await _workflow(client, each["id"]))["status"] == "F"
    await assert_consistent(db)
    # resuming the upstream workflow re-opens what waits on it, in the other workflows too
    await ok(client.post(f"/v3/workflows/{up['id']}/resume", json={}))
    assert [await _status(client, t) for t in each_ids] == ["H", "D", "D"]
    assert [await _status(client, t) for t in after_ids] == ["H", "H"]
    await _run(client, up_ids[0])
    assert [await _status(client, t) for t in (each_ids[0], *after_ids)] == ["Q", "Q", "Q"]
    for t in (each_ids[0], *after_ids):
        await _run(client, t)
    for w in (up, each, after):
        assert (await _workflow(client, w["id"]))["status"] == "D"
    # an upstream that is already done: the new workflow starts QUEUED
    late = await submit_array(client, 0, 2, depends_on=[{"workflow": up["id"], "mode": "each"}])
    assert late["counts"] == {"Q": 3}
    await assert_consistent(db)


async def test_cancel_ends_held_tasks_and_blocks_other_workflows(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await _graph(client, {"a": [], "b": ["a"]})
    down = await submit_array(client, 0, 0, depends_on=[{"workflow": wf["id"]}])
    out = await ok(client.post(f"/v3/workflows/{wf['id']}/cancel", json={}))
    assert out["changed"] == {"held_cancelled": 1, "F": 1}
    assert await _statuses(client, wf["by_name"]) == {"a": "F", "b": "F"}
    assert (await _workflow(client, wf["id"]))["status"] == "C"
    (down_task,) = await task_ids(client, down["id"])
    assert await _status(client, down_task) == "B"
    assert (await _workflow(client, down["id"]))["status"] == "F"
    await assert_consistent(db)


async def test_many_upstream_tasks_finishing_at_once_release_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    """20 upstream tasks finish concurrently: the one downstream task is released exactly once
    (on PostgreSQL each DONE is its own transaction: the last to commit sees all the others)."""
    deps = {f"u{i}": [] for i in range(20)} | {"d": [f"u{i}" for i in range(20)]}
    wf = await _graph(client, deps)
    ids = wf["by_name"]
    tis = [await _claim(client, ids[f"u{i}"]) for i in range(20)]
    assert set(await asyncio.gather(*(done(client, t) for t in tis))) == {"D"}
    assert await _status(client, ids["d"]) == "Q"
    assert len((await task(client, ids["d"]))["instances"]) == 1
    await assert_consistent(db)


async def test_chains_run_through_claims(client: httpx.AsyncClient, db: Database) -> None:
    """50 chains of 10: every claim round finds only heads; all end DONE, in chain order."""
    deps: dict[str, list[str]] = {}
    for c in range(50):
        for k in range(10):
            deps[f"c{c}-{k}"] = [f"c{c}-{k - 1}"] if k else []
    wf = await _graph(client, deps)
    assert wf["counts"] == {"Q": 50, "H": 450}
    finished: list[int] = []
    while True:
        claimed = (await ok(client.post("/v3/claims", json={"limit": 64})))["data"]
        if not claimed:
            break
        assert len(claimed) <= 50  # one live head per chain at most
        for c in claimed:
            await running(client, c["task_instance_id"])
            await done(client, c["task_instance_id"])
            finished.append(c["task_id"])
    assert len(finished) == 500 and (await _workflow(client, wf["id"]))["status"] == "D"
    order = {t: i for i, t in enumerate(finished)}
    for c in range(50):
        chain = [wf["by_name"][f"c{c}-{k}"] for k in range(10)]
        assert [order[t] for t in chain] == sorted(order[t] for t in chain)
    await assert_consistent(db)


async def test_a_submission_after_a_failed_workflow_is_blocked_at_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    up = await _graph(client, {"a": [], "b": []}, max_attempts=1)
    await _fail(client, up["by_name"]["a"])
    down = await _graph(
        client, {"x": [], "y": ["x"]}, depends_on=[{"workflow": up["id"], "mode": "each"}]
    )
    # x waits on the failed a; y on x: both blocked, and nothing can move
    assert down["counts"] == {"B": 2} and down["status"] == "F"
    x, y = down["by_name"]["x"], down["by_name"]["y"]
    assert (await task(client, x))["last_error"] == (
        f"upstream task {up['by_name']['a']} ended ERROR_FATAL"
    )
    assert (await task(client, y))["last_error"] == (
        f"upstream task {up['by_name']['a']} ended ERROR_FATAL"
    )
    await _run(client, up["by_name"]["b"])
    assert await _status(client, y) == "B"
    await assert_consistent(db)
    await ok(client.post(f"/v3/workflows/{up['id']}/resume", json={}))
    assert [await _status(client, t) for t in (x, y)] == ["H", "H"]
    await _run(client, up["by_name"]["a"])
    await _run(client, x)
    await _run(client, y)
    assert (await _workflow(client, down["id"]))["status"] == "D"
    await assert_consistent(db)
