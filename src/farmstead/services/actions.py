"""Operator actions on a workflow: cancel and resume. Both idempotent, both answer counts."""

from collections import Counter
from functools import partial
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm import TaskStatus, TIStatus, task_path
from farmstead.services.auth import SYSTEM, Principal, audit
from farmstead.services.bulk import BulkResult, apply_bulk
from farmstead.services.errors import NotFound
from farmstead.services.uow import in_transaction
from farmstead.store import actions as store
from farmstead.store import bulk as bulk_store
from farmstead.store import workflows as wf_store
from farmstead.store.rows import EventRow
from farmstead.store.sql import insert_events

CHUNK = 5000
T = TaskStatus


async def _require(db: Database, workflow_id: int) -> None:
    row = await in_transaction(db, lambda c: wf_store.workflow_row(c, workflow_id), write=False)
    if row is None:
        raise NotFound(f"workflow {workflow_id} not found", workflow_id=workflow_id)


async def cancel(db: Database, workflow_id: int, actor: Principal = SYSTEM) -> dict[str, Any]:
    """Queued and instantiated instances → ERROR_FATAL; launched and running → KILL_SELF."""
    await _require(db, workflow_id)
    audit("cancel", actor, workflow_id=workflow_id)
    # From now on no task of the workflow is retried, whatever races this cancel.
    await in_transaction(db, lambda c: wf_store.mark_cancelled(c, workflow_id))
    total = BulkResult()
    # Repeat until a whole pass moves nothing: a retry a racing report queued is caught too.
    while await _cancel_round(db, workflow_id, total, actor.name):
        pass
    return {"workflow_id": workflow_id, "changed": total.moved, "total": total.total}


async def _cancel_round(db: Database, workflow_id: int, total: BulkResult, by: str) -> int:
    """One pass over every cancellable instance; how many moved."""
    before = total.total
    for statuses, to in (
        (["Q", "I", "X"], TIStatus.ERROR_FATAL),
        (["O", "R", "T"], TIStatus.KILL_SELF),
    ):
        while True:
            chunk = partial(_cancel_chunk, workflow_id=workflow_id, statuses=statuses, to=to, by=by)
            found, moved = await in_transaction(db, chunk)
            total.add(moved)
            if found < CHUNK or not moved.total:
                break
    return total.total - before


async def _cancel_chunk(
    conn: Conn, workflow_id: int, statuses: list[str], to: TIStatus, by: str
) -> tuple[int, BulkResult]:
    # Wait for locked rows (up to the lock timeout) rather than skip them: an
    # instance in the middle of a transition must not escape the cancel. Waiting,
    # it locks in the global order: these instances by id, then their tasks by id.
    cands = await bulk_store.lock_candidates(
        conn,
        bulk_store.of_workflow(workflow_id, statuses),
        limit=CHUNK,
        skip_locked=False,
    )
    moved = await apply_bulk(
        conn,
        cands,
        to,
        error=f"cancelled by {by}",
        details={"by": by, "action": "cancel"},
    )
    if moved.total:
        await wf_store.record_event(
            conn, workflow_id, "R", {"action": "cancel", "moved": moved.moved, "by": by}
        )
    return len(cands), moved


async def resume(
    db: Database, workflow_id: int, everything: bool, actor: Principal = SYSTEM
) -> dict[str, Any]:
    """ERROR_FATAL tasks get fresh tries and a new QUEUED instance; DONE tasks stay DONE.

    With `everything`, unfinished tasks that still have a live instance get fresh tries too.
    """
    await _require(db, workflow_id)
    audit("resume", actor, workflow_id=workflow_id, all=everything)
    path = task_path(T.ERROR_FATAL, T.QUEUED)
    assert path is not None, "the task table must let an operator resume ERROR_FATAL"
    changed: Counter[str] = Counter()
    # retries are allowed again
    await in_transaction(db, lambda c: wf_store.clear_cancelled(c, workflow_id))

    async def resume_chunk(conn: Conn) -> int:
        tasks = await store.lock_failed_tasks(conn, workflow_id, CHUNK)
        if tasks:
            await store.requeue_tasks(conn, [t.id for t in tasks])
            ids = await store.queue_first_instances(conn, tasks)
            events = [
                EventRow(
                    workflow_id,
                    "task",
                    t.id,
                    prev.value,
                    nxt.value,
                    {"by": actor.name, "action": "resume"},
                )
                for t in tasks
                for prev, nxt in zip((T.ERROR_FATAL, *path[:-1]), path, strict=True)
            ]
            events += [
                EventRow(
                    workflow_id,
                    "task_instance",
                    i,
                    None,
                    "Q",
                    {"by": actor.name, "action": "resume"},
                )
                for i in ids
            ]
            await insert_events(conn, events)
        return len(tasks)

    while True:
        resumed = await in_transaction(db, resume_chunk)
        changed["resumed"] += resumed
        if resumed < CHUNK:
            break
    if everything:
        changed["refreshed"] += await in_transaction(
            db, lambda c: store.refresh_tries(c, workflow_id)
        )
    changed = +changed  # drop zero counts: a resume with nothing to do reports nothing
    if changed:
        details = {"action": "resume", "changed": dict(changed)}
        await in_transaction(db, lambda c: wf_store.record_event(c, workflow_id, "R", details))
    return {"workflow_id": workflow_id, "changed": dict(changed), "total": sum(changed.values())}
