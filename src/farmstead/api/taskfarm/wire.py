"""taskfarm's request bodies, bounded as every request is; a missing, unknown or bad key is a
plain 400 (api.errors answers a validation error on this face so), which its client expects."""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from farmstead.bounds import INT32_MAX, INT64_MAX, NAME_MAX
from farmstead.schemas import Strict, Wire
from farmstead.services.errors import Malformed, NotFound

Uuid = Annotated[str, Field(min_length=1, max_length=64)]


class NewRun(Wire):
    """`POST /api/run`: how many tasks (farmstead adds an optional update timeout)."""

    numTasks: int = Field(ge=1, le=INT32_MAX)
    timeout: float | None = Field(
        None, gt=0, le=30 * 86400, description="seconds a claimed task may go without an update"
    )

    def checked(self, most: int) -> "NewRun":
        """Itself, if the server takes that many tasks in one request."""
        if self.numTasks > most:
            raise Malformed(f"numTasks is over this server's limit of {most}", field="numTasks")
        return self


class WorkerIn(Wire):
    """`POST /api/worker`."""

    uuid: Uuid
    hostname: str = Field(min_length=1, max_length=NAME_MAX)
    pid: int = Field(ge=0, le=INT64_MAX)


class ClaimIn(Wire):
    """`POST /api/runs/{uuid}/task`: the claiming worker."""

    worker_uuid: Uuid


class TaskUpdate(Strict):
    """`PUT /api/runs/{uuid}/tasks/{n}`: progress and/or status, nothing else."""

    percentCompleted: float | None = Field(None, ge=0, le=100)
    status: Literal["waiting", "computing", "done"] | None = None

    @model_validator(mode="after")
    def _something(self) -> "TaskUpdate":
        if self.percentCompleted is None and self.status is None:
            raise ValueError("give percentCompleted and/or status")
        return self


def restart_all(value: str) -> bool:
    """`?all=True|False`; anything else is not a route of taskfarm's (404 there too)."""
    if value.lower() not in ("true", "false"):
        raise NotFound("all must be True or False", field="all")
    return value.lower() == "true"
