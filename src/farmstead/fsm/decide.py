"""The one decision function: what a request does to a task instance and its task.

Everything that changes a status asks `decide` first; nothing else in the code decides one.
"""

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from farmstead.fsm.statuses import ERROR_TI, TERMINAL_TASK, TERMINAL_TI, TaskStatus, TIStatus
from farmstead.fsm.tables import TASK_VALID, TI_REWRITES, TI_UNTIMELY, TI_VALID

TI = TIStatus
T = TaskStatus

#: TI moves that carry their task along to the same letter.
_TASK_FOLLOWS: dict[TIStatus, TaskStatus] = {
    TI.INSTANTIATED: T.INSTANTIATING,
    TI.LAUNCHED: T.LAUNCHED,
    TI.RUNNING: T.RUNNING,
    TI.DONE: T.DONE,
}
#: Task statuses that hold no live instance: an instance still alive belongs to an older try.
_TASK_MOVED_ON = frozenset({T.REGISTERING, T.ADJUSTING_RESOURCES, T.ERROR_RECOVERABLE})
DEFAULT_RESOURCE_SCALES: dict[str, float] = {"memory": 1.5, "runtime": 1.5}
#: The most a resource may ask for (GB, seconds, cores): submissions are checked against it and
#: scaling after resource errors stops there, so a value never grows past what can be stored.
RESOURCE_MAX: dict[str, float] = {"memory": 1_000_000, "runtime": 366 * 86400, "cores": 100_000}


@dataclass(frozen=True)
class Apply:
    """Apply these moves: the instance to `ti_to`, the task along `task_path` (may be empty)."""

    ti_from: TIStatus
    ti_to: TIStatus
    task_from: TaskStatus
    task_path: tuple[TaskStatus, ...] = ()
    #: the task has tries left: queue a new instance in the same transaction
    retry: bool = False
    #: the retry follows a resource error: scale the new instance's resources
    adjust: bool = False
    requested: TIStatus | None = field(default=None, compare=False)

    @property
    def task_to(self) -> TaskStatus:
        """The task's status once the moves are applied."""
        return self.task_path[-1] if self.task_path else self.task_from


@dataclass(frozen=True)
class Same:
    """The instance already has the requested status: a client retry. Write nothing."""

    status: TIStatus


@dataclass(frozen=True)
class Untimely:
    """A race: the request arrived after the instance moved on. Answer the status only."""

    status: TIStatus


@dataclass(frozen=True)
class Invalid:
    """The move is not in the table. Answer 409 with the current status."""

    status: TIStatus
    requested: TIStatus


Decision = Apply | Same | Untimely | Invalid


def task_path(start: TaskStatus, goal: TaskStatus) -> tuple[TaskStatus, ...] | None:
    """Shortest walk through the task table from `start` to `goal` (excluding `start`)."""
    if start == goal:
        return ()
    seen = {start}
    queue: deque[tuple[TaskStatus, tuple[TaskStatus, ...]]] = deque([(start, ())])
    while queue:
        node, path = queue.popleft()
        for nxt in sorted(TASK_VALID[node]):
            if nxt in seen:
                continue
            if nxt == goal:
                return (*path, nxt)
            seen.add(nxt)
            queue.append((nxt, (*path, nxt)))
    return None


def decide(
    ti: TIStatus,
    task: TaskStatus,
    requested: TIStatus,
    num_attempts: int,
    max_attempts: int,
) -> Decision:
    """Decide what `requested` does to an instance in `ti` whose task is in `task`.

    `num_attempts` counts the task's tries so far (this one included) since an operator last
    resumed it; `max_attempts` is how many tries it may have.
    """
    asked = requested
    requested = TI_REWRITES.get((ti, requested), requested)
    if requested == ti:
        return Same(ti)
    if (ti, requested) in TI_UNTIMELY:
        return Untimely(ti)
    if requested not in TI_VALID[ti]:
        return Invalid(ti, asked)

    if task in TERMINAL_TASK:
        return _orphan(ti, task, requested, asked)

    if task in _TASK_MOVED_ON and ti == TI.KILL_SELF:
        # An operator resumed the task while this instance was being stopped: the task has
        # moved on, so the instance settles on its own and leaves the task alone.
        return Apply(ti, requested, task, requested=asked)

    if requested in _TASK_FOLLOWS:
        path = task_path(task, _TASK_FOLLOWS[requested])
        if path is None:
            if ti == TI.KILL_SELF:  # a stopped instance may always finish
                return Apply(ti, requested, task, requested=asked)
            return Invalid(ti, asked)
        return Apply(ti, requested, task, path, requested=asked)

    if requested in ERROR_TI or requested == TI.ERROR_FATAL:
        return _error(ti, task, requested, asked, num_attempts < max_attempts)

    # KILL_SELF, TRIAGING, NO_HEARTBEAT: the instance's own business; the task waits.
    return Apply(ti, requested, task, requested=asked)


def _orphan(ti: TIStatus, task: TaskStatus, requested: TIStatus, asked: TIStatus) -> Decision:
    """An instance whose task is settled already: it ends in ERROR_FATAL, the task untouched."""
    if requested in TERMINAL_TI:
        if TI.ERROR_FATAL not in TI_VALID[ti]:
            return Invalid(ti, asked)
        return Apply(ti, TI.ERROR_FATAL, task, requested=asked)
    if requested in _TASK_FOLLOWS:
        return Invalid(ti, asked)
    return Apply(ti, requested, task, requested=asked)


def _error(
    ti: TIStatus, task: TaskStatus, requested: TIStatus, asked: TIStatus, tries_left: bool
) -> Decision:
    """An error report: the task is retried while it has tries left, else ERROR_FATAL."""
    to_error = task_path(task, T.ERROR_RECOVERABLE)
    if to_error is None:
        return Invalid(ti, asked)
    if requested == TI.ERROR_FATAL or not tries_left:
        return Apply(ti, requested, task, (*to_error, T.ERROR_FATAL), requested=asked)
    if requested == TI.RESOURCE_ERROR:
        path = (*to_error, T.ADJUSTING_RESOURCES, T.QUEUED)
        return Apply(ti, requested, task, path, retry=True, adjust=True, requested=asked)
    return Apply(ti, requested, task, (*to_error, T.QUEUED), retry=True, requested=asked)


def retry_resources(
    resources: dict[str, Any] | None, scales: dict[str, float] | None
) -> dict[str, Any]:
    """Resources for the instance that retries a resource error: each scaled key multiplied.

    Integers are rounded up, so a small value still grows; `scales={}` means no scaling.
    """
    out = dict(resources or {})
    for key, factor in (DEFAULT_RESOURCE_SCALES if scales is None else scales).items():
        value = out.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            scaled = min(value * factor, RESOURCE_MAX.get(key, math.inf))
            if math.isfinite(scaled):
                out[key] = math.ceil(scaled) if isinstance(value, int) else scaled
    return out
