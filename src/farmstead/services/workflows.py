"""Submission and reading of workflows and their tasks (farmstead's own /v3 API)."""

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm import workflow_status
from farmstead.schemas import WorkflowCreate
from farmstead.services import graph, queues
from farmstead.services.auth import SYSTEM, Principal, audit
from farmstead.services.errors import BadRequest, NotFound
from farmstead.services.uow import in_transaction
from farmstead.settings import Settings
from farmstead.store import graph as graph_store
from farmstead.store import workflows as store
from farmstead.store.sql import TASK, insert_events

#: a submission of this many tasks or more refreshes the planner's statistics at once
ANALYZE_AFTER = 10_000


@dataclass(frozen=True)
class Pull:
    """A pull-based run (taskfarm's): its uuid, and the seconds a claimed task may go
    without an update. Its tasks are one batch (task n is step n of batch 1), claimed only
    through the run."""

    uuid: str
    timeout: float


async def submit(
    db: Database,
    settings: Settings,
    req: WorkflowCreate,
    actor: Principal = SYSTEM,
    pull: Pull | None = None,
) -> dict[str, Any]:
    """Create a workflow, its tasks (all QUEUED) and each task's first QUEUED instance."""
    if req.size > settings.max_tasks_per_request:
        raise BadRequest(
            f"{req.size} tasks in one request is over the limit of "
            f"{settings.max_tasks_per_request}",
            field="array" if req.array else "tasks",
        )
    edges = graph.check_names(req.tasks) if req.tasks and req.has_graph else []
    # Upstream workflows: every task starts HELD, then what is ready is released. Edges within
    # the submission only: the tasks with upstream tasks are HELD, the rest QUEUED at once.
    after = bool(req.depends_on)
    held_at = {d for d, _u in edges}
    queued = 0 if after else req.size - len(held_at)
    batch_size = req.size if pull else settings.array_batch_size
    batches = (queued + batch_size - 1) // batch_size
    defaults = {
        "max_attempts": req.max_attempts or settings.default_max_attempts,
        "priority": req.priority,
        "resources": req.resources,
        "resource_scales": req.resource_scales,
        "pull": pull is not None,
        "held": after,
    }

    async def work(conn: Conn) -> dict[str, Any]:
        if req.depends_on:
            await graph.check_workflows(conn, req.depends_on, req.size)
        place = {
            "queue_id": await queues.queue_id_of(conn, req.queue),
            "priority": req.priority,
            "weight": req.weight,
            "minimum_agents": req.minimum_agents,
            "maximum_agents": req.maximum_agents,
        }
        wf_id = await store.create_workflow(
            conn,
            req.name,
            req.retry_delay,
            None if pull is None else pull.uuid,
            None if pull is None else pull.timeout,
            place,
        )
        array_name = req.array.name if req.array else req.name
        array_id = await store.create_array(
            conn, wf_id, array_name, batches, req.max_concurrently_running
        )
        if req.array is not None:
            spec = {**defaults, "name": req.array.name, "command": req.array.command}
            created = await store.insert_range(
                conn, wf_id, array_id, req.array.first, req.array.last, spec, batch_size
            )
        else:
            tasks = [
                {
                    **defaults,
                    **t.model_dump(exclude_none=True, exclude={"depends_on"}),
                    "held": after or i in held_at,
                }
                for i, t in enumerate(req.tasks or [])
            ]
            ids = await store.insert_listed_tasks(conn, wf_id, array_id, tasks, bool(edges))
            await graph_store.insert_task_edges(conn, [(ids[d], ids[u]) for d, u in edges])
            if queued:
                await store.insert_first_instances(conn, array_id, batch_size)
            created = len(tasks)
        counts = {"Q": queued, "H": created - queued}
        if after:
            await _link(conn, wf_id, req)
            # what waits on nothing unfinished is QUEUED at once (no events: a new task's
            # first status is QUEUED or HELD)
            released = await graph_store.release(
                conn, TASK.c.workflow_id == wf_id, batch_size, lock=False
            )
            # an upstream that has already failed: blocked at once (events, as for a block)
            blocked = await graph_store.block_failed(conn, TASK.c.workflow_id == wf_id)
            await insert_events(conn, graph.blocked_events(blocked))
            b = sum(1 for _t, w, _r in blocked if w == wf_id)
            counts = {"Q": len(released), "H": created - len(released) - b, "B": b}
        await store.record_event(
            conn,
            wf_id,
            "R",
            {"submitted_tasks": created, "array_id": array_id, "by": actor.name},
        )
        await store.insert_sent_events(conn, wf_id)  # each QUEUED instance: task-sent
        row = await store.workflow_row(conn, wf_id)  # array_ids included, as every read has
        assert row is not None
        # every task it just made is QUEUED or HELD: no need to count them back
        return summary(row, {k: n for k, n in counts.items() if n})

    created = await in_transaction(db, work)
    audit("submit", actor, workflow_id=created["id"], tasks=req.size, name=req.name)
    if req.size >= ANALYZE_AFTER:
        await in_transaction(db, store.refresh_statistics)
    return created


async def _link(conn: Conn, workflow_id: int, req: WorkflowCreate) -> None:
    """The edges from a new workflow to the workflows it depends on."""
    await graph_store.hold_unfinished(conn, [d.workflow for d in req.depends_on])
    await graph_store.insert_workflow_edges(
        conn, workflow_id, sorted({d.workflow for d in req.depends_on if d.mode == "all"})
    )
    for upstream in sorted({d.workflow for d in req.depends_on if d.mode == "each"}):
        await graph_store.insert_each_edges(conn, workflow_id, upstream)


async def read(db: Database, workflow_id: int) -> dict[str, Any]:
    """A workflow with its task counts by status and percent done."""

    async def work(conn: Conn) -> dict[str, Any]:
        row = await store.workflow_row(conn, workflow_id)
        if row is None:
            raise NotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        return summary(row, await store.task_counts(conn, workflow_id))

    return await in_transaction(db, work, write=False)


def summary(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.values())
    status = workflow_status(counts, cancelled=row.get("cancelled_date") is not None)
    done = counts.get("D", 0)
    return {
        **row,
        "status": status.value,
        "status_name": status.name,
        "total": total,
        "counts": counts,
        "percent_done": round(100.0 * done / total, 2) if total else 0.0,
    }


#: Workflows read per step when a status filter has to look further than one page.
LIST_CHUNK = 500


async def list_all(
    db: Database,
    limit: int,
    offset: int,
    statuses: Collection[str] | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """Workflows, newest first, with their counts; only those in `statuses` and named like `name`.

    A workflow's status is derived from its counts (`summary`, the one place that decides), so
    a status filter reads workflows in chunks, newest first, until the page is full: one query
    for the workflows and one grouped count query per chunk.
    """

    async def work(conn: Conn) -> list[dict[str, Any]]:
        if not statuses:
            rows = await store.list_workflows(conn, limit, offset, name=name)
            counts = await store.task_counts_of(conn, [r["id"] for r in rows])
            return [summary(r, counts[r["id"]]) for r in rows]
        page: list[dict[str, Any]] = []
        skip, below = offset, None
        while len(page) < limit:
            rows = await store.list_workflows(conn, LIST_CHUNK, name=name, below_id=below)
            counts = await store.task_counts_of(conn, [r["id"] for r in rows])
            for row in rows:
                found = summary(row, counts[row["id"]])
                if found["status"] not in statuses:
                    continue
                if skip:
                    skip -= 1
                elif len(page) < limit:
                    page.append(found)
            if len(rows) < LIST_CHUNK:
                break
            below = rows[-1]["id"]
        return page

    return await in_transaction(db, work, write=False)


async def tasks(
    db: Database,
    workflow_id: int,
    status: list[str] | None,
    limit: int,
    after_id: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """A page of a workflow's tasks."""

    async def work(conn: Conn) -> tuple[list[dict[str, Any]], int]:
        if await store.workflow_row(conn, workflow_id) is None:
            raise NotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        return await store.list_tasks(conn, workflow_id, status, limit, after_id, offset)

    return await in_transaction(db, work, write=False)


async def task_detail(db: Database, task_id: int) -> dict[str, Any]:
    """A task with its instance history and error log."""

    async def work(conn: Conn) -> dict[str, Any]:
        task = await store.task_detail(conn, task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found", task_id=task_id)
        ids = [i["id"] for i in task["instances"]]
        task["error_log"] = await store.error_logs_of(conn, ids)
        return task

    return await in_transaction(db, work, write=False)


async def events(db: Database, workflow_id: int, after_id: int, limit: int) -> list[dict[str, Any]]:
    """A workflow's events, oldest first."""

    async def work(conn: Conn) -> list[dict[str, Any]]:
        if await store.workflow_row(conn, workflow_id) is None:
            raise NotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        return await store.events_of(conn, workflow_id, after_id, limit)

    return await in_transaction(db, work, write=False)


async def cluster(db: Database, name: str) -> list[Any] | None:
    """Jobmon's cluster row: [id, name, cluster_type_name, connection_parameters]."""
    row = await in_transaction(db, lambda c: store.cluster(c, name), write=False)
    return None if row is None else list(row)


async def instance_statuses(
    db: Database, ti_ids: list[int], resources: bool = False
) -> list[dict[str, Any]]:
    """The current status (and with `resources`, the resources) of each of `ti_ids` that exists
    (an executor's cancel check; the Slurm executor's options)."""
    rows = await in_transaction(
        db, lambda c: store.instance_statuses(c, ti_ids, resources), write=False
    )
    if resources:
        return [{"task_instance_id": r[0], "status": r[1], "resources": r[2]} for r in rows]
    return [{"task_instance_id": r[0], "status": r[1]} for r in rows]
