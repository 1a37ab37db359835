"""taskfarm's words for farmstead's statuses: the taskfarm face's vocabulary, as data.

A taskfarm task is a farmstead task; its status is a view of the task's status. A task whose
instance is claimed, launched or running (instance INSTANTIATED, LAUNCHED, RUNNING or TRIAGING)
is `computing`; a task waiting for a claim (QUEUED, or on its way to a new try, or out of
tries until a restart) is `waiting`; DONE is `done`.
"""

from typing import Literal

from farmstead.fsm.statuses import TaskStatus, TIStatus

T = TaskStatus
TaskfarmStatus = Literal["waiting", "computing", "done"]

#: the taskfarm status of a task, by the farmstead task status
TASKFARM_STATUS: dict[TaskStatus, TaskfarmStatus] = {
    T.REGISTERING: "waiting",  # resumed, about to be queued again
    T.QUEUED: "waiting",  # its QUEUED instance waits for a claim
    T.ERROR_RECOVERABLE: "waiting",  # its try failed; the next is being queued
    T.ADJUSTING_RESOURCES: "waiting",
    T.ERROR_FATAL: "waiting",  # out of tries (or deleted): `restart` queues it again
    T.INSTANTIATING: "computing",  # claimed by a worker
    T.LAUNCHED: "computing",
    T.RUNNING: "computing",  # its instance RUNNING (or TRIAGING: late with an update)
    T.DONE: "done",
    T.HELD: "waiting",  # waits on upstream tasks (taskfarm runs have none; for completeness)
    T.BLOCKED: "waiting",
}

#: what a taskfarm `PUT … {"status": …}` asks of the task's instance
TASKFARM_REQUEST: dict[TaskfarmStatus, TIStatus] = {
    "done": TIStatus.DONE,  # the worker finished it: log_done
    "waiting": TIStatus.ERROR,  # the worker gives it back: this try ends, a new one is queued
    "computing": TIStatus.RUNNING,  # the worker still computes it: a heartbeat
}


def counts_by_view(counts: dict[str, int]) -> dict[TaskfarmStatus, int]:
    """Task counts by farmstead status letter, as counts by taskfarm status."""
    out: dict[TaskfarmStatus, int] = {"waiting": 0, "computing": 0, "done": 0}
    for letter, n in counts.items():
        out[TASKFARM_STATUS[TaskStatus(letter)]] += n
    return out
