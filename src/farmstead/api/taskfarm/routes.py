"""taskfarm's routes: each parses taskfarm's request, calls one service, answers in taskfarm's
words and status codes (201, 204, 400, 404; 409 when a task moved on, see services.taskfarm)."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse

from farmstead.api.deps import DatabaseDep, PrincipalDep, SettingsDep
from farmstead.api.taskfarm import wire
from farmstead.bounds import INT32_MAX
from farmstead.schemas import ErrorOut
from farmstead.services import taskfarm
from farmstead.services.errors import NotFound

router = APIRouter(
    tags=["taskfarm compatible"],
    responses={400: {"model": ErrorOut, "description": "A missing, unknown or bad value"}},
)
Uuid = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z-]+$")]
Number = Annotated[int, Path(ge=-INT32_MAX, le=INT32_MAX, description="task number, from 0")]
Info = Annotated[str, Query(max_length=64, description="one key of the answer, or all")]
NO_CONTENT = 204


def pick(answer: dict[str, Any], info: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not info:
        return answer
    if info not in keys:
        raise NotFound(f"unknown info {info!r}: one of {', '.join(keys)}", info=info)
    return {info: answer[info]}


@router.get("/token")
async def get_token(db: DatabaseDep, who: PrincipalDep) -> dict[str, str]:
    """A token for the signed-in user (user and password, or a token) with their rights."""
    return {"token": await taskfarm.token(db, who)}


@router.post("/run", status_code=201)
async def create_run(
    db: DatabaseDep, settings: SettingsDep, who: PrincipalDep, body: wire.NewRun
) -> dict[str, Any]:
    """A run of numTasks waiting tasks (a farmstead workflow of one array)."""
    run = body.checked(settings.max_tasks_per_request)
    return await taskfarm.create_run(db, settings, who, run.numTasks, run.timeout)


@router.get("/runs")
async def list_runs(db: DatabaseDep, who: PrincipalDep) -> dict[str, Any]:
    """Every run: id (its workflow's), uuid, numTasks."""
    return {"data": await taskfarm.list_runs(db, who)}


@router.get("/runs/{uuid}")
async def get_run(db: DatabaseDep, who: PrincipalDep, uuid: Uuid, info: Info = "") -> Any:
    """A run with its counts (waiting, computing, done) and percent done, or one of them."""
    return pick(await taskfarm.info(db, uuid, who), info, taskfarm.INFO_KEYS)


@router.delete("/runs/{uuid}", status_code=NO_CONTENT)
async def delete_run(db: DatabaseDep, who: PrincipalDep, uuid: Uuid) -> Response:
    """Delete a run: gone from this API at once; its workflow is cancelled and kept."""
    await taskfarm.delete(db, uuid, who)
    return Response(status_code=NO_CONTENT)


@router.post("/runs/{uuid}/restart", status_code=NO_CONTENT)
async def restart_run(
    db: DatabaseDep,
    who: PrincipalDep,
    uuid: Uuid,
    everything: Annotated[
        str, Query(alias="all", max_length=8, description="True: every task, progress too")
    ] = "False",
) -> Response:
    """Unfinished tasks whose worker went silent back to waiting (all=True: every task)."""
    await taskfarm.restart(db, uuid, who, wire.restart_all(everything))
    return Response(status_code=NO_CONTENT)


@router.post("/runs/{uuid}/task", status_code=201, responses={204: {"description": "none left"}})
async def claim_task(
    db: DatabaseDep, who: PrincipalDep, uuid: Uuid, body: wire.ClaimIn
) -> Response:
    """The next waiting task, now computing for the worker; 204 when none is left."""
    task = await taskfarm.claim(db, uuid, body.worker_uuid, who)
    if task is None:
        return Response(status_code=NO_CONTENT)
    return JSONResponse(task, status_code=201)


@router.get("/runs/{uuid}/tasks/{n}")
async def get_task(
    db: DatabaseDep, who: PrincipalDep, uuid: Uuid, n: Number, info: Info = ""
) -> Any:
    """Task n: id, task, percentCompleted, status; or one of them."""
    return pick(await taskfarm.get_task(db, uuid, n, who), info, taskfarm.TASK_INFO_KEYS)


@router.put("/runs/{uuid}/tasks/{n}", status_code=NO_CONTENT)
async def update_task(
    db: DatabaseDep, who: PrincipalDep, uuid: Uuid, n: Number, body: wire.TaskUpdate
) -> Response:
    """The worker computing task n reports its progress, or that it is done or given back."""
    await taskfarm.update_task(db, uuid, n, who, body.percentCompleted, body.status)
    return Response(status_code=NO_CONTENT)


@router.post("/worker", status_code=201)
async def register_worker(
    db: DatabaseDep, who: PrincipalDep, body: wire.WorkerIn
) -> dict[str, Any]:
    """Register a worker (uuid, hostname, pid)."""
    return await taskfarm.register_worker(db, who, body.uuid, body.hostname, body.pid)
