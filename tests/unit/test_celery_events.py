"""Every move of both state machines has its stream type: Celery's word or farmstead's own."""

import pytest

from farmstead.fsm.celery import active, celery_type, event_type, status_name, task_uuid
from farmstead.fsm.statuses import TaskStatus, TIStatus
from farmstead.fsm.tables import TASK_VALID, TI_VALID

TI_MOVES = [(a, b) for a, targets in TI_VALID.items() for b in targets]
TASK_MOVES = [(a, b) for a, targets in TASK_VALID.items() for b in targets]


def expected_for_instance(a: TIStatus | None, b: TIStatus) -> str | None:
    """The table of the README, written out move by move."""
    if a is None and b == TIStatus.QUEUED:
        return "task-sent"  # (a retry's new instance: see the test below)
    if b == TIStatus.INSTANTIATED:
        return "task-received"
    if b == TIStatus.LAUNCHED:
        return None if a == TIStatus.INSTANTIATED else "task-received"
    if b == TIStatus.RUNNING:
        return None if a == TIStatus.TRIAGING else "task-started"
    if b == TIStatus.DONE:
        return "task-succeeded"
    return None


@pytest.mark.parametrize(("a", "b"), [(None, TIStatus.QUEUED), *TI_MOVES])
def test_every_instance_move(a: TIStatus | None, b: TIStatus) -> None:
    got = celery_type("task_instance", a and a.value, b.value, None)
    assert got == expected_for_instance(a, b)
    kind = event_type("task_instance", a and a.value, b.value, None, b.name)
    assert kind == (got or f"task_instance-{b.name.lower().replace('_', '-')}")


@pytest.mark.parametrize(("a", "b"), TASK_MOVES)
def test_every_task_move(a: TaskStatus, b: TaskStatus) -> None:
    retry = (TaskStatus.ERROR_RECOVERABLE, TaskStatus.ADJUSTING_RESOURCES)
    failed = celery_type("task", a.value, b.value, {"via": "R"})
    revoked = celery_type("task", a.value, b.value, {"action": "cancel", "via": "Q"})
    stopped = celery_type("task", a.value, b.value, {"via": "K"})
    if b == TaskStatus.QUEUED and a in retry:
        assert failed == revoked == stopped == "task-retried"
    elif b == TaskStatus.ERROR_FATAL:
        assert (failed, revoked, stopped) == ("task-failed", "task-revoked", "task-revoked")
    else:
        assert failed is revoked is stopped is None
        assert event_type("task", a.value, b.value, None, b.name).startswith("task-")


def test_a_retry_is_one_task_retried_and_no_second_task_sent() -> None:
    """Celery sends task-retried once a new try is coming, and no task-sent for it; an error on
    the last try is task-failed alone."""
    error, queue_again = ("R", "E"), ("E", "Q")
    assert celery_type("task", *error, {"error": "boom"}) is None
    assert celery_type("task", *queue_again, {"error": "boom"}) == "task-retried"
    assert celery_type("task", "E", "F", {"error": "boom", "via": "R"}) == "task-failed"
    assert celery_type("task_instance", None, "Q", {"retry_of_task": 7}) is None
    assert celery_type("task_instance", None, "Q", None) == "task-sent"


def test_workers_and_workflows() -> None:
    assert [celery_type("agent", None, s, None) for s in "NBX"] == [
        "worker-online",
        "worker-heartbeat",
        "worker-offline",
    ]
    assert event_type("workflow", None, "R", {"action": "cancel"}, "RUNNING") == "workflow-cancel"
    assert event_type("workflow", None, "R", {"submitted_tasks": 3}, "RUNNING") == (
        "workflow-submitted"
    )
    assert status_name("task", "H") == "HELD" and status_name("agent", "X") == "OFFLINE"


def test_active_is_hysds_sent_received_started() -> None:
    live = {s for s in TIStatus if active("task_instance", s.value)}
    assert live == {
        TIStatus.QUEUED,
        TIStatus.INSTANTIATED,
        TIStatus.LAUNCHED,
        TIStatus.RUNNING,
        TIStatus.TRIAGING,
        TIStatus.KILL_SELF,
    }
    assert not active("task", "D") and not active("task", "F") and not active("task", "B")
    assert active("task", "Q") and active("task", "R") and active("task", "H")


def test_uuid_is_stable_per_task() -> None:
    assert task_uuid(7) == task_uuid(7) != task_uuid(8)
    assert len(task_uuid(7)) == 36
