"""Pydantic wire models shared by the API and the client."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ErrorState = Literal["E", "U", "Z", "W", "F"]


class Wire(BaseModel):
    """A request from a Jobmon-compatible client: unknown fields are ignored, as Jobmon does."""

    model_config = ConfigDict(extra="ignore")


class Strict(BaseModel):
    """A request to farmstead's own API: an unknown field is an error."""

    model_config = ConfigDict(extra="forbid")


Increment = Field(gt=0, le=30 * 86400, description="seconds until the next report is due")


class WorkerFields(Wire):
    """Optional fields a worker may send with any report; omitted ones are never overwritten."""

    distributor_id: str | None = None
    nodename: str | None = Field(None, max_length=255)
    stdout: str | None = Field(None, description="path of the stdout log file")
    stderr: str | None = Field(None, description="path of the stderr log file")
    stdout_log: str | None = Field(None, description="tail of stdout")
    stderr_log: str | None = Field(None, description="tail of stderr")
    wallclock: float | None = Field(None, ge=0)
    maxrss: int | None = Field(None, ge=0, description="bytes")
    cpu: float | None = Field(None, ge=0, description="CPU seconds")
    io: int | None = Field(None, ge=0, description="bytes read and written")


class LogRunning(Wire):
    process_group_id: str | int | None = None
    next_report_increment: float = Increment
    nodename: str | None = Field(None, max_length=255)
    distributor_id: str | None = None


class LogReportBy(Wire):
    next_report_increment: float = Increment
    distributor_id: str | None = None
    stdout: str | None = None
    stderr: str | None = None


class BatchReportBy(Wire):
    next_report_increment: float = Increment
    task_instance_ids: list[int]


class LogDone(WorkerFields):
    pass


class LogErrorWorkerNode(WorkerFields):
    error_state: ErrorState
    error_description: str = ""


class LogDistributorId(Wire):
    distributor_id: str
    next_report_increment: float = Increment


class LogNoDistributorId(Wire):
    no_id_err_msg: str = ""


class LogKnownError(Wire):
    error_state: ErrorState
    error_message: str = ""
    distributor_id: str | None = None
    nodename: str | None = None


class Instantiate(Wire):
    task_instance_ids: list[int]


class ArrayLaunch(Wire):
    batch_number: int
    next_report_increment: float = Increment


class ArrayBatch(Wire):
    batch_number: int


class LogRunningOut(BaseModel):
    task_instance: list[Any] = Field(
        description="[id, status, workflow_run_id, task_id, name, command, workflow_id, "
        "stdout_dir, stderr_dir]"
    )
    # farmstead's additions (Jobmon's worker reads only task_instance):
    heartbeat_interval: float | None = Field(None, description="seconds between heartbeats")
    report_increment: float | None = Field(None, description="next_report_increment to send")
    resources: dict[str, Any] | None = Field(None, description="this instance's resources")


class ClaimRequest(Strict):
    """Ask for up to `limit` QUEUED instances to run; they come back INSTANTIATED."""

    limit: int = Field(1, ge=1, le=10_000)
    workflow_id: int | None = None


class Claimed(BaseModel):
    task_instance_id: int
    task_id: int
    workflow_id: int
    array_id: int
    array_batch_num: int
    array_step_id: int


class ClaimsOut(BaseModel):
    data: list[Claimed]


class StatusOut(BaseModel):
    status: str


class MessageOut(BaseModel):
    message: str


class ArrayInstanceOut(BaseModel):
    task_instance_id: int


class ErrorLogOut(BaseModel):
    task_instance_error_log: list[list[Any]]


class InstantiateOut(BaseModel):
    task_instance_batches: list[list[Any]]


class ClusterOut(BaseModel):
    cluster: list[Any] | None


# ---- farmstead's own API ------------------------------------------------------------------


class TaskSpec(Strict):
    """One task given on its own."""

    name: str = Field(min_length=1, max_length=255)
    command: str = Field(min_length=1)
    max_attempts: int | None = Field(None, ge=1, le=1000)
    priority: int | None = None
    resources: dict[str, Any] | None = None
    resource_scales: dict[str, float] | None = None


class ArraySpec(Strict):
    """Many tasks from one template: `{i}` in command and name replaced by first..last."""

    command: str = Field(min_length=1, description="command template, e.g. 'run.sh {i}'")
    first: int = Field(0, description="first value of i")
    last: int = Field(description="last value of i (inclusive)")
    name: str = Field("task_{i}", min_length=1, max_length=200)

    @model_validator(mode="after")
    def _range(self) -> "ArraySpec":
        if self.last < self.first:
            raise ValueError(f"empty range: last ({self.last}) is below first ({self.first})")
        return self

    @property
    def size(self) -> int:
        """How many tasks the range makes."""
        return self.last - self.first + 1


class WorkflowCreate(Strict):
    """A workflow and its tasks: a list, or an array over a range."""

    name: str = Field(min_length=1, max_length=255)
    tasks: list[TaskSpec] | None = None
    array: ArraySpec | None = None
    max_attempts: int | None = Field(None, ge=1, le=1000, description="tries per task")
    priority: int = 0
    resources: dict[str, Any] | None = Field(
        None, description="e.g. {'memory': 2, 'runtime': 3600, 'stdout': 'logs/'}"
    )
    resource_scales: dict[str, float] | None = Field(
        None, description="factors applied after a resource error; default memory and runtime x1.5"
    )
    retry_delay: float = Field(0.0, ge=0, le=7 * 86400, description="seconds before a retry")
    max_concurrently_running: int = Field(10_000, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> "WorkflowCreate":
        if (self.tasks is None) == (self.array is None):
            raise ValueError("give exactly one of 'tasks' or 'array'")
        if self.tasks is not None and not self.tasks:
            raise ValueError("'tasks' is empty")
        return self

    @property
    def size(self) -> int:
        """How many tasks the request makes."""
        return self.array.size if self.array is not None else len(self.tasks or [])


class WorkflowOut(BaseModel):
    id: int
    name: str
    status: Literal["R", "D", "F"]
    status_name: str
    total: int
    counts: dict[str, int]
    percent_done: float
    created_date: datetime
    retry_delay: float
    cancelled_date: datetime | None = None
    array_ids: list[int] = []


class WorkflowsOut(BaseModel):
    data: list[WorkflowOut]
    count: int


class TaskOut(BaseModel):
    id: int
    name: str
    status: str
    num_attempts: int
    max_attempts: int
    array_id: int
    progress: float
    last_error: str | None


class TasksOut(BaseModel):
    data: list[TaskOut]
    count: int


class InstanceOut(BaseModel):
    id: int
    status: str
    status_date: datetime
    array_id: int
    array_batch_num: int
    array_step_id: int
    distributor_id: str | None
    nodename: str | None
    report_by_date: datetime | None
    submitted_date: datetime | None
    resources: dict[str, Any] | None
    wallclock: float | None
    maxrss: int | None
    cpu: float | None
    io: int | None
    stdout: str | None
    stderr: str | None
    stdout_log: str | None
    stderr_log: str | None


class ErrorLogEntry(BaseModel):
    id: int
    task_instance_id: int
    error_time: datetime
    description: str


class TaskDetailOut(TaskOut):
    workflow_id: int
    command: str
    priority: int
    resources: dict[str, Any] | None
    resource_scales: dict[str, float] | None
    time_submitted: datetime | None
    time_started: datetime | None
    time_finished: datetime | None
    instances: list[InstanceOut]
    error_log: list[ErrorLogEntry]


class EventOut(BaseModel):
    id: int
    workflow_id: int
    entity: str
    entity_id: int
    from_status: str | None
    to_status: str
    time: datetime
    details: dict[str, Any] | None


class EventsOut(BaseModel):
    data: list[EventOut]


class ActionOut(BaseModel):
    """What an operator action changed."""

    workflow_id: int
    changed: dict[str, int] = Field(description="instances or tasks moved, by new status")
    total: int


class ErrorOut(BaseModel):
    detail: str
    error: str
