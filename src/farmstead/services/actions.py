"""Operator actions on a workflow: cancel and resume. Both idempotent, both answer counts."""

from collections import Counter
from functools import partial
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm import TaskStatus, TIStatus, task_path
from farmstead.services import graph
from farmstead.services.auth import SYSTEM, Principal, audit
from farmstead.services.bulk import BulkResult, apply_bulk
from farmstead.services.errors import NotFound
from farmstead.services.uow import in_transaction
from farmstead.store import actions as store
from farmstead.store import bulk as bulk_store
from farmstead.store import graph as graph_store
from farmstead.store import workflows as wf_store
from farmstead.store.rows import EventRow
from farmstead.store.sql import TASK, insert_events

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
    # tasks waiting on upstream tasks have no instance: they end at once (and what waits on
    # them in other workflows is blocked)
    while held := await in_transaction(
        db, partial(_cancel_held, workflow_id=workflow_id, by=actor.name)
    ):
        total.moved["held_cancelled"] = total.moved.get("held_cancelled", 0) + held
        if held < CHUNK:
            break
    # Repeat until a whole pass moves nothing: a retry a racing report queued is caught too.
    while await _cancel_round(db, workflow_id, total, actor.name):
        pass
    return {"workflow_id": workflow_id, "changed": total.moved, "total": total.total}


async def _cancel_held(conn: Conn, workflow_id: int, by: str) -> int:
    ids = await graph_store.cancel_held(conn, workflow_id, CHUNK, by)
    if not ids:
        return 0
    events = [
        EventRow(workflow_id, "task", t, "H", "F", {"by": by, "action": "cancel"}) for t in ids
    ]
    events += graph.blocked_events(await graph_store.spread(conn, ids, "H", "B"))
    await insert_events(conn, events)
    return len(ids)


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
    conn: Conn,
    workflow_id: int,
    statuses: list[str],
    to: TIStatus,
    by: str,
    action: str = "cancel",
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
        error=f"{action}: by {by}" if action != "cancel" else f"cancelled by {by}",
        details={"by": by, "action": action},
    )
    if moved.total:
        await wf_store.record_event(
            conn, workflow_id, "R", {"action": action, "moved": moved.moved, "by": by}
        )
    return len(cands), moved


async def stop_live(db: Database, workflow_id: int, actor: Principal, action: str) -> int:
    """Every live instance of a workflow but the QUEUED → ERROR_FATAL at once (an operator's
    reset: taskfarm's restart of a whole run); how many moved. Chunks wait for locks in the
    global order, as a cancel's do."""
    live = ["I", "O", "R", "T", "X", "K"]
    total = BulkResult()
    while True:
        chunk = partial(
            _cancel_chunk,
            workflow_id=workflow_id,
            statuses=live,
            to=TIStatus.ERROR_FATAL,
            by=actor.name,
            action=action,
        )
        found, moved = await in_transaction(db, chunk)
        total.add(moved)
        if found < CHUNK or not moved.total:
            return total.total


async def expire(db: Database, where: Any, actor: Principal) -> int:
    """Instances matching `where` (a sweep of ones past their deadline) → ERROR now, as the
    reconciler would soon (a new try is queued while tries are left); how many moved."""
    moved = 0

    async def chunk(conn: Conn) -> int:
        cands = await bulk_store.lock_candidates(conn, where, limit=CHUNK)
        result = await apply_bulk(
            conn,
            cands,
            TIStatus.ERROR,
            error=f"no update by its deadline; restarted by {actor.name}",
            details={"by": actor.name, "action": "restart"},
        )
        return result.total

    while n := await in_transaction(db, chunk):
        moved += n
        if n < CHUNK:
            break
    return moved


async def resume(
    db: Database,
    workflow_id: int,
    everything: bool,
    actor: Principal = SYSTEM,
    finished: bool = False,
) -> dict[str, Any]:
    """ERROR_FATAL tasks get fresh tries and a new QUEUED instance; DONE tasks stay DONE.

    With `everything`, unfinished tasks that still have a live instance get fresh tries too.
    With `finished`, DONE tasks are queued again as well (taskfarm's restart of everything).
    """
    await _require(db, workflow_id)
    audit("resume", actor, workflow_id=workflow_id, all=everything, finished=finished)
    statuses = (T.ERROR_FATAL, T.DONE) if finished else (T.ERROR_FATAL,)
    paths = {s.value: task_path(s, T.QUEUED) for s in statuses}
    assert None not in paths.values(), "the task table must let an operator resume these"
    changed: Counter[str] = Counter()
    # retries are allowed again
    await in_transaction(db, lambda c: wf_store.clear_cancelled(c, workflow_id))

    async def resume_chunk(conn: Conn) -> tuple[int, int]:
        """Resume a chunk of tasks; how many, and how many BLOCKED tasks downstream of them
        (in any workflow) were re-opened."""
        tasks = await store.lock_failed_tasks(conn, workflow_id, CHUNK, [*paths, "B"])
        if not tasks:
            return 0, 0
        waits = await graph_store.with_upstream(conn, workflow_id, [t.id for t in tasks])
        blocked = [t for t in tasks if t.status == "B"]
        to_hold = [t for t in tasks if t.status != "B" and t.id in waits]
        to_queue = [t for t in tasks if t.status != "B" and t.id not in waits]
        note = {"by": actor.name, "action": "resume"}
        events: list[EventRow] = []
        if to_queue:
            await store.requeue_tasks(conn, [t.id for t in to_queue])
            ids = await store.queue_first_instances(conn, to_queue)
            events += [
                EventRow(workflow_id, "task", t.id, prev.value, nxt.value, note)
                for t in to_queue
                for prev, nxt in _steps(T(t.status), paths[t.status] or ())
            ]
            events += [EventRow(workflow_id, "task_instance", i, None, "Q", note) for i in ids]
        if to_hold:  # fresh tries, but they wait on their upstream again
            await store.requeue_tasks(conn, [t.id for t in to_hold], held=True)
            events += [
                EventRow(workflow_id, "task", t.id, prev.value, nxt.value, note)
                for t in to_hold
                for prev, nxt in _steps(T(t.status), (T.REGISTERING, T.HELD))
            ]
        if blocked:
            await store.reopen_tasks(conn, [t.id for t in blocked])
            events += [EventRow(workflow_id, "task", t.id, "B", "H", note) for t in blocked]
        # what waits on these anywhere (other workflows too) waits again instead of blocked
        reopened = await graph_store.spread(conn, [t.id for t in tasks], "B", "H")
        events += graph.reopened_events(reopened, actor.name)
        candidates = [t.id for t in (*to_hold, *blocked)] + [t for t, _w, _r in reopened]
        if to_hold:  # held again, but what they wait on elsewhere may have failed meanwhile
            again = await graph_store.block_failed(conn, TASK.c.id.in_([t.id for t in to_hold]))
            events += graph.blocked_events(again)
        if candidates:
            released = await graph_store.release(
                conn, TASK.c.id.in_(sorted(candidates)), graph.RELEASE_BATCH
            )
            events += graph_store.release_events(released)
        await insert_events(conn, events)
        return len(tasks), len(reopened)

    while True:
        resumed, reopened = await in_transaction(db, resume_chunk)
        changed["resumed"] += resumed
        changed["reopened"] += reopened
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


def _steps(start: TaskStatus, path: tuple[TaskStatus, ...]) -> list[tuple[TaskStatus, TaskStatus]]:
    """The (from, to) pairs of a task's walk along `path` from `start`."""
    return list(zip((start, *path[:-1]), path, strict=True))
