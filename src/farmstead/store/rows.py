"""Plain objects the store returns."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class InstanceRow:
    """The columns of a task instance a transition needs."""

    id: int
    task_id: int
    workflow_id: int
    array_id: int
    status: str
    resources: dict[str, Any] | None
    reporter: str | None = None  # the worker identity that started it


@dataclass(frozen=True)
class TaskRow:
    """The columns of a task a transition needs (with its workflow's retry delay)."""

    id: int
    workflow_id: int
    array_id: int
    name: str
    command: str
    status: str
    tries: int  # tries used since the last resume
    max_attempts: int
    resources: dict[str, Any] | None
    resource_scales: dict[str, float] | None
    retry_delay: float
    cancelled: bool  # the workflow was cancelled: no retries


@dataclass(frozen=True)
class EventRow:
    """An event to write: one applied transition."""

    workflow_id: int
    entity: str
    entity_id: int
    from_status: str | None
    to_status: str
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class TimedRow:
    """A row read back with a time."""

    id: int
    time: datetime
    text: str
