"""The data model. Statuses are Jobmon's one-letter codes (see farmstead.fsm)."""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from farmstead.db.types import BigId, JSONType, UTCDateTime
from farmstead.fsm import LIVE_TI

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
_LIVE = ", ".join(f"'{s.value}'" for s in sorted(LIVE_TI))
#: the claim-order index's condition, as each database spells a false boolean; a claim's
#: WHERE repeats it word for word (store.claims), so the planner sees it implies it
QUEUED_PUSH = {"sqlite": "status = 'Q' AND pull = 0", "postgresql": "status = 'Q' AND NOT pull"}


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints the same."""

    metadata = MetaData(naming_convention=NAMING)


class Workflow(Base):
    """A batch of work: many tasks."""

    __tablename__ = "workflow"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    created_date: Mapped[datetime] = mapped_column(UTCDateTime)
    #: seconds a retry instance is held back before it may be instantiated
    retry_delay: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    #: set by a cancel, cleared by a resume: while set, no task of the workflow is retried
    cancelled_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: a pull-based taskfarm run: its uuid (hex) on taskfarm's API; null for other workflows
    uuid: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)
    #: a taskfarm run: seconds a claimed task may go without an update before it expires
    pull_timeout: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: the queue it was submitted into (null: the root); and its own knobs among its siblings
    queue_id: Mapped[int | None] = mapped_column(ForeignKey("queue.id"), nullable=True, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    weight: Mapped[float] = mapped_column(Float, default=10.0, server_default=text("10"))
    minimum_agents: Mapped[int | None] = mapped_column(Integer, nullable=True)
    maximum_agents: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Queue(Base):
    """A job queue (PyFarm's): a tree under an implicit root `/`; workflows sit in queues."""

    __tablename__ = "queue"
    __table_args__ = (UniqueConstraint("parent_id", "name"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("queue.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(64))
    #: the full path, e.g. `/render/film-a` (kept when a queue moves or is renamed)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    weight: Mapped[float] = mapped_column(Float, default=10.0, server_default=text("10"))
    minimum_agents: Mapped[int | None] = mapped_column(Integer, nullable=True)
    maximum_agents: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_date: Mapped[datetime] = mapped_column(UTCDateTime)


class Agent(Base):
    """A claimer: a local executor, a `farmstead worker`, a taskfarm worker; it heartbeats
    (its claims count as heartbeats). It is assigned to a workflow while it holds a live
    instance of it."""

    __tablename__ = "agent"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    pid: Mapped[int | None] = mapped_column(BigId, nullable=True)
    slots: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    #: the identity (Principal.identity) of the credentials that registered it
    identity: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_date: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_date: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: when it last got work from a claim
    last_claim_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: when the reconciler declared it offline (silent too long); a heartbeat clears it
    offline_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ArrayCount(Base):
    """Running counters of an array's instances, kept by database triggers on task_instance in
    the transaction of every move (migration 0008): QUEUED ones, and those holding an agent
    (fsm.ASSIGNED_TI). Claims read them instead of counting rows. On PostgreSQL every array
    with tasks has one: the task_count triggers (migration 0011) lock it first."""

    __tablename__ = "array_count"
    __table_args__ = (
        Index(
            "ix_array_count_active_workflow_id",
            "workflow_id",
            sqlite_where=text("queued > 0 OR assigned > 0"),
            postgresql_where=text("queued > 0 OR assigned > 0"),
        ),
    )
    array_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    workflow_id: Mapped[int] = mapped_column(BigId)
    queued: Mapped[int] = mapped_column(BigId, default=0, server_default=text("0"))
    assigned: Mapped[int] = mapped_column(BigId, default=0, server_default=text("0"))


class TaskCount(Base):
    """Running counts of an array's tasks by status, kept by database triggers on task in the
    transaction of every insert, status move and delete (migration 0011). A workflow's task
    counts are the sum over its arrays' rows (one indexed read), never a scan of its tasks;
    a count that drops to 0 keeps its row."""

    __tablename__ = "task_count"
    array_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(1), primary_key=True)
    workflow_id: Mapped[int] = mapped_column(BigId, index=True)
    n: Mapped[int] = mapped_column(BigId, default=0, server_default=text("0"))


class Array(Base):
    """A group of tasks launched together; its instances are addressed by (batch, step)."""

    __tablename__ = "array"
    #: the target of a task's (array_id, workflow_id) foreign key
    __table_args__ = (UniqueConstraint("id", "workflow_id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflow.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    max_concurrently_running: Mapped[int] = mapped_column(Integer, default=10_000)
    #: the last batch number handed out (retries take the next one, under the row lock)
    last_batch_num: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_date: Mapped[datetime] = mapped_column(UTCDateTime)


class Task(Base):
    """The unit of work, tried by one or more task instances."""

    __tablename__ = "task"
    __table_args__ = (
        Index("ix_task_workflow_id_status", "workflow_id", "status"),
        # a workflow's tasks a page at a time by id (migration 0012)
        Index("ix_task_workflow_id_id", "workflow_id", "id"),
        # one check per inserted task: its array exists and is in the task's workflow (which
        # therefore exists too, by the array's own foreign key)
        ForeignKeyConstraint(
            ["array_id", "workflow_id"],
            ["array.id", "array.workflow_id"],
            name="fk_task_array_id_array",
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[int] = mapped_column(BigId)
    array_id: Mapped[int] = mapped_column(BigId, index=True)
    name: Mapped[str] = mapped_column(String(255))
    command: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(1))
    status_date: Mapped[datetime] = mapped_column(UTCDateTime)
    #: instances created so far (every try, across resumes)
    num_attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: tries allowed per run; tries used = num_attempts - attempts_base
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    #: num_attempts when an operator last resumed the task (fresh tries start from here)
    attempts_base: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    resource_scales: Mapped[dict[str, float] | None] = mapped_column(JSONType, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    #: DONE tries set aside by resets of a finished task (taskfarm's `restart?all=True`): its
    #: DONE instances are these plus the current one (`farmstead db check` counts them)
    resets: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: times handed to an agent (PyFarm's attempts; num_attempts counts tries created)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: tries that failed (fsm.FAILED_TI); both kept by the triggers of migration 0008
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    time_submitted: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    time_started: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    time_finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TaskEdge(Base):
    """A dependency between two tasks: `downstream_id` runs only once `upstream_id` is DONE.

    Edges by task name within a submission, and element i on element i of another workflow's
    array, are stored as these rows (migration 0009)."""

    __tablename__ = "task_edge"
    downstream_id: Mapped[int] = mapped_column(ForeignKey("task.id"), primary_key=True)
    upstream_id: Mapped[int] = mapped_column(ForeignKey("task.id"), primary_key=True, index=True)


class WorkflowEdge(Base):
    """Every task of `downstream_workflow_id` runs only once every task of
    `upstream_workflow_id` is DONE (PyFarm's parent jobs; an all-of-an-array edge)."""

    __tablename__ = "workflow_edge"
    downstream_workflow_id: Mapped[int] = mapped_column(ForeignKey("workflow.id"), primary_key=True)
    upstream_workflow_id: Mapped[int] = mapped_column(
        ForeignKey("workflow.id"), primary_key=True, index=True
    )


class TaskInstance(Base):
    """One try of a task on some machine."""

    __tablename__ = "task_instance"
    __table_args__ = (
        Index("ix_task_instance_status_status_date", "status", "status_date"),
        Index(
            "uq_task_instance_array_batch_step",
            "array_id",
            "array_batch_num",
            "array_step_id",
            unique=True,
        ),
        # At most one live instance per task, ever: the database itself refuses a second.
        Index(
            "uq_task_instance_live_task_id",
            "task_id",
            unique=True,
            sqlite_where=text(f"status IN ({_LIVE})"),
            postgresql_where=text(f"status IN ({_LIVE})"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id"), index=True)
    workflow_id: Mapped[int] = mapped_column(BigId)
    array_id: Mapped[int] = mapped_column(BigId)
    array_batch_num: Mapped[int] = mapped_column(Integer)
    array_step_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(1))
    status_date: Mapped[datetime] = mapped_column(UTCDateTime)
    #: a copy of the task's priority (set at submission, never changed): the claim order
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    submitted_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: the heartbeat deadline and the last report as they were when the instance last left
    #: LAUNCHED or RUNNING; while it is in one of those, TaskInstanceDeadline holds the live ones
    report_by_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: when the instance last reported (running, heartbeat): named when it expires
    last_report_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: a retry is not instantiated before this time (the workflow's retry delay)
    available_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    distributor_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    nodename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    process_group_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    wallclock: Mapped[float | None] = mapped_column(Float, nullable=True)
    maxrss: Mapped[int | None] = mapped_column(BigId, nullable=True)
    cpu: Mapped[float | None] = mapped_column(Float, nullable=True)
    io: Mapped[int | None] = mapped_column(BigId, nullable=True)
    stdout: Mapped[str | None] = mapped_column(Text, nullable=True)
    stderr: Mapped[str | None] = mapped_column(Text, nullable=True)
    stdout_log: Mapped[str | None] = mapped_column(Text, nullable=True)
    stderr_log: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the worker identity that started it (log_running): only it (or an operator) may report
    #: for it while it runs
    reporter: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: an instance of a pull-based run (taskfarm): only its run's own claims take it, so it
    #: stays out of the claim-order index farmstead's executors walk
    pull: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: the agent that claimed it
    agent_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    #: a retry is not offered to this agent (its try failed there) while another could take it
    avoid_agent_id: Mapped[int | None] = mapped_column(BigId, nullable=True)


# a workflow's instances by status; its QUEUED ones in claim order
Index(
    "ix_task_instance_workflow_id_status_priority_id",
    TaskInstance.workflow_id,
    TaskInstance.status,
    TaskInstance.priority.desc(),
    TaskInstance.id,
)
# every QUEUED instance but a pull-based run's, in claim order: a claim reads the first
# `limit` entries (a run's own claims walk the workflow index above)
Index(
    "ix_task_instance_queued_priority_id",
    TaskInstance.priority.desc(),
    TaskInstance.id,
    sqlite_where=text(QUEUED_PUSH["sqlite"]),
    postgresql_where=text(QUEUED_PUSH["postgresql"]),
)


class TaskInstanceDeadline(Base):
    """The heartbeat deadline of an instance in a status that has one (LAUNCHED, RUNNING).

    A row exists exactly while its instance is in such a status: every move that enters one
    inserts it, every move that leaves copies it back to the instance and deletes it, in the
    same transaction. A heartbeat then rewrites this narrow row and its two index entries,
    not the wide instance row and the entries of all its indexes; the reconciler finds
    expired deadlines through `ix_task_instance_deadline_report_by_date`.
    """

    __tablename__ = "task_instance_deadline"
    __table_args__ = (Index("ix_task_instance_deadline_report_by_date", "report_by_date"),)
    task_instance_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("task_instance.id"), primary_key=True, autoincrement=False
    )
    report_by_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_report_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TaskInstanceErrorLog(Base):
    """An error a worker or distributor reported for an instance (written only when applied)."""

    __tablename__ = "task_instance_error_log"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_instance_id: Mapped[int] = mapped_column(ForeignKey("task_instance.id"), index=True)
    error_time: Mapped[datetime] = mapped_column(UTCDateTime)
    description: Mapped[str] = mapped_column(Text)


class Event(Base):
    """One row per applied transition, written in the transition's own transaction."""

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_entity_entity_id", "entity", "entity_id"),
        Index("ix_event_workflow_id_id", "workflow_id", "id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[int] = mapped_column(BigId)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[int] = mapped_column(BigId)
    from_status: Mapped[str | None] = mapped_column(String(1), nullable=True)
    to_status: Mapped[str] = mapped_column(String(1))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class FarmState(Base):
    """Named numbers the server keeps: `events_pruned_through`, the Celery relay's position."""

    __tablename__ = "farm_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Cluster(Base):
    """A cluster a Jobmon worker node asks for by name (its type names a Jobmon plugin)."""

    __tablename__ = "cluster"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    cluster_type_name: Mapped[str] = mapped_column(String(255))
    connection_parameters: Mapped[str | None] = mapped_column(Text, nullable=True)


class User(Base):
    """Someone who may use the server, with a role (fsm.roles); a password only if they sign in
    with one (an argon2 hash), else they use tokens."""

    __tablename__ = "app_user"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_date: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A bearer token: only its SHA-256 is stored (a token is 256 random bits: a slow hash
    adds nothing). A worker token may be scoped to some workflows."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    #: the workflows a worker token may act on; null: any
    workflow_ids: Mapped[list[int] | None] = mapped_column(JSONType, nullable=True)
    created_date: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    expires_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TaskfarmWorker(Base):
    """A taskfarm worker (`POST /api/worker`): who claims a run's tasks, and with what
    credentials (only they may update the task it holds)."""

    __tablename__ = "taskfarm_worker"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(BigId)
    #: the identity (Principal.identity) of the credentials that registered it
    identity: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_date: Mapped[datetime] = mapped_column(UTCDateTime)
