"""Celery's words for farmstead's moves: the event vocabulary HySDS, Flower and every Celery
user watch, as data and one pure function.

farmstead writes one event row per move of an instance, a task or a workflow (and audit rows
for users, tokens and agents). Some of those moves are what Celery calls a task event; the rest
keep farmstead's own name (`task_instance-launched`, `task-held`, …), so a stream filtered to
Celery's types reads like a Celery worker's, and an unfiltered one misses nothing.

| farmstead move | Celery event |
|---|---|
| a new instance QUEUED (submission, release, retry, resume) | task-sent |
| instance → INSTANTIATED (claimed), or → LAUNCHED without a claim first | task-received |
| instance → RUNNING (not back from TRIAGING) | task-started |
| instance → DONE | task-succeeded (`runtime`) |
| task → ERROR_RECOVERABLE / ADJUSTING_RESOURCES (an error with a try left) | task-retried |
| task → ERROR_FATAL, cancelled (or its instance was KILL_SELF) | task-revoked |
| task → ERROR_FATAL otherwise | task-failed (`exception`) |
| agent registered / seen / gone | worker-online / worker-heartbeat / worker-offline |
"""

import uuid

from farmstead.fsm.statuses import TaskStatus, TIStatus

TI, T = TIStatus, TaskStatus

#: Celery's task event types, in the order a task meets them
TASK_EVENTS = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
)
WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")
#: an agent's event rows: to_status letters (entity "agent")
AGENT_ONLINE, AGENT_HEARTBEAT, AGENT_OFFLINE = "N", "B", "X"
_AGENT = {AGENT_ONLINE: "worker-online", AGENT_HEARTBEAT: "worker-heartbeat"}
_AGENT[AGENT_OFFLINE] = "worker-offline"

#: HySDS's active statuses (sent, received, started); the rest are inactive
ACTIVE_TI: frozenset[str] = frozenset(
    s.value
    for s in (TI.QUEUED, TI.INSTANTIATED, TI.LAUNCHED, TI.RUNNING, TI.TRIAGING, TI.KILL_SELF)
)
ACTIVE_TASK: frozenset[str] = frozenset(
    s.value
    for s in (
        T.REGISTERING,
        T.QUEUED,
        T.INSTANTIATING,
        T.LAUNCHED,
        T.RUNNING,
        T.ERROR_RECOVERABLE,
        T.ADJUSTING_RESOURCES,
        T.HELD,
    )
)
#: a cancelled running command gets SIGTERM first (Celery's `signum`)
SIGTERM = 15
#: names a task's Celery `uuid`: stable for the task across its tries, as Celery's is
NAMESPACE = uuid.UUID("4d1f3a5e-7c1b-5f0e-9a57-6661726d7374")


def active(entity: str, status: str) -> bool:
    """HySDS's `active`: a task or instance that is sent, received or started."""
    return status in (ACTIVE_TI if entity == "task_instance" else ACTIVE_TASK)


def task_uuid(task_id: int) -> str:
    """The Celery `uuid` of a farmstead task (the same for every try, as in Celery)."""
    return str(uuid.uuid5(NAMESPACE, f"task:{task_id}"))


def celery_type(
    entity: str, from_status: str | None, to_status: str, details: dict[str, object] | None
) -> str | None:
    """The Celery event type of a move, or None when Celery has no word for it."""
    if entity == "task_instance":
        if to_status == TI.QUEUED and from_status is None:
            # a retry's new try is not news to Celery: its task stays RETRY until received
            return None if (details or {}).get("retry_of_task") else "task-sent"
        if to_status == TI.INSTANTIATED or (
            to_status == TI.LAUNCHED and from_status != TI.INSTANTIATED
        ):
            return "task-received"
        if to_status == TI.RUNNING and from_status != TI.TRIAGING:  # (triage rescued: no news)
            return "task-started"
        if to_status == TI.DONE:
            return "task-succeeded"
        return None
    if entity == "task":
        # an error is a retry only once a new try is queued (the last try's error goes on
        # to ERROR_FATAL: task-failed alone, as Celery says it)
        if to_status == T.QUEUED and from_status in (T.ERROR_RECOVERABLE, T.ADJUSTING_RESOURCES):
            return "task-retried"
        if to_status == T.ERROR_FATAL:
            d = details or {}
            cancelled = d.get("action") == "cancel" or d.get("via") == TI.KILL_SELF
            return "task-revoked" if cancelled else "task-failed"
        return None
    if entity == "agent":
        return _AGENT.get(to_status)
    return None


def event_type(
    entity: str,
    from_status: str | None,
    to_status: str,
    details: dict[str, object] | None,
    status_name: str,
) -> str:
    """The stream's type of an event: Celery's word, else farmstead's (`task-held`, …)."""
    found = celery_type(entity, from_status, to_status, details)
    if found is not None:
        return found
    if entity == "workflow":  # its rows say what happened to it: submitted, cancel, resume
        action = (details or {}).get("action") or "submitted"
        return f"workflow-{action}"
    return f"{entity}-{status_name.lower().replace('_', '-')}"


def status_name(entity: str, status: str) -> str:
    """A status letter's name for `entity` (the letter itself when it names nothing)."""
    try:
        if entity == "task_instance":
            return TIStatus(status).name
        if entity == "task":
            return TaskStatus(status).name
    except ValueError:
        return status
    names = {
        "workflow": {"R": "RUNNING", "D": "DONE", "F": "FAILED", "C": "CANCELLED"},
        "agent": {AGENT_ONLINE: "ONLINE", AGENT_HEARTBEAT: "HEARTBEAT", AGENT_OFFLINE: "OFFLINE"},
    }
    return names.get(entity, {}).get(status, status)
