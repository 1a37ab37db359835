"""Submission and reading of workflows and their tasks (farmstead's own /v3 API)."""

from collections.abc import Collection
from typing import Any

from farmstead.db.engine import Database
from farmstead.fsm import workflow_status
from farmstead.schemas import WorkflowCreate
from farmstead.services.errors import BadRequest, NotFound
from farmstead.services.uow import unit_of_work
from farmstead.settings import Settings
from farmstead.store import workflows as store


async def submit(db: Database, settings: Settings, req: WorkflowCreate) -> dict[str, Any]:
    """Create a workflow, its tasks (all QUEUED) and each task's first QUEUED instance."""
    if req.size > settings.max_tasks_per_request:
        raise BadRequest(
            f"{req.size} tasks in one request is over the limit of "
            f"{settings.max_tasks_per_request}",
            field="array" if req.array else "tasks",
        )
    batch_size = settings.array_batch_size
    batches = (req.size + batch_size - 1) // batch_size
    defaults = {
        "max_attempts": req.max_attempts or settings.default_max_attempts,
        "priority": req.priority,
        "resources": req.resources,
        "resource_scales": req.resource_scales,
    }
    async with unit_of_work(db) as session:
        wf_id = await store.create_workflow(session, req.name, req.retry_delay)
        array_name = req.array.name if req.array else req.name
        array_id = await store.create_array(
            session, wf_id, array_name, batches, req.max_concurrently_running
        )
        if req.array is not None:
            spec = {**defaults, "name": req.array.name, "command": req.array.command}
            await store.insert_range_tasks(
                session, wf_id, array_id, req.array.first, req.array.last, spec
            )
        else:
            tasks = [{**defaults, **t.model_dump(exclude_none=True)} for t in (req.tasks or [])]
            await store.insert_listed_tasks(session, wf_id, array_id, tasks)
        created = await store.insert_first_instances(session, array_id, batch_size)
        await store.record_event(
            session, wf_id, "R", {"submitted_tasks": created, "array_id": array_id}
        )
    return await read(db, wf_id)  # array_ids included, as every read has them


async def read(db: Database, workflow_id: int) -> dict[str, Any]:
    """A workflow with its task counts by status and percent done."""
    async with unit_of_work(db, write=False) as session:
        row = await store.workflow_row(session, workflow_id)
        if row is None:
            raise NotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        counts = await store.task_counts(session, workflow_id)
    return _summary(row, counts)


def _summary(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
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

    A workflow's status is derived from its counts (`_summary`, the one place that decides), so
    a status filter reads workflows in chunks, newest first, until the page is full: one query
    for the workflows and one grouped count query per chunk.
    """
    async with unit_of_work(db, write=False) as session:
        if not statuses:
            rows = await store.list_workflows(session, limit, offset, name=name)
            counts = await store.task_counts_of(session, [r["id"] for r in rows])
            return [_summary(r, counts[r["id"]]) for r in rows]
        page: list[dict[str, Any]] = []
        skip, below = offset, None
        while len(page) < limit:
            rows = await store.list_workflows(session, LIST_CHUNK, name=name, below_id=below)
            counts = await store.task_counts_of(session, [r["id"] for r in rows])
            for row in rows:
                summary = _summary(row, counts[row["id"]])
                if summary["status"] not in statuses:
                    continue
                if skip:
                    skip -= 1
                elif len(page) < limit:
                    page.append(summary)
            if len(rows) < LIST_CHUNK:
                break
            below = rows[-1]["id"]
        return page


async def tasks(
    db: Database,
    workflow_id: int,
    status: list[str] | None,
    limit: int,
    after_id: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """A page of a workflow's tasks."""
    async with unit_of_work(db, write=False) as session:
        if await store.workflow_row(session, workflow_id) is None:
            raise NotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        return await store.list_tasks(session, workflow_id, status, limit, after_id, offset)


async def task_detail(db: Database, task_id: int) -> dict[str, Any]:
    """A task with its instance history and error log."""
    async with unit_of_work(db, write=False) as session:
        task = await store.task_detail(session, task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found", task_id=task_id)
        ids = [i["id"] for i in task["instances"]]
        task["error_log"] = await store.error_logs_of(session, ids)
    return task


async def events(db: Database, workflow_id: int, after_id: int, limit: int) -> list[dict[str, Any]]:
    """A workflow's events, oldest first."""
    async with unit_of_work(db, write=False) as session:
        if await store.workflow_row(session, workflow_id) is None:
            raise NotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)
        return await store.events_of(session, workflow_id, after_id, limit)


async def cluster(db: Database, name: str) -> list[Any] | None:
    """Jobmon's cluster row: [id, name, cluster_type_name, connection_parameters]."""
    async with unit_of_work(db, write=False) as session:
        row = await store.cluster(session, name)
    return None if row is None else list(row)


async def instance_statuses(db: Database, ti_ids: list[int]) -> list[dict[str, Any]]:
    """The current status of each of `ti_ids` that exists (an executor's cancel check)."""
    async with unit_of_work(db, write=False) as session:
        rows = await store.instance_statuses(session, ti_ids)
    return [{"task_instance_id": i, "status": s} for i, s in rows]
