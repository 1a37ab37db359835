"""What worker nodes and distributors ask of the server (the /v3/fsm routes)."""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from farmstead.db.engine import Database
from farmstead.db.types import db_now
from farmstead.fsm import TIStatus
from farmstead.services.bulk import BulkResult, apply_bulk
from farmstead.services.errors import BadRequest, NotFound
from farmstead.services.transitions import Outcome, transition, transition_in
from farmstead.services.uow import unit_of_work
from farmstead.store import bulk as bulk_store
from farmstead.store import instances as store
from farmstead.store import workflows as wf_store

_CHUNK = 5000


def present(**values: Any) -> dict[str, Any]:
    """Only the fields a client actually sent: an omitted field never overwrites a value."""
    return {k: v for k, v in values.items() if v is not None}


async def heartbeat(db: Database, ti_id: int, increment: float, fields: dict[str, Any]) -> TIStatus:
    """A worker's heartbeat. A TRIAGING instance is rescued to RUNNING; else no row lock."""
    async with unit_of_work(db) as session:
        if await store.heartbeat(session, ti_id, increment, fields):
            return TIStatus.RUNNING
        status = await store.status_of(session, ti_id)
        if status is None:
            raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
        if status != TIStatus.TRIAGING:
            return TIStatus(status)
        outcome = await transition_in(
            session,
            ti_id,
            TIStatus.RUNNING,
            fields=fields,
            report_increment=increment,
            details={"via": "heartbeat"},
        )
        return outcome.status


async def heartbeat_batch(db: Database, ids: Sequence[int], increment: float) -> int:
    """A distributor's heartbeat for many instances: one statement per chunk.

    Sorted first, so the chunks of the one transaction lock their rows in id order too.
    """
    ids = sorted(set(ids))
    updated = 0
    async with unit_of_work(db) as session:
        for start in range(0, len(ids), 50_000):
            updated += await store.heartbeat_batch(session, ids[start : start + 50_000], increment)
    return updated


async def worker_view(db: Database, ti_id: int) -> dict[str, Any]:
    """The task a worker runs for an instance (name, command, log dirs)."""
    async with unit_of_work(db, write=False) as session:
        view = await store.worker_view(session, ti_id)
    if view is None:
        raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
    return view


async def error_log(db: Database, ti_id: int) -> list[tuple[int, Any, str]]:
    """An instance's error log."""
    async with unit_of_work(db, write=False) as session:
        if await store.status_of(session, ti_id) is None:
            raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
        return await store.error_log(session, ti_id)


async def array_instance(db: Database, array_id: int, batch: int, step: int) -> int:
    """The instance that is a given array step."""
    async with unit_of_work(db, write=False) as session:
        ti_id = await store.array_instance_id(session, array_id, batch, step)
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
    async with unit_of_work(db) as session:
        fresh = await store.heartbeat_is_fresh(session, ti_id)
        if fresh is None:
            raise NotFound(f"task instance {ti_id} not found", task_instance_id=ti_id)
        if fresh:
            return None
        return await transition_in(
            session, ti_id, TIStatus.UNKNOWN_ERROR, fields=fields, error=message
        )


async def instantiate(db: Database, ids: Sequence[int]) -> list[list[Any]]:
    """QUEUED instances among `ids` → INSTANTIATED; answer Jobmon's batches of what moved."""
    ids = sorted(set(ids))  # chunks in id order (their locks skip, never wait, all the same)
    moved: list[int] = []
    async with unit_of_work(db) as session:
        for start in range(0, len(ids), _CHUNK):
            cands = await bulk_store.lock_candidates(
                session, bulk_store.available_queued(ids[start : start + _CHUNK], session)
            )
            moved += (await apply_bulk(session, cands, TIStatus.INSTANTIATED)).ids
        rows = await wf_store.batch_keys(session, moved)
    batches: dict[tuple[int, str, int], list[int]] = defaultdict(list)
    for ti_id, array_id, array_name, batch, _step in rows:
        batches[(array_id, array_name, batch)].append(ti_id)
    return [[a, name, b, None, sorted(tis)] for (a, name, b), tis in sorted(batches.items())]


async def _require_array(session: AsyncSession, array_id: int) -> None:
    if not await bulk_store.array_exists(session, array_id):
        raise NotFound(f"array {array_id} not found", array_id=array_id)


async def launch_batch(db: Database, array_id: int, batch: int, increment: float) -> BulkResult:
    """Every INSTANTIATED instance of an array batch → LAUNCHED, with a heartbeat deadline."""
    async with unit_of_work(db) as session:
        await _require_array(session, array_id)
        cands = await bulk_store.lock_candidates(
            session, bulk_store.of_batch(array_id, batch, ["I"])
        )
        return await apply_bulk(
            session,
            cands,
            TIStatus.LAUNCHED,
            report_increment=increment,
            fields={"submitted_date": db_now()},
        )


async def kill_batch(db: Database, array_id: int, batch: int) -> BulkResult:
    """Every KILL_SELF instance of an array batch → ERROR_FATAL (its jobs were terminated)."""
    async with unit_of_work(db) as session:
        await _require_array(session, array_id)
        cands = await bulk_store.lock_candidates(
            session, bulk_store.of_batch(array_id, batch, ["K"])
        )
        return await apply_bulk(
            session, cands, TIStatus.ERROR_FATAL, error="terminated by the distributor"
        )


async def set_distributor_ids(db: Database, array_id: int, mapping: dict[int, str]) -> int:
    """Record the distributor ids of many instances of an array (no status change)."""
    if not mapping:
        raise BadRequest("no task instance ids given")
    async with unit_of_work(db) as session:
        await _require_array(session, array_id)
        return await bulk_store.set_distributor_ids(session, array_id, mapping)


async def launched(db: Database, ti_id: int, distributor_id: str, increment: float) -> Outcome:
    """The distributor submitted the instance: → LAUNCHED with its job id and a deadline."""
    return await transition(
        db,
        ti_id,
        TIStatus.LAUNCHED,
        fields={"distributor_id": distributor_id, "submitted_date": db_now()},
        report_increment=increment,
    )
