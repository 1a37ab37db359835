"""Pydantic wire models shared by the API and the client.

Every request model is strict (no coercion: `false` is not an id, "3" is not a number), refuses
NaN and Infinity, and bounds every field by what its column and the server hold (`bounds`).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

from farmstead.bounds import COMMAND_MAX, IDS_MAX, NAME_MAX, Seconds, check_text
from farmstead.bounds import Command as Command
from farmstead.bounds import Count64 as Count64
from farmstead.bounds import Cursor as Cursor
from farmstead.bounds import DbId as DbId
from farmstead.bounds import Increment as Increment
from farmstead.bounds import Int32 as Int32
from farmstead.bounds import JobId as JobId
from farmstead.bounds import Message as Message
from farmstead.bounds import Name as Name
from farmstead.bounds import NodeName as NodeName
from farmstead.bounds import ProcessGroupId as ProcessGroupId
from farmstead.bounds import ReportedPath as ReportedPath
from farmstead.bounds import Tail as Tail
from farmstead.fsm import celery
from farmstead.resources import Resources as Resources
from farmstead.resources import ResourceScales as ResourceScales

ErrorState = Literal["E", "U", "Z", "W", "F"]
#: ids in one batch request: at most IDS_MAX
IdList = Annotated[list[DbId], Field(max_length=IDS_MAX)]


class _Request(BaseModel):
    """Strict, finite, and no raw NUL or lone surrogate in any text field."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        # a safety net: reported text is cleaned before this runs, user text checked by its type
        return check_text(value) if isinstance(value, str) else value


class Wire(_Request):
    """A request from a Jobmon-compatible client: unknown fields are ignored, as Jobmon does."""

    model_config = ConfigDict(extra="ignore")


class Strict(_Request):
    """A request to farmstead's own API: an unknown field is an error."""

    model_config = ConfigDict(extra="forbid")


class WorkerFields(Wire):
    """Optional fields a worker may send with any report; omitted ones are never overwritten."""

    distributor_id: JobId | None = None
    nodename: NodeName | None = None
    stdout: ReportedPath | None = Field(None, description="path of the stdout log file")
    stderr: ReportedPath | None = Field(None, description="path of the stderr log file")
    stdout_log: Tail | None = Field(None, description="tail of stdout (the end is kept)")
    stderr_log: Tail | None = Field(None, description="tail of stderr (the end is kept)")
    wallclock: Seconds | None = Field(None, description="seconds")
    maxrss: Count64 | None = Field(None, description="bytes")
    cpu: Seconds | None = Field(None, description="CPU seconds")
    io: Count64 | None = Field(None, description="bytes read and written")


class LogRunning(Wire):
    process_group_id: ProcessGroupId | None = None
    next_report_increment: Increment
    nodename: NodeName | None = None
    distributor_id: JobId | None = None


class LogReportBy(Wire):
    next_report_increment: Increment
    distributor_id: JobId | None = None
    stdout: ReportedPath | None = None
    stderr: ReportedPath | None = None


class BatchReportBy(Wire):
    next_report_increment: Increment
    task_instance_ids: IdList


class LogDone(WorkerFields):
    pass


class LogErrorWorkerNode(WorkerFields):
    error_state: ErrorState
    error_description: Message = ""


class LogDistributorId(Wire):
    distributor_id: JobId
    next_report_increment: Increment


class LogNoDistributorId(Wire):
    no_id_err_msg: Message = ""


class LogKnownError(Wire):
    error_state: ErrorState
    error_message: Message = ""
    distributor_id: JobId | None = None
    nodename: NodeName | None = None


class Instantiate(Wire):
    task_instance_ids: IdList


class ArrayLaunch(Wire):
    batch_number: Int32
    next_report_increment: Increment


class ArrayBatch(Wire):
    batch_number: Int32


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
    workflow_id: DbId | None = None
    agent_id: DbId | None = Field(None, description="the claiming agent (POST /v3/agents)")


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


MaxAttempts = Annotated[int, Field(ge=1, le=1000, description="tries per task")]


class TaskSpec(Strict):
    """One task given on its own."""

    name: Name
    command: Command
    max_attempts: MaxAttempts | None = None
    priority: Int32 | None = None
    resources: Resources | None = None
    resource_scales: ResourceScales | None = None
    depends_on: Annotated[list[Name], Field(max_length=10_000)] | None = Field(
        None, description="names of tasks of this submission that must be DONE first"
    )


class WorkflowDep(Strict):
    """An upstream workflow: all of it first, or element i of it before element i of this."""

    workflow: DbId
    mode: Literal["all", "each"] = Field(
        "all",
        description="all: every task waits for all of the upstream workflow; each: task i "
        "(in submission order) waits for task i of it (same sizes)",
    )


class ArraySpec(Strict):
    """Many tasks from one template: `{i}` in command and name replaced by first..last."""

    command: Command = Field(description="command template, e.g. 'run.sh {i}'")
    first: Int32 = Field(0, description="first value of i")
    last: Int32 = Field(description="last value of i (inclusive)")
    name: Name = Field("task_{i}", description="name template; expanded at most 255 characters")

    @model_validator(mode="after")
    def _range(self) -> "ArraySpec":
        if self.last < self.first:
            raise ValueError(f"empty range: last ({self.last}) is below first ({self.first})")
        # len(str(i)) is largest at an end of the range, so the ends bound every expansion
        for end in (self.first, self.last):
            for field, template, most in (
                ("name", self.name, NAME_MAX),
                ("command", self.command, COMMAND_MAX),
            ):
                size = len(template.replace("{i}", str(end)))
                if size > most:
                    raise ValueError(
                        f"{field} expands to {size} characters at i = {end} (at most {most})"
                    )
        return self

    @property
    def size(self) -> int:
        """How many tasks the range makes."""
        return self.last - self.first + 1


QueuePath = Annotated[str, Field(min_length=1, max_length=1024, examples=["/render/film-a"])]
Weight = Annotated[float, Field(gt=0, le=1e9)]
Agents = Annotated[int, Field(ge=0, le=2**31 - 1)]


class QueueKnobs(Strict):
    """A queue's or a workflow's place among its siblings (PyFarm's knobs)."""

    priority: Int32 | None = Field(None, description="higher first (default 0)")
    weight: Weight | None = Field(None, description="share of agents among siblings (default 10)")
    minimum_agents: Agents | None = None
    maximum_agents: Agents | None = None


class QueueCreate(QueueKnobs):
    path: QueuePath


class QueueChange(QueueKnobs):
    move_to: QueuePath | None = Field(None, description="a new parent queue ('/' for the root)")
    clear: list[Literal["minimum_agents", "maximum_agents"]] = Field(
        [], max_length=2, description="knobs to unset"
    )


class QueueOut(BaseModel):
    id: int
    name: str
    path: str
    parent: str | None
    priority: int
    weight: float
    minimum_agents: int | None
    maximum_agents: int | None
    agents: int = Field(description="agents working in it now (claimed instances below it)")
    queued: int = Field(description="QUEUED instances below it")
    workflows: list[int] = Field(description="active workflows directly in it")


class QueuesOut(BaseModel):
    data: list[QueueOut]


class WorkflowPlace(QueueKnobs):
    """Move a workflow to a queue and/or change its knobs."""

    queue: QueuePath | None = None


class AgentCreate(Strict):
    name: Name
    hostname: NodeName
    kind: Literal["local", "worker", "taskfarm", "slurm", "other"] = "other"
    pid: int | None = Field(None, ge=0, le=2**62)
    slots: int = Field(1, ge=1, le=100_000)


class AgentOut(BaseModel):
    id: int
    name: str
    hostname: str
    kind: str
    pid: int | None
    slots: int
    identity: str | None
    created_date: datetime
    last_seen_date: datetime
    last_claim_date: datetime | None


class AgentsOut(BaseModel):
    data: list[AgentOut]


class Reason(BaseModel):
    code: str = Field(
        description="running, claimed, done, failed, cancelled, retry_hold, pull, array_limit, "
        "queue_maximum, workflow_maximum, avoids_agent, no_agent, waiting, between_tries, "
        "upstream, upstream_failed, status"
    )
    message: str
    data: dict[str, Any]


class ExplainOut(BaseModel):
    task_id: int
    status: str
    status_name: str
    attempts: int = Field(description="times handed to an agent")
    failures: int = Field(description="tries that failed")
    reasons: list[Reason]


class WorkflowCreate(Strict):
    """A workflow and its tasks: a list, or an array over a range."""

    name: Name
    tasks: Annotated[list[TaskSpec], Field(max_length=1_000_000)] | None = None
    array: ArraySpec | None = None
    max_attempts: MaxAttempts | None = None
    priority: Int32 = 0
    resources: Resources | None = None
    resource_scales: ResourceScales | None = None
    retry_delay: float = Field(0.0, ge=0, le=7 * 86400, description="seconds before a retry")
    max_concurrently_running: int = Field(
        10_000, ge=1, le=2**31 - 1, description="most instances of its array holding an agent"
    )
    queue: QueuePath | None = Field(None, description="the queue it goes into (default: /)")
    weight: Weight = Field(10.0, description="its share of agents among its queue's children")
    minimum_agents: Agents | None = Field(None, description="agents it is given first")
    maximum_agents: Agents | None = Field(None, description="agents it never goes above")
    depends_on: Annotated[list[WorkflowDep], Field(max_length=1000)] = Field(
        [], description="workflows whose tasks must be DONE first"
    )

    @model_validator(mode="after")
    def _agents(self) -> "WorkflowCreate":
        low, high = self.minimum_agents, self.maximum_agents
        if low is not None and high is not None and low > high:
            raise ValueError(f"minimum_agents ({low}) is above maximum_agents ({high})")
        return self

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

    @property
    def has_graph(self) -> bool:
        """Whether any of its tasks waits on another (so they start HELD)."""
        return bool(self.depends_on) or any(t.depends_on for t in self.tasks or ())


class WorkflowOut(BaseModel):
    id: int
    name: str
    status: Literal["R", "D", "F", "C"] = Field(
        description="R running, D done, F failed, C cancelled by an operator"
    )
    status_name: str
    total: int
    counts: dict[str, int]
    percent_done: float
    created_date: datetime
    retry_delay: float
    cancelled_date: datetime | None = None
    array_ids: list[int] = []
    uuid: str | None = Field(
        None, description="a taskfarm run's uuid: its tasks are claimed through /api only"
    )
    queue: str = Field("/", description="the queue it is in")
    priority: int = 0
    weight: float = 10.0
    minimum_agents: int | None = None
    maximum_agents: int | None = None


class WorkflowsOut(BaseModel):
    data: list[WorkflowOut]
    count: int


class TaskOut(BaseModel):
    id: int
    name: str
    status: str
    num_attempts: int = Field(description="tries created")
    max_attempts: int
    array_id: int
    progress: float
    last_error: str | None = Field(description="the last try's error (cleared when done)")
    attempts: int = Field(0, description="times handed to an agent")
    failures: int = Field(0, description="tries that failed")

    @computed_field(description="HySDS's active: the task is sent, received or started")  # type: ignore[prop-decorator]
    @property
    def active(self) -> bool:
        return celery.active("task", self.status)


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

    @computed_field(description="HySDS's active: the try is sent, received or started")  # type: ignore[prop-decorator]
    @property
    def active(self) -> bool:
        return celery.active("task_instance", self.status)


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


class StreamEventOut(BaseModel):
    """One event of the stream: Celery's fields beside farmstead's."""

    model_config = ConfigDict(extra="allow")

    id: int
    type: str = Field(description="Celery's event type (task-sent, …) or farmstead's own")
    timestamp: float = Field(description="seconds since the epoch (Celery's)")
    utcoffset: int = 0
    clock: int
    time: datetime
    workflow_id: int
    entity: str
    entity_id: int
    from_status: str | None
    to_status: str
    status_name: str
    details: dict[str, Any] | None
    task_id: int | None = None
    task_instance_id: int | None = None
    active: bool | None = Field(None, description="HySDS: sent, received or started")
    uuid: str | None = Field(None, description="the task's Celery uuid (the same for every try)")
    name: str | None = Field(None, description="the task's name")
    hostname: str | None = None
    retries: int | None = Field(None, description="tries of the task before this one")


class EventPageOut(BaseModel):
    data: list[StreamEventOut]
    next_after: int = Field(description="ask again with after=this to go on")


class ActionOut(BaseModel):
    """What an operator action changed."""

    workflow_id: int
    changed: dict[str, int] = Field(description="instances or tasks moved, by new status")
    total: int


class FieldErrorOut(BaseModel):
    """One problem with a request: where, and what."""

    field: str = Field(
        description="where: `tasks[0].command` in the body, `path.<name>` or `query.<name>` for "
        "parameters, `body` for the whole body"
    )
    message: str


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer: a short class name and one human-readable line; some errors
    add keys of their own (a 409 adds `status`, `requested`, `task_instance_id`)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="a short class name, e.g. NotFound, ValidationError")
    detail: str = Field(description="what is wrong, in one line")


class ValidationErrorOut(ErrorOut):
    """A 422: the request is well-formed but a value is not acceptable; one item per problem."""

    errors: list[FieldErrorOut]


# --- users and tokens -----------------------------------------------------------------------

RoleName = Literal["admin", "operator", "worker", "viewer"]
UserName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]


class TokenCreate(Strict):
    """A new token: its name, role, optional owner (admins only), scope and lifetime."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    role: RoleName = "worker"
    owner: UserName | None = None
    #: a worker token's workflows (it may act only on their instances)
    workflow_ids: Annotated[list[DbId], Field(min_length=1, max_length=1000)] | None = None
    #: seconds until it expires (none: until revoked)
    expires_in: Annotated[float, Field(gt=0, le=10 * 365 * 86400)] | None = None


class TokenOut(BaseModel):
    """A token, never its secret (but for the one answer that creates it)."""

    id: int
    name: str
    role: str
    owner: str
    workflow_ids: list[int] | None
    created_date: datetime
    created_by: str
    expires_date: datetime | None
    last_used_date: datetime | None
    revoked_date: datetime | None


class TokenCreatedOut(TokenOut):
    """The new token: `token` is shown this once and stored only as a hash."""

    token: str


class TokensOut(BaseModel):
    data: list[TokenOut]


class UserCreate(Strict):
    """A new user; a password only if they will sign in with one (HTTP Basic)."""

    name: UserName
    role: RoleName
    password: Annotated[str, Field(min_length=8, max_length=1024)] | None = None


class UserOut(BaseModel):
    id: int
    name: str
    role: str
    has_password: bool
    tokens: int = 0


class UsersOut(BaseModel):
    data: list[UserOut]
