"""Task instances in bulk: the statuses an executor checks to stop cancelled commands."""

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from farmstead.api.deps import DatabaseDep, PrincipalDep, require_instances
from farmstead.schemas import DbId
from farmstead.services import workflows

router = APIRouter(tags=["task instances"])
MAX_IDS = 10_000


class StatusQuery(BaseModel):
    """Which instances to look up."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task_instance_ids: Annotated[list[DbId], Field(max_length=MAX_IDS)]
    resources: bool = Field(False, description="also each instance's resources")


class InstanceStatus(BaseModel):
    task_instance_id: int
    status: str
    resources: dict[str, Any] | None = Field(None, description="when asked for")


class InstanceStatusesOut(BaseModel):
    data: list[InstanceStatus]


@router.post(
    "/task_instances/status", response_model=InstanceStatusesOut, response_model_exclude_unset=True
)
async def instance_statuses(
    request: Request, db: DatabaseDep, who: PrincipalDep, body: StatusQuery
) -> Any:
    """The current status of up to 10,000 instances in one request (unknown ids left out).

    The local executor asks this about its running instances every half second and stops a
    command whose instance was cancelled (KILL_SELF) or settled elsewhere; the Slurm executor
    asks it with `resources` for the instances it claimed (their sbatch options)."""
    await require_instances(request, who, body.task_instance_ids)
    ids = body.task_instance_ids
    return {"data": await workflows.instance_statuses(db, ids, body.resources)}
