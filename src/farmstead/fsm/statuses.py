"""Status enums. The one-letter values are Jobmon's, on the wire and in the database."""

from enum import StrEnum


class TIStatus(StrEnum):
    """Status of a task instance (one try of a task)."""

    QUEUED = "Q"
    INSTANTIATED = "I"
    LAUNCHED = "O"
    RUNNING = "R"
    TRIAGING = "T"
    NO_HEARTBEAT = "X"
    KILL_SELF = "K"
    DONE = "D"
    ERROR = "E"
    UNKNOWN_ERROR = "U"
    RESOURCE_ERROR = "Z"
    NO_DISTRIBUTOR_ID = "W"
    ERROR_FATAL = "F"


class TaskStatus(StrEnum):
    """Status of a task (the unit of work, tried by one or more instances)."""

    REGISTERING = "G"
    QUEUED = "Q"
    INSTANTIATING = "I"
    LAUNCHED = "O"
    RUNNING = "R"
    DONE = "D"
    ERROR_RECOVERABLE = "E"
    ADJUSTING_RESOURCES = "A"
    ERROR_FATAL = "F"
    HELD = "H"  # waiting on upstream tasks (dependencies): no instance until they are DONE
    BLOCKED = "B"  # an upstream task ended ERROR_FATAL: it cannot run until a resume


class WorkflowStatus(StrEnum):
    """Status of a workflow, derived from its tasks (never stored on its own)."""

    RUNNING = "R"
    DONE = "D"
    FAILED = "F"
    CANCELLED = "C"


TI = TIStatus
#: Error reports a worker or distributor can make; each may lead to a retry.
ERROR_TI: frozenset[TIStatus] = frozenset(
    {TI.ERROR, TI.UNKNOWN_ERROR, TI.RESOURCE_ERROR, TI.NO_DISTRIBUTOR_ID}
)
#: An instance in one of these will never move again.
TERMINAL_TI: frozenset[TIStatus] = ERROR_TI | {TI.DONE, TI.ERROR_FATAL}
#: Live instances: not terminal. At most one per task (a partial unique index enforces it).
LIVE_TI: frozenset[TIStatus] = frozenset(TIStatus) - TERMINAL_TI
TERMINAL_TASK: frozenset[TaskStatus] = frozenset({TaskStatus.DONE, TaskStatus.ERROR_FATAL})
#: Tasks that cannot move without an operator: finished, failed, or blocked by a failed upstream
SETTLED_TASK: frozenset[TaskStatus] = TERMINAL_TASK | {TaskStatus.BLOCKED}
#: Tasks with no instance by design (dependencies): held back, or blocked
WITHOUT_INSTANCE_TASK: frozenset[TaskStatus] = frozenset({TaskStatus.HELD, TaskStatus.BLOCKED})


def workflow_status(counts: dict[str, int], cancelled: bool = False) -> WorkflowStatus:
    """A workflow's status from its task counts by status letter, and its cancel flag.

    RUNNING while any task can still move (a cancelled workflow too, while its commands stop);
    DONE when every task is DONE; then CANCELLED if an operator cancelled it, FAILED if not and
    some task is ERROR_FATAL or BLOCKED (nothing can move: the rest of its graph has run).
    """
    total = sum(counts.values())
    settled = sum(n for s, n in counts.items() if s in SETTLED_TASK)
    if settled < total:
        return WorkflowStatus.RUNNING
    if counts.get(TaskStatus.ERROR_FATAL, 0) or counts.get(TaskStatus.BLOCKED, 0):
        return WorkflowStatus.CANCELLED if cancelled else WorkflowStatus.FAILED
    return WorkflowStatus.DONE


#: An instance that holds an agent (a claimer's slot): claimed or launched, running, triaging
#: or being stopped. A workflow's agents are counted by these (db: `array_count.assigned`).
ASSIGNED_TI: frozenset[TIStatus] = frozenset(
    {TI.INSTANTIATED, TI.LAUNCHED, TI.RUNNING, TI.TRIAGING, TI.KILL_SELF}
)
#: Moves that count as a failure of the task's try (PyFarm's `failures`): an error report, a
#: launch that never reported, or a worker that gave up for good (not a cancel of a queued one)
FAILED_TI: frozenset[TIStatus] = ERROR_TI | {TI.NO_HEARTBEAT}
FAILS_INTO_FATAL_FROM: frozenset[TIStatus] = frozenset({TI.LAUNCHED, TI.RUNNING, TI.TRIAGING})
