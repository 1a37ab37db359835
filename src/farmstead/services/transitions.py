"""Transitions: lock the instance, then its task; ask the fsm; write both rows and the events."""

from dataclasses import dataclass
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm import Invalid, Same, TIStatus, Untimely
from farmstead.services.bulk import apply_bulk, decide_for
from farmstead.services.errors import Forbidden, InvalidTransition, NotFound
from farmstead.services.uow import in_transaction
from farmstead.store import instances as store
from farmstead.store.bulk import Candidate
from farmstead.store.rows import TaskRow

#: statuses in which an instance belongs to the worker that started it
OWNED = frozenset({"R", "T", "K"})


def check_reporter(ti_id: int, status: str, owner: str | None, reporter: str | None) -> None:
    """Forbidden if another worker identity than the one that started a running instance
    reports for it."""
    if reporter is not None and owner is not None and owner != reporter and status in OWNED:
        raise Forbidden(
            f"task instance {ti_id} is run by another worker; only it (or an operator) may "
            "report for it",
            task_instance_id=ti_id,
        )


@dataclass(frozen=True)
class Outcome:
    """What a request did: the instance's status now, and whether anything was written."""

    status: TIStatus
    applied: bool
    untimely: bool
    task: TaskRow
    retry_instance_id: int | None = None
    resources: dict[str, Any] | None = None  # the instance's own (scaled after retries)


async def transition(
    db: Database,
    ti_id: int,
    requested: TIStatus,
    *,
    fields: dict[str, Any] | None = None,
    report_increment: float | None = None,
    error: str | None = None,
    details: dict[str, Any] | None = None,
    reporter: str | None = None,
) -> Outcome:
    """Apply `requested` to instance `ti_id` in one transaction, or say why not.

    `reporter`: the worker identity of a worker-node report; once the instance runs, only
    the identity that started it may report for it (None: anyone, e.g. an operator)."""

    async def work(conn: Conn) -> Outcome:
        return await transition_in(
            conn,
            ti_id,
            requested,
            fields=fields,
            report_increment=report_increment,
            error=error,
            details=details,
            reporter=reporter,
        )

    return await in_transaction(db, work)


async def transition_in(
    conn: Conn,
    ti_id: int,
    requested: TIStatus,
    *,
    fields: dict[str, Any] | None = None,
    report_increment: float | None = None,
    error: str | None = None,
    details: dict[str, Any] | None = None,
    reporter: str | None = None,
) -> Outcome:
    """`transition` inside a transaction the caller opened.

    Locks the instance, then its task, then (for a retry) its array: the global lock order
    (store.locks), so it never deadlocks with another transition or a set-based move.
    """
    pair = await store.lock_pair(conn, ti_id)
    if pair is None:
        raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
    ti, task = pair
    check_reporter(ti_id, ti.status, ti.reporter, reporter)
    if reporter is not None and requested == TIStatus.RUNNING:
        fields = {**(fields or {}), "reporter": reporter}
    decision = decide_for(
        ti.status, task.status, requested, task.tries, task.max_attempts, task.cancelled
    )
    match decision:
        case Same(status):
            return Outcome(status, applied=False, untimely=False, task=task, resources=ti.resources)
        case Untimely(status):
            return Outcome(status, applied=False, untimely=True, task=task, resources=ti.resources)
        case Invalid(status, asked):
            raise InvalidTransition(
                f"task instance {ti_id} cannot go from {status.name} ({status.value}) "
                f"to {asked.name} ({asked.value})",
                task_instance_id=ti_id,
                status=status.value,
                requested=asked.value,
            )
    candidate = Candidate(
        ti.id,
        ti.status,
        task.id,
        task.status,
        task.tries,
        task.max_attempts,
        task.workflow_id,
        ti.array_id,
        ti.resources,
        task.resource_scales,
        task.retry_delay,
        task.cancelled,
        None,
    )
    result = await apply_bulk(
        conn,
        [candidate],
        requested,
        fields=fields,
        report_increment=report_increment,
        error=error,
        details=details,
    )
    return Outcome(
        decision.ti_to,
        applied=True,
        untimely=False,
        task=task,
        retry_instance_id=result.retried[0] if result.retried else None,
        resources=ti.resources,
    )
