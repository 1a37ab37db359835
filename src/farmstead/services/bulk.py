"""Set-based transitions: many instances moved by the same decision function, few statements."""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from farmstead.db.engine import Conn
from farmstead.db.types import db_now, seconds_from_now
from farmstead.fsm import Apply, Decision, TaskStatus, TIStatus, decide, retry_resources
from farmstead.services import graph
from farmstead.store import bulk as store
from farmstead.store import deadlines
from farmstead.store.bulk import Candidate
from farmstead.store.rows import EventRow
from farmstead.store.sql import DEADLINE_STATUSES, insert_events

ERROR_LOGGED = frozenset({"E", "U", "Z", "W", "F"})


def tries_allowed(tries: int, max_attempts: int, cancelled: bool) -> int:
    """Tries allowed: none beyond those made once the workflow is cancelled."""
    return min(tries, max_attempts) if cancelled else max_attempts


@lru_cache(maxsize=4096)
def decide_for(
    ti: str, task: str, requested: TIStatus, tries: int, max_attempts: int, cancelled: bool
) -> Decision:
    """The decision function for an instance and its task as stored (statuses as letters)."""
    allowed = tries_allowed(tries, max_attempts, cancelled)
    return decide(TIStatus(ti), TaskStatus(task), requested, tries, allowed)


@dataclass
class BulkResult:
    """What a set-based move did."""

    moved: dict[str, int] = field(default_factory=dict)  # to-status -> count
    ids: list[int] = field(default_factory=list)  # instances moved
    skipped: int = 0  # same status, untimely or invalid: nothing written
    retried: list[int] = field(default_factory=list)  # new QUEUED instances

    def add(self, other: "BulkResult") -> None:
        """Fold another result into this one."""
        for key, n in other.moved.items():
            self.moved[key] = self.moved.get(key, 0) + n
        self.ids += other.ids
        self.skipped += other.skipped
        self.retried += other.retried

    @property
    def total(self) -> int:
        """How many instances moved."""
        return sum(self.moved.values())


async def apply_bulk(
    conn: Conn,
    candidates: Sequence[Candidate],
    requested: TIStatus,
    *,
    fields: dict[str, Any] | None = None,
    report_increment: float | None = None,
    error: str | None = None,
    errors: dict[int, str] | None = None,
    details: dict[str, Any] | None = None,
) -> BulkResult:
    """Apply `requested` to every locked candidate the decision function allows.

    `error` describes the move for every instance; `errors` per instance id. An error-log row
    is written only for instances that actually move to an error status.
    """
    result = BulkResult()
    groups: dict[Apply, list[Candidate]] = defaultdict(list)
    for c in candidates:
        d = decide_for(c.ti_status, c.task_status, requested, c.tries, c.max_attempts, c.cancelled)
        if isinstance(d, Apply):
            groups[d].append(c)
        else:
            result.skipped += 1
    events: list[EventRow] = []
    retries: list[tuple[Candidate, bool]] = []  # (member, adjust its resources)
    finished: dict[TaskStatus, list[tuple[int, int]]] = defaultdict(list)  # DONE, ERROR_FATAL
    info = dict(details or {})
    changes = {move: _deadline_change(move, report_increment) for move in groups}
    held = [c.ti_id for m, ms in groups.items() if changes[m] in ("leave", "renew") for c in ms]
    if len(held) > 1:  # wait for their deadline rows once, in id order (store.deadlines)
        await deadlines.lock(conn, held)
    for move, members in groups.items():
        ids = [c.ti_id for c in members]
        values = dict(fields or {})
        change = changes[move]
        if change is None:
            await store.set_instances(conn, ids, move.ti_to.value, values)
        else:  # its deadline row comes, goes or moves on, in the same statement if it can
            values |= {"status": move.ti_to.value, "status_date": db_now()}
            await deadlines.move(conn, ids, values, change, report_increment)
        note = {**info, "requested": requested.value} if requested != move.ti_to else info
        why = {c.ti_id: (errors or {}).get(c.ti_id) or error for c in members}
        for c in members:
            text = why[c.ti_id]
            events.append(
                EventRow(
                    c.workflow_id,
                    "task_instance",
                    c.ti_id,
                    move.ti_from.value,
                    move.ti_to.value,
                    ({**note, "error": text[:2000]} if text else note) or None,
                )
            )
        if move.ti_to.value in ERROR_LOGGED:
            await store.add_error_logs(conn, {i: t for i, t in why.items() if t})
        if move.task_path:
            await _move_tasks(conn, move, members, why, events, info)
            if move.task_to in (TaskStatus.DONE, TaskStatus.ERROR_FATAL):
                finished[move.task_to] += [(c.task_id, c.workflow_id) for c in members]
        if move.retry:
            retries += [(c, move.adjust) for c in members]
        result.moved[move.ti_to.value] = result.moved.get(move.ti_to.value, 0) + len(ids)
        result.ids += ids
    if retries:  # after every group: the array rows are locked last, in id order
        result.retried += await _queue_retries(conn, retries, events)
    if finished:  # downstream tasks: released, or blocked
        await graph.after_moves(
            conn, finished[TaskStatus.DONE], finished[TaskStatus.ERROR_FATAL], events
        )
    await insert_events(conn, events)
    return result


def _deadline_change(move: Apply, increment: float | None) -> deadlines.Change | None:
    """What a move does to its instances' deadline rows (store.deadlines), if anything."""
    into = move.ti_to.value in DEADLINE_STATUSES
    was = move.ti_from.value in DEADLINE_STATUSES
    if into and not was:
        return "enter_bare" if increment is None else "enter"
    if was and not into:
        return "leave"
    return "renew" if into and increment is not None else None


async def _move_tasks(
    conn: Conn,
    move: Apply,
    members: Sequence[Candidate],
    why: dict[int, str | None],
    events: list[EventRow],
    note: dict[str, Any],
) -> None:
    values: dict[str, Any] = {}
    if TaskStatus.RUNNING in move.task_path:  # a new start: it has not finished (PyFarm)
        values["time_started"] = db_now()
        values["time_finished"] = None
    if move.task_to in (TaskStatus.DONE, TaskStatus.ERROR_FATAL):
        values["time_finished"] = db_now()
    if move.task_to == TaskStatus.DONE:
        values["progress"] = 100.0
        values["last_error"] = None  # done: the errors of earlier tries are history
    errors = {c.task_id: text[:10_000] for c in members if (text := why.get(c.ti_id))}
    texts = set(errors.values())
    if len(texts) == 1 and len(errors) == len(members):  # one text for all: a plain value
        values["last_error"] = texts.pop()
    elif errors:
        values["last_error"] = store.per_task(errors)
    await store.set_tasks(
        conn, [c.task_id for c in members], move.task_to.value, values, bump_attempts=move.retry
    )
    for c in members:
        # the instance move behind it: which instance, from where, and its error (a stream
        # tells a failure from a revoke by it, and names the exception)
        cause = {**note, "task_instance_id": c.ti_id, "via": move.ti_from.value}
        if text := why.get(c.ti_id):
            cause["error"] = text[:2000]
        prev = move.task_from
        for step in move.task_path:
            events.append(EventRow(c.workflow_id, "task", c.task_id, prev.value, step.value, cause))
            prev = step


async def _queue_retries(
    conn: Conn, members: Sequence[tuple[Candidate, bool]], events: list[EventRow]
) -> list[int]:
    """A new QUEUED instance for each member's task, each array's retries in new batches.

    Each array's row is locked to reserve its batch numbers: arrays in id order, after the
    instances and tasks (the global lock order, store.locks).
    """
    new_ids: list[int] = []
    by_array: dict[int, list[tuple[Candidate, bool]]] = defaultdict(list)
    for c, adjust in members:
        by_array[c.array_id].append((c, adjust))
    for array_id, cands in sorted(by_array.items()):
        first = await store.next_batches(conn, array_id, len(cands))
        by_delay: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for offset, (c, adjust) in enumerate(cands):
            res = retry_resources(c.resources, c.resource_scales) if adjust else c.resources
            by_delay[c.retry_delay].append(
                {
                    "task_id": c.task_id,
                    "workflow_id": c.workflow_id,
                    "array_id": array_id,
                    "array_batch_num": first + offset,
                    "array_step_id": 0,
                    "resources": res,
                    "retry_of": c.ti_id,
                }
            )
        for delay, rows in by_delay.items():
            if delay > 0:
                for row in rows:
                    row["available_date"] = None
                ids = await store.insert_queued(conn, rows)
                await store.hold_until(conn, ids, seconds_from_now(delay))
            else:
                ids = await store.insert_queued(conn, rows)
            new_ids += ids
            events += [
                EventRow(
                    r["workflow_id"], "task_instance", i, None, "Q", {"retry_of_task": r["task_id"]}
                )
                for r, i in zip(rows, ids, strict=True)
            ]
    return new_ids
