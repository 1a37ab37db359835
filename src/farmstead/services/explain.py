"""Explain: why a task is where it is ("why isn't my task running?"), in words and as data."""

from datetime import UTC, datetime
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm import TaskStatus
from farmstead.services import queues
from farmstead.services.uow import in_transaction
from farmstead.store import graph as graph_store
from farmstead.store import scheduling as store
from farmstead.store import workflows as wf_store

#: no agent has got work for this long: said so (the farm may have no executor running)
IDLE_AFTER = 60.0
_AHEAD_MOST = 10_000
_BETWEEN = (TaskStatus.REGISTERING, TaskStatus.ERROR_RECOVERABLE, TaskStatus.ADJUSTING_RESOURCES)


def _reason(code: str, message: str, **data: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def _upstream(
    conn: Conn, task_id: int, status: TaskStatus, last_error: str | None
) -> list[dict[str, Any]]:
    """Waiting on upstream tasks or workflows (which, and their statuses), or blocked by one."""
    up = await graph_store.upstream_of(conn, task_id)
    if status == TaskStatus.BLOCKED:
        return [
            _reason(
                "upstream_failed",
                f"cannot run: {last_error or 'an upstream task ended ERROR_FATAL'}"
                " (a resume of the failed task's workflow re-opens it)",
                upstream=up["tasks"],
                workflows=up["workflows"],
            )
        ]
    out: list[dict[str, Any]] = []
    waiting = up["tasks"]
    if waiting:
        names = ", ".join(f"{t['id']} {t['name']!r} ({TaskStatus(t['status']).name})"
                          for t in waiting[:5])  # fmt: skip
        left = up["total"] - up["done"]
        more = f" and {left - 5} more" if left > 5 else ""
        out.append(
            _reason(
                "upstream",
                f"waiting on upstream task {names}{more}: {up['done']} of {up['total']} done",
                upstream=waiting,
                done=up["done"],
                total=up["total"],
            )
        )
    for wf in up["workflows"]:
        if wf["unfinished"]:
            out.append(
                _reason(
                    "upstream",
                    f"waiting on upstream workflow {wf['id']}: {wf['unfinished']} of its tasks "
                    "not done",
                    workflow_id=wf["id"],
                    unfinished=wf["unfinished"],
                )
            )
    return out or [_reason("upstream", "held: its upstream is done; it is about to be queued")]


async def explain(db: Database, task_id: int) -> dict[str, Any] | None:
    """The task's status and the reasons for it, most telling first; None if no such task."""
    return await in_transaction(db, lambda c: _explain(c, task_id), write=False)


async def _explain(conn: Conn, task_id: int) -> dict[str, Any] | None:
    detail = await wf_store.task_detail(conn, task_id)
    if detail is None:
        return None
    task = {k: v for k, v in detail.items() if k != "instances"}
    workflow = await wf_store.workflow_row(conn, task["workflow_id"])
    assert workflow is not None
    ti = await store.newest_instance(conn, task_id)
    status = TaskStatus(task["status"])
    reasons: list[dict[str, Any]] = []
    if workflow["cancelled_date"] is not None or status == TaskStatus.ERROR_FATAL:
        reasons += await _cancelled(conn, workflow)
    if status == TaskStatus.DONE:
        reasons.append(
            _reason(
                "done",
                f"done at {_when(task['time_finished'])} after {task['attempts']} attempt(s)",
                time_finished=task["time_finished"],
            )
        )
    elif status == TaskStatus.ERROR_FATAL and not reasons:
        reasons.append(
            _reason(
                "failed",
                f"failed for good after {task['failures']} failure(s)"
                + (f": {task['last_error'].splitlines()[0]}" if task["last_error"] else ""),
                last_error=task["last_error"],
            )
        )
    elif status in (TaskStatus.HELD, TaskStatus.BLOCKED):
        reasons += await _upstream(conn, task_id, status, task["last_error"])
    elif ti is not None and ti["status"] == "Q":
        reasons += await _queued(conn, task, workflow, ti)
    elif ti is not None and ti["status"] in ("I", "O", "R", "T", "K"):
        host = ti["nodename"] or "an unknown host"
        words = {"I": "claimed for", "O": "launched on", "R": "running on", "T": "running on",
                 "K": "being stopped on"}  # fmt: skip
        where = host if ti["status"] != "I" else f"agent {ti['agent_id']}"
        reasons.append(
            _reason(
                "running" if ti["status"] in ("R", "T") else "claimed",
                f"{words[ti['status']]} {where} since {_when(ti['status_date'])}"
                + (" (its heartbeat is late: being triaged)" if ti["status"] == "T" else ""),
                host=ti["nodename"],
                agent_id=ti["agent_id"],
                since=ti["status_date"],
                task_instance_id=ti["id"],
            )
        )
    elif status in _BETWEEN:
        reasons.append(_reason("between_tries", f"between tries (task status {status.name})"))
    if not reasons:
        reasons.append(_reason("status", f"task status {status.name}"))
    return {
        "task_id": task_id,
        "status": status.value,
        "status_name": status.name,
        "attempts": task["attempts"],
        "failures": task["failures"],
        "reasons": reasons,
    }


async def _cancelled(conn: Conn, workflow: dict[str, Any]) -> list[dict[str, Any]]:
    if workflow["cancelled_date"] is None:
        return []
    by = None
    for action in await store.workflow_actions(conn, workflow["id"]):
        if (action["details"] or {}).get("action") == "cancel":
            by = action["details"].get("by")
            break
    return [
        _reason(
            "cancelled",
            f"its workflow was cancelled by {by or 'someone'} at "
            f"{_when(workflow['cancelled_date'])}",
            by=by,
            cancelled_date=workflow["cancelled_date"],
        )
    ]


async def _queued(
    conn: Conn, task: dict[str, Any], workflow: dict[str, Any], ti: dict[str, Any]
) -> list[dict[str, Any]]:
    """Why a QUEUED instance has not been claimed: every limit that holds it, else its place."""
    out: list[dict[str, Any]] = []
    if ti["held"]:
        out.append(
            _reason(
                "retry_hold",
                f"held for the workflow's retry delay until {_when(ti['available_date'])}",
                until=ti["available_date"],
            )
        )
    if ti["pull"]:
        out.append(
            _reason(
                "pull",
                f"waiting for a taskfarm worker of run {workflow['uuid']} to claim it",
                run=workflow["uuid"],
            )
        )
    farm = await queues.read_farm(conn)
    arrays = {a.array_id: a for a in farm.arrays.get(task["workflow_id"], [])}
    array = arrays.get(ti["array_id"])
    if array is not None and array.assigned >= array.max_running:
        out.append(
            _reason(
                "array_limit",
                f"array {array.array_id} is at its concurrency limit of {array.max_running} "
                f"({array.assigned} running)",
                array_id=array.array_id,
                limit=array.max_running,
                running=array.assigned,
            )
        )
    leaf = farm.workflows.get(task["workflow_id"])
    if leaf is not None:
        for node in reversed(farm.path(leaf)[1:]):
            if node.maximum is not None and node.assigned >= node.maximum:
                kind, ident = node.key
                name = f"queue {farm.rows[ident]['path']}" if kind == "queue" else "its workflow"
                out.append(
                    _reason(
                        "queue_maximum" if kind == "queue" else "workflow_maximum",
                        f"{name} is at its maximum of {node.maximum} agents",
                        queue=farm.rows[ident]["path"] if kind == "queue" else None,
                        maximum=node.maximum,
                        agents=node.assigned,
                    )
                )
    if ti["avoid_agent_id"] is not None:
        out.append(
            _reason(
                "avoids_agent",
                f"its last try failed on agent {ti['avoid_agent_id']}: that agent takes it "
                "only when no other agent is seen",
                agent_id=ti["avoid_agent_id"],
            )
        )
    last = await store.last_claim(conn)
    idle = last is None or (datetime.now(UTC) - last).total_seconds() > IDLE_AFTER
    if idle:
        out.append(
            _reason(
                "no_agent",
                "no agent has claimed anything "
                + ("yet" if last is None else f"since {_when(last)}")
                + " (is an executor running? `farmstead serve --local-workers N`)",
                last_claim=last,
            )
        )
    if not out:
        ahead = await store.queued_ahead(conn, ti, _AHEAD_MOST)
        queue = "/" if workflow["queue_id"] is None else farm.rows[workflow["queue_id"]]["path"]
        agents = farm.queues.get(workflow["queue_id"], farm.root).assigned
        over = "over " if ahead >= _AHEAD_MOST else ""
        out.append(
            _reason(
                "waiting",
                f"waiting for a free agent: {over}{ahead} instance(s) of its workflow go first; "
                f"queue {queue} has {agents} agent(s) working",
                ahead=ahead,
                queue=queue,
                agents=agents,
            )
        )
    return out
