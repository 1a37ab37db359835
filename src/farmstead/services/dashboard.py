"""What each dashboard page shows, read in one transaction a page (the web layer only renders).

Counts come from the workflow summaries the API serves; a workflow's tasks are read a page at a
time by id; its failures grouped by error over its failed tasks only; its chart from an hour of
its finished-task events; its graph only when small enough to draw.
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.services import events, explain, queues, workflows
from farmstead.services.errors import NotFound
from farmstead.services.uow import in_transaction
from farmstead.store import dashboard as store
from farmstead.store import metrics as metrics_store
from farmstead.store import workflows as wf_store

#: a workflow's graph is drawn up to this many tasks
GRAPH_LIMIT = 200
#: minutes of the done/failed chart
CHART_MINUTES = 60
#: statuses a task waits in (its page explains why)
WAITING = frozenset({"G", "Q", "I", "H", "B", "A"})


def progress(summary: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A workflow summary with elapsed seconds and an estimate of the seconds left (from its
    rate of finishing so far; None before anything finished or once nothing is left)."""
    counts = summary["counts"]
    total = summary["total"]
    finished = counts.get("D", 0) + counts.get("F", 0)
    started: datetime = summary["created_date"]
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    elapsed = max(0.0, (now - started).total_seconds())
    left = total - finished
    eta = elapsed / finished * left if finished and left and elapsed else None
    return {**summary, "elapsed": elapsed, "eta": eta, "finished": finished}


async def workflows_page(
    db: Database, statuses: Sequence[str] | None, name: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    rows = await workflows.list_all(db, limit, offset, statuses=statuses, name=name)
    now = datetime.now(UTC)
    return [progress(r, now) for r in rows]


async def workflow_page(
    db: Database, workflow_id: int, statuses: Sequence[str] | None, after: int, limit: int
) -> dict[str, Any]:
    """A workflow's summary, chart, failure groups, a page of its tasks, its graph if small."""

    async def work(conn: Conn) -> dict[str, Any]:
        row = await wf_store.workflow_row(conn, workflow_id)
        if row is None:
            raise NotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        now = datetime.now(UTC)
        summary = progress(
            workflows.summary(row, await wf_store.task_counts(conn, workflow_id)), now
        )
        tasks = await store.task_page(conn, workflow_id, statuses, after, limit + 1)
        return {
            "workflow": summary,
            "tasks": tasks[:limit],
            "more": len(tasks) > limit,
            "failures": await store.failure_groups(conn, workflow_id, 10),
            "chart": await store.finished_per_minute(conn, workflow_id, CHART_MINUTES, now),
            "graph": await store.small_graph(conn, workflow_id, GRAPH_LIMIT),
        }

    return await in_transaction(db, work, write=False)


async def task_page(db: Database, task_id: int) -> dict[str, Any]:
    """A task with its instances, error log, newest events and (when it waits) why."""
    task = await workflows.task_detail(db, task_id)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        ids = [i["id"] for i in task["instances"]]
        rows = await store.task_events(conn, task_id, ids, 200)
        return await events.described(conn, rows)

    task["events"] = await in_transaction(db, work, write=False)
    task["explain"] = await explain.explain(db, task_id) if task["status"] in WAITING else None
    return task


async def farm_page(db: Database) -> dict[str, Any]:
    """Queues (with each one's share among its siblings), agents, the reconciler's state."""
    listed = await queues.list_queues(db)
    weights: dict[str | None, float] = {}
    for q in listed:
        weights[q["parent"]] = weights.get(q["parent"], 0.0) + float(q["weight"] or 0)
    for q in listed:
        siblings = weights.get(q["parent"]) or 0.0
        q["share"] = float(q["weight"] or 0) / siblings if siblings else None
    agents = await queues.list_agents(db, None)

    async def work(conn: Conn) -> tuple[datetime | None, float]:
        return await store.last_sweep(conn), await metrics_store.lag(conn)

    last, lag = await in_transaction(db, work, write=False)
    return {"queues": listed, "agents": agents, "last_sweep": last, "lag": lag}
