"""The worker-node and distributor routes (/v3/fsm and, for Jobmon's clients, /api/v3)."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request

from farmstead.api.deps import DatabaseDep, PrincipalDep, SettingsDep, require_instances
from farmstead.bounds import IDS_MAX, DbId, Int32, JobId, Label
from farmstead.fsm import TIStatus
from farmstead.schemas import (
    ArrayBatch,
    ArrayInstanceOut,
    ArrayLaunch,
    BatchReportBy,
    ClusterOut,
    ErrorLogOut,
    Instantiate,
    InstantiateOut,
    LogDistributorId,
    LogDone,
    LogErrorWorkerNode,
    LogKnownError,
    LogNoDistributorId,
    LogReportBy,
    LogRunning,
    LogRunningOut,
    MessageOut,
    StatusOut,
    WorkerFields,
)
from farmstead.services import nodes, workflows
from farmstead.services.transitions import Outcome, transition

router = APIRouter(tags=["worker nodes and distributors"])
TiId = Annotated[DbId, Path(description="task instance id")]
ArrayId = Annotated[DbId, Path(description="array id")]
#: {task_instance_id: distributor_id}, at most IDS_MAX of them
DistributorIds = Annotated[dict[DbId, JobId], Body(min_length=1, max_length=IDS_MAX)]


def _worker_fields(body: WorkerFields) -> dict[str, Any]:
    return nodes.present(**body.model_dump(exclude={"error_state", "error_description"}))


def _dirs(resources: dict[str, Any] | None) -> tuple[str | None, str | None]:
    res = resources or {}
    return res.get("stdout"), res.get("stderr")


def _message(out: Outcome, ok: str) -> str:
    if out.applied or out.status.value == ok:
        return ""
    return f"no change: the task instance is {out.status.name} ({out.status.value})"


@router.post("/task_instance/{task_instance_id}/log_running", response_model=LogRunningOut)
async def log_running(
    db: DatabaseDep,
    settings: SettingsDep,
    who: PrincipalDep,
    body: LogRunning,
    task_instance_id: TiId,
) -> Any:
    """A worker started the instance: → RUNNING, with a heartbeat deadline."""
    pgid = None if body.process_group_id is None else str(body.process_group_id)
    out = await transition(
        db,
        task_instance_id,
        TIStatus.RUNNING,
        fields=nodes.present(
            nodename=body.nodename, process_group_id=pgid, distributor_id=body.distributor_id
        ),
        report_increment=body.next_report_increment,
        reporter=who.reporter,
    )
    t = out.task
    stdout_dir, stderr_dir = _dirs(t.resources)
    return {
        "task_instance": [
            task_instance_id,
            out.status.value,
            t.workflow_id,
            t.id,
            t.name,
            t.command,
            t.workflow_id,
            stdout_dir,
            stderr_dir,
        ],
        "heartbeat_interval": settings.heartbeat_interval,
        "report_increment": settings.report_increment,
        "resources": out.resources,
    }


@router.post("/task_instance/{task_instance_id}/log_report_by", response_model=StatusOut)
async def log_report_by(
    db: DatabaseDep, who: PrincipalDep, body: LogReportBy, task_instance_id: TiId
) -> Any:
    """A worker's heartbeat: extends the deadline; answers the status (KILL_SELF: stop)."""
    fields = nodes.present(
        distributor_id=body.distributor_id, stdout=body.stdout, stderr=body.stderr
    )
    status = await nodes.heartbeat(
        db, task_instance_id, body.next_report_increment, fields, who.reporter
    )
    return {"status": status.value}


@router.post("/task_instance/log_report_by/batch")
async def log_report_by_batch(
    request: Request, db: DatabaseDep, who: PrincipalDep, body: BatchReportBy
) -> dict[str, int]:
    """A distributor's heartbeat for many LAUNCHED or RUNNING instances: one statement."""
    await require_instances(request, who, body.task_instance_ids)
    updated = await nodes.heartbeat_batch(db, body.task_instance_ids, body.next_report_increment)
    return {"updated": updated}


@router.post("/task_instance/{task_instance_id}/log_done", response_model=StatusOut)
async def log_done(
    db: DatabaseDep, who: PrincipalDep, body: LogDone, task_instance_id: TiId
) -> Any:
    """The command exited 0: → DONE, the task DONE."""
    out = await transition(
        db, task_instance_id, TIStatus.DONE, fields=_worker_fields(body), reporter=who.reporter
    )
    return {"status": out.status.value}


@router.post("/task_instance/{task_instance_id}/log_error_worker_node", response_model=StatusOut)
async def log_error_worker_node(
    db: DatabaseDep, who: PrincipalDep, body: LogErrorWorkerNode, task_instance_id: TiId
) -> Any:
    """The command failed: → the error state; the task is retried if it has tries left."""
    out = await transition(
        db,
        task_instance_id,
        TIStatus(body.error_state),
        fields=_worker_fields(body),
        error=body.error_description or f"error state {body.error_state}",
        reporter=who.reporter,
    )
    return {"status": out.status.value}


@router.get("/task_instance/{task_instance_id}/task_instance_error_log", response_model=ErrorLogOut)
async def task_instance_error_log(db: DatabaseDep, task_instance_id: TiId) -> Any:
    """The instance's error log: [[id, time, description], ...]."""
    rows = await nodes.error_log(db, task_instance_id)
    return {"task_instance_error_log": [[i, t.isoformat(), d] for i, t, d in rows]}


@router.get(
    "/get_array_task_instance_id/{array_id}/{batch_num}/{step_id}", response_model=ArrayInstanceOut
)
async def get_array_task_instance_id(
    db: DatabaseDep, array_id: ArrayId, batch_num: Int32, step_id: Int32
) -> Any:
    """Which instance an array element is (steps count from 0)."""
    return {"task_instance_id": await nodes.array_instance(db, array_id, batch_num, step_id)}


@router.post("/task_instance/{task_instance_id}/log_distributor_id", response_model=MessageOut)
async def log_distributor_id(
    db: DatabaseDep, body: LogDistributorId, task_instance_id: TiId
) -> Any:
    """The distributor submitted the instance: → LAUNCHED, with its job id and a deadline."""
    out = await nodes.launched(
        db, task_instance_id, body.distributor_id, body.next_report_increment
    )
    if out.applied:
        return {"message": "Task instance transitioned to LAUNCHED"}
    return {"message": _message(out, "O") or "already LAUNCHED"}


@router.post("/task_instance/{task_instance_id}/log_no_distributor_id", response_model=MessageOut)
async def log_no_distributor_id(
    db: DatabaseDep, body: LogNoDistributorId, task_instance_id: TiId
) -> Any:
    """Submission failed: → NO_DISTRIBUTOR_ID (retried if the task has tries left)."""
    out = await transition(
        db,
        task_instance_id,
        TIStatus.NO_DISTRIBUTOR_ID,
        error=body.no_id_err_msg or "no distributor id",
    )
    return {"message": _message(out, "W")}


@router.post("/task_instance/{task_instance_id}/log_known_error", response_model=MessageOut)
async def log_known_error(db: DatabaseDep, body: LogKnownError, task_instance_id: TiId) -> Any:
    """The distributor knows why the instance failed: → the error state."""
    out = await transition(
        db,
        task_instance_id,
        TIStatus(body.error_state),
        fields=nodes.present(distributor_id=body.distributor_id, nodename=body.nodename),
        error=body.error_message or f"error state {body.error_state}",
    )
    return {"message": _message(out, body.error_state)}


@router.post("/task_instance/{task_instance_id}/log_unknown_error", response_model=MessageOut)
async def log_unknown_error(db: DatabaseDep, body: LogKnownError, task_instance_id: TiId) -> Any:
    """UNKNOWN_ERROR, only once the instance's heartbeat deadline has passed."""
    out = await nodes.log_unknown_error(
        db,
        task_instance_id,
        body.error_message or "unknown error",
        nodes.present(distributor_id=body.distributor_id, nodename=body.nodename),
    )
    if out is None:
        return {"message": "not changed: the task instance reported within its deadline"}
    return {"message": _message(out, "U")}


@router.post("/task_instance/instantiate_task_instances", response_model=InstantiateOut)
async def instantiate_task_instances(
    request: Request, db: DatabaseDep, who: PrincipalDep, body: Instantiate
) -> Any:
    """QUEUED instances → INSTANTIATED; answers them grouped by array batch."""
    await require_instances(request, who, body.task_instance_ids)
    return {"task_instance_batches": await nodes.instantiate(db, body.task_instance_ids)}


@router.post("/array/{array_id}/transition_to_launched")
async def array_transition_to_launched(
    db: DatabaseDep, array_id: ArrayId, body: ArrayLaunch
) -> dict[str, int]:
    """The distributor submitted an array batch: its INSTANTIATED instances → LAUNCHED."""
    res = await nodes.launch_batch(db, array_id, body.batch_number, body.next_report_increment)
    return {"launched": res.total}


@router.post("/array/{array_id}/transition_to_killed")
async def array_transition_to_killed(
    db: DatabaseDep, array_id: ArrayId, body: ArrayBatch
) -> dict[str, int]:
    """The distributor terminated an array batch: its KILL_SELF instances → ERROR_FATAL."""
    res = await nodes.kill_batch(db, array_id, body.batch_number)
    return {"killed": res.total}


@router.post("/array/{array_id}/log_distributor_id")
async def array_log_distributor_id(
    db: DatabaseDep, array_id: ArrayId, body: DistributorIds
) -> dict[str, bool]:
    """Record the job ids of many instances: {task_instance_id: distributor_id}."""
    await nodes.set_distributor_ids(db, array_id, body)
    return {"success": True}


@router.get("/cluster/{cluster_name}", response_model=ClusterOut)
async def get_cluster(db: DatabaseDep, cluster_name: Label) -> Any:
    """A cluster by name: [id, name, cluster_type_name, connection_parameters] or null."""
    return {"cluster": await workflows.cluster(db, cluster_name)}
