"""Transition tables of the task instance (TI) and the task. One comment per edge says why."""

from typing import Any

from farmstead.fsm.statuses import TERMINAL_TI, TaskStatus, TIStatus
from farmstead.fsm.taskfarm import TASKFARM_STATUS

TI = TIStatus
T = TaskStatus

TI_VALID: dict[TIStatus, frozenset[TIStatus]] = {
    TI.QUEUED: frozenset(
        {
            TI.INSTANTIATED,  # a distributor or the local executor takes it
            TI.RUNNING,  # a worker started by hand (a Slurm array submitted with no distributor)
            TI.KILL_SELF,  # Jobmon's terminate of a run; kept for compatibility
            TI.ERROR_FATAL,  # cancelled before anything ran
        }
    ),
    TI.INSTANTIATED: frozenset(
        {
            TI.LAUNCHED,  # the distributor submitted it (log_distributor_id, array launch)
            TI.NO_DISTRIBUTOR_ID,  # submission failed, or the executor died before launching
            TI.RUNNING,  # the worker started before the distributor logged the submission
            TI.KILL_SELF,  # Jobmon's terminate of a run
            TI.ERROR_FATAL,  # cancelled before launch
        }
    ),
    TI.LAUNCHED: frozenset(
        {
            TI.RUNNING,  # the worker logged running
            TI.NO_HEARTBEAT,  # the reconciler: never reported after launch
            TI.ERROR,  # the executor saw the job exit before the worker could report
            TI.UNKNOWN_ERROR,  # distributor triage
            TI.RESOURCE_ERROR,  # distributor triage: killed for memory or time
            TI.KILL_SELF,  # cancelled while launched
            TI.ERROR_FATAL,  # environment mismatch: fail at once
        }
    ),
    TI.RUNNING: frozenset(
        {
            TI.TRIAGING,  # the reconciler: heartbeat deadline passed
            TI.DONE,  # the worker: exit 0
            TI.ERROR,  # the worker: non-zero exit
            TI.UNKNOWN_ERROR,  # distributor triage
            TI.RESOURCE_ERROR,  # the worker: killed for memory or time
            TI.KILL_SELF,  # cancelled while running; the worker learns it from its heartbeat
            TI.ERROR_FATAL,  # the worker gave up for good
        }
    ),
    TI.TRIAGING: frozenset(
        {
            TI.RUNNING,  # a late heartbeat or log_running rescues it (Jobmon >= 3.4.21 cannot)
            TI.DONE,  # the worker finished after all
            TI.ERROR,  # the worker reports its command's error (Jobmon leaves it stuck in T)
            TI.UNKNOWN_ERROR,  # the reconciler: triage grace period passed
            TI.RESOURCE_ERROR,  # triage found a memory or time kill
            TI.KILL_SELF,  # cancelled while triaging
            TI.ERROR_FATAL,  # given up
        }
    ),
    TI.NO_HEARTBEAT: frozenset(
        {
            TI.ERROR,  # the reconciler retries it
            TI.ERROR_FATAL,  # cancelled
        }
    ),
    TI.KILL_SELF: frozenset(
        {
            TI.ERROR_FATAL,  # the worker stopped, or its deadline passed: always reachable
            TI.DONE,  # the command finished before it could be stopped
        }
    ),
}
for _terminal in TERMINAL_TI:
    TI_VALID[_terminal] = frozenset()  # terminal: nothing leaves it

#: A request that a race makes arrive after the instance moved on: answered 200 with the
#: current status, nothing written. Any report on a terminal instance is such a race (a
#: reconciler expiry and a worker's done report cross); so are a distributor's late launch
#: reports for an instance its worker already moved.
TI_UNTIMELY: frozenset[tuple[TIStatus, TIStatus]] = frozenset(
    {(src, dst) for src in TERMINAL_TI for dst in TIStatus if src != dst}
    | {
        (TI.RUNNING, TI.INSTANTIATED),  # late instantiate after the worker started
        (TI.RUNNING, TI.LAUNCHED),  # late launch report after the worker started
        (TI.TRIAGING, TI.LAUNCHED),
        (TI.LAUNCHED, TI.INSTANTIATED),
        (TI.KILL_SELF, TI.INSTANTIATED),
        (TI.KILL_SELF, TI.LAUNCHED),
        (TI.NO_HEARTBEAT, TI.LAUNCHED),
        (TI.TRIAGING, TI.TRIAGING),
    }
)

#: Requests that mean something else in the instance's current status. A KILL_SELF instance
#: whose worker reports running or any error has been stopped: it ends in ERROR_FATAL. A worker
#: that starts after the reconciler declared NO_HEARTBEAT gets its instance retried.
TI_REWRITES: dict[tuple[TIStatus, TIStatus], TIStatus] = {
    (TI.KILL_SELF, TI.RUNNING): TI.ERROR_FATAL,
    (TI.KILL_SELF, TI.ERROR): TI.ERROR_FATAL,
    (TI.KILL_SELF, TI.UNKNOWN_ERROR): TI.ERROR_FATAL,
    (TI.KILL_SELF, TI.RESOURCE_ERROR): TI.ERROR_FATAL,
    (TI.KILL_SELF, TI.NO_DISTRIBUTOR_ID): TI.ERROR_FATAL,
    (TI.NO_HEARTBEAT, TI.RUNNING): TI.ERROR,
    (TI.NO_HEARTBEAT, TI.UNKNOWN_ERROR): TI.ERROR,
    (TI.NO_HEARTBEAT, TI.RESOURCE_ERROR): TI.ERROR,
}

TASK_VALID: dict[TaskStatus, frozenset[TaskStatus]] = {
    T.REGISTERING: frozenset(
        {
            T.QUEUED,  # resumed: queued again with a new instance
            T.HELD,  # resumed, but an upstream task is not DONE yet: it waits again
        }
    ),
    T.QUEUED: frozenset(
        {
            T.INSTANTIATING,  # its instance was instantiated
            T.ERROR_RECOVERABLE,  # its instance was cancelled or failed before instantiation
        }
    ),
    T.INSTANTIATING: frozenset(
        {
            T.LAUNCHED,  # its instance was launched
            T.RUNNING,  # its worker started before the launch was logged
            T.ERROR_RECOVERABLE,  # its instance failed to launch
        }
    ),
    T.LAUNCHED: frozenset({T.RUNNING, T.ERROR_RECOVERABLE}),
    T.RUNNING: frozenset({T.DONE, T.ERROR_RECOVERABLE}),
    T.ERROR_RECOVERABLE: frozenset(
        {
            T.QUEUED,  # tries left: the server queues a new instance in the same transaction
            T.ADJUSTING_RESOURCES,  # resource error with tries left: scale, then queue
            T.ERROR_FATAL,  # tries used up, or cancelled
            T.REGISTERING,  # kept for Jobmon compatibility (its swarm re-queues from G)
        }
    ),
    T.ADJUSTING_RESOURCES: frozenset({T.QUEUED}),  # resources scaled: queued again
    T.DONE: frozenset({T.REGISTERING}),  # an operator reset a finished run (taskfarm's restart)
    T.ERROR_FATAL: frozenset({T.REGISTERING}),  # an operator resumed the workflow
    T.HELD: frozenset(
        {
            T.QUEUED,  # every upstream task is DONE: released with its first instance
            T.BLOCKED,  # an upstream task ended ERROR_FATAL (or was itself blocked)
            T.ERROR_FATAL,  # cancelled while waiting
        }
    ),
    T.BLOCKED: frozenset({T.HELD}),  # a resume re-opened its upstream: it waits again
}


def tables_as_json() -> dict[str, Any]:
    """The tables as served at GET /v3/fsm/transitions."""
    return {
        "task_instance": {
            "statuses": {s.value: s.name for s in TIStatus},
            "valid": {s.value: sorted(d.value for d in TI_VALID[s]) for s in TIStatus},
            "untimely": sorted([a.value, b.value] for a, b in TI_UNTIMELY),
            "rewrites": sorted([a.value, b.value, c.value] for (a, b), c in TI_REWRITES.items()),
            "terminal": sorted(s.value for s in TERMINAL_TI),
        },
        "task": {
            "statuses": {s.value: s.name for s in TaskStatus},
            "valid": {s.value: sorted(d.value for d in TASK_VALID[s]) for s in TaskStatus},
        },
        # the other faces' words for the task statuses (taskfarm's /api: waiting, computing,
        # done)
        "vocabularies": {"taskfarm": {s.value: v for s, v in TASKFARM_STATUS.items()}},
    }


#: (live instance status, task status) pairs a consistent database can hold. Anything else
#: means a transition moved one row without the other.
CONSISTENT_LIVE_PAIRS: frozenset[tuple[TIStatus, TaskStatus]] = frozenset(
    {
        (TI.QUEUED, T.QUEUED),
        (TI.INSTANTIATED, T.INSTANTIATING),
        (TI.LAUNCHED, T.LAUNCHED),
        (TI.RUNNING, T.RUNNING),
        (TI.TRIAGING, T.RUNNING),  # triage is the instance's business; the task still runs
        (TI.NO_HEARTBEAT, T.LAUNCHED),
        (TI.KILL_SELF, T.QUEUED),  # stopping: the task waits for the instance's last word
        (TI.KILL_SELF, T.INSTANTIATING),
        (TI.KILL_SELF, T.LAUNCHED),
        (TI.KILL_SELF, T.RUNNING),
    }
)
