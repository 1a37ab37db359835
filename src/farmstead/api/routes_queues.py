"""farmstead's own API: queues (PyFarm's), a workflow's place in them, agents, explain."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from farmstead.api.deps import DatabaseDep, PrincipalDep
from farmstead.bounds import DbId
from farmstead.schemas import (
    AgentCreate,
    AgentOut,
    AgentsOut,
    ExplainOut,
    QueueChange,
    QueueCreate,
    QueueOut,
    QueuesOut,
    WorkflowPlace,
)
from farmstead.services import explain, queues
from farmstead.services.errors import NotFound

router = APIRouter(tags=["queues"])
QueuePathParam = Annotated[
    str,
    Path(
        description="the queue's path without its leading /, e.g. render/film-a",
        max_length=1024,
        pattern=r"^[A-Za-z0-9._/-]+$",
    ),
]


def _knobs(body: Any) -> dict[str, Any]:
    return {k: getattr(body, k) for k in queues.KNOBS if getattr(body, k) is not None}


@router.get("/queues", response_model=QueuesOut)
async def list_queues(db: DatabaseDep) -> Any:
    """Every queue, by path, with the agents working in it and its QUEUED instances."""
    return {"data": await queues.list_queues(db)}


@router.post("/queues", response_model=QueueOut, status_code=201)
async def create_queue(db: DatabaseDep, who: PrincipalDep, body: QueueCreate) -> Any:
    """A new queue under an existing parent (or the root)."""
    return await queues.create_queue(db, body.path, _knobs(body), who)


@router.get("/queues/{path:path}", response_model=QueueOut)
async def get_queue(db: DatabaseDep, path: QueuePathParam) -> Any:
    return await queues.get_queue(db, "/" + path)


@router.patch("/queues/{path:path}", response_model=QueueOut)
async def change_queue(
    db: DatabaseDep, who: PrincipalDep, path: QueuePathParam, body: QueueChange
) -> Any:
    """Change a queue's knobs (those given; `clear` unsets a minimum or maximum) or move it
    (with everything in it) under another parent."""
    knobs: dict[str, Any] = {**_knobs(body), **dict.fromkeys(body.clear)}
    return await queues.change_queue(db, "/" + path, knobs, body.move_to, who)


@router.delete("/queues/{path:path}", status_code=204)
async def delete_queue(db: DatabaseDep, who: PrincipalDep, path: QueuePathParam) -> Response:
    """Delete an empty queue (409 while it holds queues or workflows)."""
    await queues.delete_queue(db, "/" + path, who)
    return Response(status_code=204)


@router.patch("/workflows/{workflow_id}", status_code=204)
async def place_workflow(
    db: DatabaseDep,
    who: PrincipalDep,
    workflow_id: Annotated[DbId, Path(description="workflow id")],
    body: WorkflowPlace,
) -> Response:
    """Move a workflow to another queue and/or change its priority, weight, minimum or
    maximum agents; the next claims follow them."""
    await queues.set_workflow(db, workflow_id, _knobs(body), body.queue)
    return Response(status_code=204)


@router.post("/agents", response_model=AgentOut, status_code=201)
async def register_agent(db: DatabaseDep, who: PrincipalDep, body: AgentCreate) -> Any:
    """Register a claimer; send its id with its claims (`agent_id`), which count as its
    heartbeats."""
    return await queues.register_agent(
        db, body.name, body.hostname, body.kind, body.pid, body.slots, who
    )


@router.post("/agents/{agent_id}/heartbeat", status_code=204)
async def agent_heartbeat(
    db: DatabaseDep, who: PrincipalDep, agent_id: Annotated[DbId, Path()]
) -> Response:
    await queues.agent_heartbeat(db, agent_id)
    return Response(status_code=204)


@router.get("/agents", response_model=AgentsOut)
async def list_agents(
    db: DatabaseDep,
    seen_within: Annotated[
        float | None, Query(gt=0, le=10**9, description="only those seen in the last seconds")
    ] = None,
) -> Any:
    return {"data": await queues.list_agents(db, seen_within)}


@router.get("/tasks/{task_id}/explain", response_model=ExplainOut)
async def explain_task(
    db: DatabaseDep, task_id: Annotated[DbId, Path(description="task id")]
) -> Any:
    """Why the task is where it is, in words and as data."""
    found = await explain.explain(db, task_id)
    if found is None:
        raise NotFound(f"task {task_id} not found", task_id=task_id)
    return found
