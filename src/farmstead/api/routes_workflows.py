"""farmstead's own API: submit and read workflows and tasks."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from farmstead.api.deps import DatabaseDep, PrincipalDep, SettingsDep
from farmstead.bounds import Cursor, DbId
from farmstead.fsm import TaskStatus, WorkflowStatus
from farmstead.schemas import (
    ActionOut,
    ClaimRequest,
    ClaimsOut,
    EventsOut,
    TaskDetailOut,
    TasksOut,
    WorkflowCreate,
    WorkflowOut,
    WorkflowsOut,
)
from farmstead.services import actions, claims, workflows
from farmstead.services.errors import BadRequest, Forbidden

router = APIRouter(tags=["workflows"])
WorkflowId = Annotated[DbId, Path(description="workflow id")]
TaskId = Annotated[DbId, Path(description="task id")]
#: task status letters to filter on (repeat the parameter for several)
TaskStatuses = Annotated[
    list[TaskStatus] | None, Query(max_length=20, description="task status letters")
]


@router.post("/workflows", response_model=WorkflowOut, status_code=201)
async def create_workflow(
    db: DatabaseDep, settings: SettingsDep, who: PrincipalDep, body: WorkflowCreate
) -> Any:
    """Submit a workflow: tasks one by one, or an array of up to 1,000,000 from a template."""
    return await workflows.submit(db, settings, body, actor=who)


@router.get("/workflows", response_model=WorkflowsOut)
async def list_workflows(
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[Cursor, Query()] = 0,
    status: Annotated[
        list[WorkflowStatus] | None,
        Query(max_length=20, description="only workflows in these statuses (repeat for several)"),
    ] = None,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=255,
            pattern=r"^[^\x00]*$",
            description="only workflows whose name contains this (any case)",
        ),
    ] = None,
) -> Any:
    """Workflows, newest first, with their task counts; filtered by status and name."""
    data = await workflows.list_all(db, limit, offset, status, name)
    return {"data": data, "count": len(data)}


@router.get("/workflows/{workflow_id}", response_model=WorkflowOut)
async def get_workflow(db: DatabaseDep, workflow_id: WorkflowId) -> Any:
    """A workflow: status, counts by task status, percent done."""
    return await workflows.read(db, workflow_id)


@router.get("/workflows/{workflow_id}/tasks", response_model=TasksOut)
async def list_tasks(
    db: DatabaseDep,
    workflow_id: WorkflowId,
    status: TaskStatuses = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    after_id: Annotated[Cursor, Query(description="keyset paging: ids above this")] = 0,
    offset: Annotated[Cursor, Query()] = 0,
) -> Any:
    """A page of a workflow's tasks, optionally only those in some statuses."""
    letters = [str(s) for s in status] if status else None
    data, total = await workflows.tasks(db, workflow_id, letters, limit, after_id, offset)
    return {"data": data, "count": total}


@router.get("/workflows/{workflow_id}/events", response_model=EventsOut)
async def list_events(
    db: DatabaseDep,
    workflow_id: WorkflowId,
    after_id: Annotated[Cursor, Query()] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Any:
    """A workflow's events (one per applied transition), oldest first."""
    return {"data": await workflows.events(db, workflow_id, after_id, limit)}


@router.get("/tasks/{task_id}", response_model=TaskDetailOut)
async def get_task(db: DatabaseDep, task_id: TaskId) -> Any:
    """A task with its instance history and error log."""
    return await workflows.task_detail(db, task_id)


@router.post("/workflows/{workflow_id}/cancel", response_model=ActionOut)
async def cancel_workflow(db: DatabaseDep, who: PrincipalDep, workflow_id: WorkflowId) -> Any:
    """Cancel: queued work → ERROR_FATAL, running work → KILL_SELF (told at its next heartbeat)."""
    return await actions.cancel(db, workflow_id, actor=who)


@router.post("/workflows/{workflow_id}/resume", response_model=ActionOut)
async def resume_workflow(
    db: DatabaseDep,
    who: PrincipalDep,
    workflow_id: WorkflowId,
    all: Annotated[bool, Query(description="also give unfinished tasks fresh tries")] = False,
) -> Any:
    """Resume: ERROR_FATAL tasks get fresh tries and new instances; DONE tasks are left alone."""
    return await actions.resume(db, workflow_id, everything=all, actor=who)


@router.post("/claims", response_model=ClaimsOut)
async def create_claims(db: DatabaseDep, who: PrincipalDep, body: ClaimRequest) -> Any:
    """Take up to `limit` QUEUED instances to run (they become INSTANTIATED): workflows by the
    queue rules (minimum, priority, weight, maximum agents), arrays within their concurrency
    limits, each workflow's instances by priority.

    A worker token scoped to one workflow claims from it; scoped to several, it names one."""
    workflow_id = body.workflow_id
    if who.workflows is not None:
        if workflow_id is None and len(who.workflows) == 1:
            workflow_id = next(iter(who.workflows))
        elif workflow_id is None:
            raise BadRequest(
                "this token is scoped to several workflows: name one", field="workflow_id"
            )
        elif not who.may_touch(workflow_id):
            raise Forbidden("this token may claim only from its own workflows")
    return {"data": await claims.claim(db, body.limit, workflow_id, agent=body.agent_id)}
