"""What worker nodes and distributors ask of the server (the /v3/fsm routes)."""

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.db.types import db_now
from farmstead.fsm import TIStatus
from farmstead.services.bulk import BulkResult, apply_bulk
from farmstead.services.errors import BadRequest, NotFound, Unavailable
from farmstead.services.transitions import Outcome, check_reporter, transition, transition_in
from farmstead.services.uow import in_transaction
from farmstead.store import bulk as bulk_store
from farmstead.store import instances as store
from farmstead.store import locks
from farmstead.store import workflows as wf_store

_CHUNK = 5000
_BRIEF_WAIT = 0.05  # seconds a batch heartbeat waits for a lock before it takes the long way


def present(**values: Any) -> dict[str, Any]:
    """Only the fields a client actually sent: an omitted field never overwrites a value."""
    return {k: v for k, v in values.items() if v is not None}


async def heartbeat(
    db: Database,
    ti_id: int,
    increment: float,
    fields: dict[str, Any],
    reporter: str | None = None,
) -> TIStatus:
    """A worker's heartbeat: one guarded UPDATE, on its own (no transaction around it, no
    other lock). When it finds the instance not RUNNING: its status, and a TRIAGING instance
    is rescued to RUNNING by a transition. Another worker's heartbeat (`reporter`) for a
    running instance is Forbidden."""
    single = not (db.is_sqlite and store.heartbeat_has_fields(fields))
    beat = await in_transaction(
        db, lambda c: store.heartbeat(c, ti_id, increment, fields, reporter), single=single
    )
    if beat:
        return TIStatus.RUNNING

    async def work(conn: Conn) -> TIStatus:
        if await store.heartbeat(conn, ti_id, increment, fields, reporter):  # rescued meanwhile
            return TIStatus.RUNNING
        found = await store.owner_of(conn, ti_id)
        if found is None:
            raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
        status, owner = found
        check_reporter(ti_id, status, owner, reporter)
        if status != TIStatus.TRIAGING:
            return TIStatus(status)
        outcome = await transition_in(
            conn,
            ti_id,
            TIStatus.RUNNING,
            fields=fields,
            report_increment=increment,
            details={"via": "heartbeat"},
            reporter=reporter,
        )
        return outcome.status

    return await in_transaction(db, work)


async def heartbeat_batch(db: Database, ids: Sequence[int], increment: float) -> int:
    """A distributor's heartbeat for many instances: one statement per chunk.

    First without locking the deadline rows in id order beforehand (a pass over them all
    that costs about a fifth of the heartbeat), but giving up on any lock wait after
    `_BRIEF_WAIT`: a wait means another transaction holds one of the rows (a move, a sweep,
    another heartbeat). Then again, in a new transaction, taking the rows in id order and
    waiting as long as any writer does. Sorted, so the chunks lock in id order too.
    """
    ids = sorted(set(ids))

    def work(ordered: bool) -> Callable[[Conn], Awaitable[int]]:
        async def run(conn: Conn) -> int:
            if not ordered:
                await locks.wait_briefly(conn, _BRIEF_WAIT)
            updated = 0
            for start in range(0, len(ids), 50_000):
                chunk = ids[start : start + 50_000]
                updated += await store.heartbeat_batch(conn, chunk, increment, ordered)
            return updated

        return run

    try:
        return await in_transaction(db, work(ordered=db.is_sqlite))
    except Unavailable:
        if db.is_sqlite:
            raise
        return await in_transaction(db, work(ordered=True))


async def worker_view(db: Database, ti_id: int) -> dict[str, Any]:
    """The task a worker runs for an instance (name, command, log dirs)."""
    view = await in_transaction(db, lambda c: store.worker_view(c, ti_id), write=False)
    if view is None:
        raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
    return view


async def error_log(db: Database, ti_id: int) -> list[tuple[int, Any, str]]:
    """An instance's error log."""

    async def work(conn: Conn) -> list[tuple[int, Any, str]]:
        if await store.status_of(conn, ti_id) is None:
            raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
        return await store.error_log(conn, ti_id)

    return await in_transaction(db, work, write=False)


async def array_instance(db: Database, array_id: int, batch: int, step: int) -> int:
    """The instance that is a given array step."""
    ti_id = await in_transaction(
        db, lambda c: store.array_instance_id(c, array_id, batch, step), write=False, single=True
    )
    if ti_id is None:
        raise NotFound(
            f"no task instance for array {array_id}, batch {batch}, step {step}",
            array_id=array_id,
            batch_num=batch,
            step_id=step,
        )
    return ti_id


async def log_unknown_error(
    db: Database, ti_id: int, message: str, fields: dict[str, Any]
) -> Outcome | None:
    """UNKNOWN_ERROR, but only if the instance's heartbeat deadline has passed (else None)."""

    async def work(conn: Conn) -> Outcome | None:
        fresh = await store.heartbeat_is_fresh(conn, ti_id)
        if fresh is None:
            raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
        if fresh:
            return None
        return await transition_in(
            conn, ti_id, TIStatus.UNKNOWN_ERROR, fields=fields, error=message
        )

    return await in_transaction(db, work)


async def instantiate(db: Database, ids: Sequence[int]) -> list[list[Any]]:
    """QUEUED instances among `ids` → INSTANTIATED; answer Jobmon's batches of what moved."""
    ids = sorted(set(ids))  # chunks in id order (their locks skip, never wait, all the same)

    async def work(conn: Conn) -> list[Any]:
        moved: list[int] = []
        for start in range(0, len(ids), _CHUNK):
            cands = await bulk_store.lock_candidates(
                conn, bulk_store.available_queued(ids[start : start + _CHUNK], conn)
            )
            moved += (await apply_bulk(conn, cands, TIStatus.INSTANTIATED)).ids
        return await wf_store.batch_keys(conn, moved)

    rows = await in_transaction(db, work)
    batches: dict[tuple[int, str, int], list[int]] = defaultdict(list)
    for ti_id, array_id, array_name, batch, _step in rows:
        batches[(array_id, array_name, batch)].append(ti_id)
    return [[a, name, b, None, sorted(tis)] for (a, name, b), tis in sorted(batches.items())]


async def _require_array(conn: Conn, array_id: int) -> None:
    if not await bulk_store.array_exists(conn, array_id):
        raise NotFound(f"array {array_id} not found", array_id=array_id)


async def launch_batch(db: Database, array_id: int, batch: int, increment: float) -> BulkResult:
    """Every INSTANTIATED instance of an array batch → LAUNCHED, with a heartbeat deadline."""

    async def work(conn: Conn) -> BulkResult:
        await _require_array(conn, array_id)
        cands = await bulk_store.lock_candidates(conn, bulk_store.of_batch(array_id, batch, ["I"]))
        return await apply_bulk(
            conn,
            cands,
            TIStatus.LAUNCHED,
            report_increment=increment,
            fields={"submitted_date": db_now()},
        )

    return await in_transaction(db, work)


async def kill_batch(db: Database, array_id: int, batch: int) -> BulkResult:
    """Every KILL_SELF instance of an array batch → ERROR_FATAL (its jobs were terminated)."""

    async def work(conn: Conn) -> BulkResult:
        await _require_array(conn, array_id)
        cands = await bulk_store.lock_candidates(conn, bulk_store.of_batch(array_id, batch, ["K"]))
        return await apply_bulk(
            conn, cands, TIStatus.ERROR_FATAL, error="terminated by the distributor"
        )

    return await in_transaction(db, work)


async def set_distributor_ids(db: Database, array_id: int, mapping: dict[int, str]) -> int:
    """Record the distributor ids of many instances of an array (no status change)."""
    if not mapping:
        raise BadRequest("no task instance ids given")

    async def work(conn: Conn) -> int:
        await _require_array(conn, array_id)
        return await bulk_store.set_distributor_ids(conn, array_id, mapping)

    return await in_transaction(db, work)


async def launched(db: Database, ti_id: int, distributor_id: str, increment: float) -> Outcome:
    """The distributor submitted the instance: → LAUNCHED with its job id and a deadline."""
    return await transition(
        db,
        ti_id,
        TIStatus.LAUNCHED,
        fields={"distributor_id": distributor_id, "submitted_date": db_now()},
        report_increment=increment,
    )
