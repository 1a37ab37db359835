"""Claims: a puller (the local executor, or any distributor) takes QUEUED instances to run."""

from collections import defaultdict
from functools import cache
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm import Apply, Decision, TaskStatus, TIStatus
from farmstead.services.bulk import decide_for
from farmstead.services.uow import in_transaction
from farmstead.store import claims as store
from farmstead.store.claims import Claimable, ClaimMoves

_DETAILS = {"by": "claim"}
_ANSWER = ("task_instance_id", "task_id", "workflow_id", "array_id", "array_batch_num",
           "array_step_id")  # fmt: skip


def _claimable(move: Decision) -> Apply | None:
    """The move, if it moves the instance; a claim never errs nor retries (no error log, no
    new instance to queue), so any other kind of move is a bug."""
    if not isinstance(move, Apply):  # e.g. its task is settled: the instance stays QUEUED
        return None
    if move.retry or move.ti_to != TIStatus.INSTANTIATED:
        raise RuntimeError(f"a claim cannot apply {move}")
    return move


@cache
def claim_moves() -> ClaimMoves:
    """The decision function's answer for a QUEUED instance, by its task's status, as a table.

    Asking for INSTANTIATED, the answer depends on the two statuses only (tries count for
    error reports alone): checked here with no tries and with every try used.
    """
    moves = ClaimMoves([], [], [], [], [], [])
    for task in TaskStatus:
        move = _claimable(decide_for("Q", task.value, TIStatus.INSTANTIATED, 0, 3, False))
        if move != _claimable(decide_for("Q", task.value, TIStatus.INSTANTIATED, 3, 3, False)):
            raise RuntimeError(f"a claim's move from task status {task} depends on its tries")
        if move is None:
            continue
        moves.task_from.append(task.value)
        moves.task_to.append(move.task_to.value)
        prev = task
        for k, step in enumerate(move.task_path, 1):
            moves.step_of.append(task.value)
            moves.step_from.append(prev.value)
            moves.step_to.append(step.value)
            moves.step_k.append(k)
            prev = step
    return moves


async def claim(
    db: Database, limit: int, workflow_id: int | None, pull: bool = False
) -> list[dict[str, Any]]:
    """Up to `limit` available QUEUED instances → INSTANTIATED, highest priority first.

    `pull`: claim a pull-based run's instances (taskfarm's face, with its `workflow_id`);
    farmstead's own executors never do."""
    if not db.is_sqlite:  # one statement, atomic on its own: no BEGIN, no COMMIT

        async def one(conn: Conn) -> list[dict[str, Any]]:
            return await claim_in(conn, False, limit, workflow_id, pull)

        return await in_transaction(db, one, single=True)

    return await in_transaction(db, lambda c: claim_in(c, True, limit, workflow_id, pull))


async def claim_in(
    conn: Conn, sqlite: bool, limit: int, workflow_id: int | None, pull: bool = False
) -> list[dict[str, Any]]:
    """`claim` on a connection (in a transaction the caller opened, or none on PostgreSQL):
    the moved instances, by id."""
    if not sqlite:
        rows = await store.claim_pg(conn, claim_moves(), workflow_id, limit, _DETAILS, pull)
        return [dict(zip(_ANSWER, r, strict=True)) for r in rows]  # by instance id
    groups: dict[Apply, list[Claimable]] = defaultdict(list)
    for c in await store.candidates(conn, workflow_id, limit, pull):
        asked = (c.ti_status, c.task_status, TIStatus.INSTANTIATED)
        move = _claimable(decide_for(*asked, c.tries, c.max_attempts, c.cancelled))
        if move is not None:
            groups[move].append(c)
    for move, members in groups.items():
        await store.apply_claim(conn, move, members, _DETAILS)
    moved = sorted(c for members in groups.values() for c in members)  # by instance id
    return [
        dict(zip(_ANSWER, (c.ti_id, c.task_id, c.workflow_id, *c[-3:]), strict=True)) for c in moved
    ]
