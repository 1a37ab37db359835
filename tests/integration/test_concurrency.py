"""Many concurrent worker and distributor requests against the same instances of a real server
process; afterwards the database must be consistent. No hypothesis: a seeded random mix."""

import asyncio
import random
from collections import Counter, defaultdict
from typing import Any

import httpx
from factories import FSM, INC, LIVE, no_server_errors, ok, sql_rows, submit

from farmstead.db.engine import Database
from farmstead.fsm import CONSISTENT_LIVE_PAIRS, TaskStatus, TIStatus

TASKS = 20
ROUNDS = 5
PER_ROUND = 80


def _request(rng: random.Random, ti_ids: list[int]) -> tuple[str, str, dict[str, Any]]:
    """A random worker or distributor request on one of `ti_ids`."""
    ti = rng.choice(ti_ids)
    kind = rng.choices(
        ["running", "heartbeat", "done", "error", "resource", "instantiate", "launch",
         "known", "no_id"],
        weights=[5, 4, 3, 3, 1, 3, 3, 1, 1],
    )[0]
    base = f"{FSM}/task_instance"
    match kind:
        case "running":
            return kind, f"{base}/{ti}/log_running", {"next_report_increment": INC,
                                                      "process_group_id": ti, "nodename": "n"}
        case "heartbeat":
            return kind, f"{base}/{ti}/log_report_by", {"next_report_increment": INC,
                                                        "stdout": f"/o/{ti}"}
        case "done":
            return kind, f"{base}/{ti}/log_done", {"stdout_log": "ok"}
        case "error":
            return kind, f"{base}/{ti}/log_error_worker_node", {
                "error_state": "E", "error_description": f"exit {ti}"}
        case "resource":
            return kind, f"{base}/{ti}/log_error_worker_node", {
                "error_state": "Z", "error_description": "oom"}
        case "instantiate":
            ids = rng.sample(ti_ids, min(len(ti_ids), rng.randint(1, 8)))
            return kind, f"{base}/instantiate_task_instances", {"task_instance_ids": ids}
        case "launch":
            return kind, f"{base}/{ti}/log_distributor_id", {"distributor_id": str(ti),
                                                             "next_report_increment": INC}
        case "known":
            return kind, f"{base}/{ti}/log_known_error", {"error_state": "U",
                                                          "error_message": "lost"}
        case _:
            return kind, f"{base}/{ti}/log_no_distributor_id", {"no_id_err_msg": "no id"}


async def _check_consistency(db: Database, wf_id: int) -> None:
    tasks = {r["id"]: r for r in await sql_rows(
        db, "SELECT id, status, num_attempts, max_attempts FROM task WHERE workflow_id = :w",
        w=wf_id)}
    tis = await sql_rows(
        db, "SELECT id, task_id, status FROM task_instance WHERE workflow_id = :w ORDER BY id",
        w=wf_id)
    by_task: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ti in tis:
        by_task[ti["task_id"]].append(ti)
    problems = []
    for task_id, task in tasks.items():
        mine = by_task[task_id]
        live = [ti for ti in mine if ti["status"] in LIVE]
        if len(live) > 1:
            problems.append(f"task {task_id} has {len(live)} live instances: {live}")
        if task["num_attempts"] != len(mine):
            problems.append(f"task {task_id}: num_attempts {task['num_attempts']} but "
                            f"{len(mine)} instances")
        if task["num_attempts"] > task["max_attempts"]:
            problems.append(f"task {task_id}: {task['num_attempts']} tries of "
                            f"{task['max_attempts']}")
        if task["status"] == "D" and live:
            problems.append(f"task {task_id} is DONE with a live instance {live}")
        if task["status"] in ("D", "F") and live:
            problems.append(f"task {task_id} is {task['status']} with a live instance {live}")
        if task["status"] not in ("D", "F") and not live:
            problems.append(f"task {task_id} is {task['status']} without a live instance")
        for ti in live:
            pair = (TIStatus(ti["status"]), TaskStatus(task["status"]))
            if pair not in CONSISTENT_LIVE_PAIRS:
                problems.append(f"task {task_id} {task['status']} with live instance {ti}")
        done = [ti for ti in mine if ti["status"] == "D"]
        if (task["status"] == "D") != bool(done) or len(done) > 1:
            problems.append(f"task {task_id} is {task['status']} with DONE instances {done}")
    assert not problems, "\n".join(problems)


async def _check_events(db: Database, wf_id: int) -> None:
    """Each row's events chain from its first status to its current one, without gaps."""
    evs = await sql_rows(
        db, "SELECT entity, entity_id, from_status, to_status FROM event "
            "WHERE workflow_id = :w AND entity IN ('task', 'task_instance') ORDER BY id",
        w=wf_id)
    chains: dict[tuple[str, int], list[tuple[str | None, str]]] = defaultdict(list)
    for e in evs:
        chains[(e["entity"], e["entity_id"])].append((e["from_status"], e["to_status"]))
    current = {("task", r["id"]): r["status"] for r in await sql_rows(
        db, "SELECT id, status FROM task WHERE workflow_id = :w", w=wf_id)}
    current |= {("task_instance", r["id"]): r["status"] for r in await sql_rows(
        db, "SELECT id, status FROM task_instance WHERE workflow_id = :w", w=wf_id)}
    problems = []
    for key, status in current.items():
        chain = chains.get(key, [])
        at: str | None = chain[0][0] if chain else status
        if chain and at not in (None, "Q"):
            problems.append(f"{key} starts at {at}: {chain}")
        for frm, to in chain:
            if frm is not None and frm != at:
                problems.append(f"{key}: gap {at} -> {frm}: {chain}")
            at = to
        if at != status:
            problems.append(f"{key}: events end at {at}, row is {status}: {chain}")
    errors = await sql_rows(
        db, "SELECT task_instance_id AS ti, count(*) AS n FROM task_instance_error_log "
            "GROUP BY task_instance_id")
    logged = {r["ti"]: r["n"] for r in errors}
    for (entity, ti), chain in chains.items():
        if entity == "task_instance":
            want = sum(1 for _, to in chain if to in "EUZWF")
            if logged.get(ti, 0) != want:
                problems.append(f"instance {ti}: {logged.get(ti, 0)} error-log rows for "
                                f"{want} error moves")
    assert not problems, "\n".join(problems)


async def _random_mix(client: httpx.AsyncClient, db: Database, seed: str) -> int:
    """Rounds of random requests on every instance of a new workflow; returns its id."""
    rng = random.Random(seed)
    codes: Counter[tuple[str, int]] = Counter()
    wf = await submit(client, TASKS, max_attempts=3, resources={"memory": 2})

    async def fire(kind: str, path: str, body: dict[str, Any]) -> None:
        resp = await client.post(path, json=body)
        codes[(kind, resp.status_code)] += 1
        assert resp.status_code in (200, 409, 503), (path, body, resp.text)

    for _ in range(ROUNDS):
        ti_ids = [r["id"] for r in await sql_rows(
            db, "SELECT id FROM task_instance WHERE workflow_id = :w", w=wf["id"])]
        batch = [_request(rng, ti_ids) for _ in range(PER_ROUND)]
        # the same request twice at once, as a client retry after a timeout would send it
        batch += rng.sample(batch, PER_ROUND // 6)
        rng.shuffle(batch)
        await asyncio.gather(*(fire(*r) for r in batch))
    ok_count = sum(n for (_, code), n in codes.items() if code == 200)
    assert ok_count > ROUNDS * PER_ROUND // 4, codes
    return int(wf["id"])


async def _finish_and_fail_race(client: httpx.AsyncClient, db: Database) -> tuple[int, list[int]]:
    """A worker's done and error reports and a distributor's error for the same running
    instances, all at once: exactly one wins for each instance."""
    wf = await submit(client, TASKS, max_attempts=2)
    tis = [r["id"] for r in await sql_rows(
        db, "SELECT id FROM task_instance WHERE workflow_id = :w", w=wf["id"])]
    await asyncio.gather(*(
        client.post(f"{FSM}/task_instance/{ti}/log_running", json={"next_report_increment": INC})
        for ti in tis))
    results = await asyncio.gather(*(
        client.post(f"{FSM}/task_instance/{ti}/{route}", json=body)
        for ti in tis
        for route, body in (
            ("log_done", {}),
            ("log_error_worker_node", {"error_state": "E", "error_description": "x"}),
            ("log_known_error", {"error_state": "U", "error_message": "y"}),
            ("log_done", {}),
        )
    ))
    assert all(r.status_code in (200, 409, 503) for r in results), [r.text for r in results]
    return int(wf["id"]), tis


async def test_concurrent_requests_leave_the_database_consistent(
    server_factory: Any, db: Database, backend: str
) -> None:
    server = server_factory(pool_size=5)  # the PostgreSQL server is shared: few connections
    limits = httpx.Limits(max_connections=40, max_keepalive_connections=40)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits,
                                 event_hooks={"response": [no_server_errors]}) as client:
        race_wf, race_tis = await _finish_and_fail_race(client, db)
        mix_wf = await _random_mix(client, db, f"farmstead-{backend}")
        for wf_id in (race_wf, mix_wf):
            summary = await ok(client.get(f"/v3/workflows/{wf_id}"))
            assert summary["total"] == TASKS
    for wf_id in (race_wf, mix_wf):
        await _check_consistency(db, wf_id)
        await _check_events(db, wf_id)
    final = await sql_rows(db, "SELECT status FROM task_instance WHERE id IN ("
                               + ",".join(str(t) for t in race_tis) + ")")
    assert all(r["status"] in ("D", "E", "U") for r in final), final
