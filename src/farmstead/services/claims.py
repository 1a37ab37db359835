"""Claims: a puller (the local executor, or any distributor) takes QUEUED instances to run."""

from typing import Any

from farmstead.db.engine import Database
from farmstead.fsm import TIStatus
from farmstead.services.bulk import apply_bulk
from farmstead.services.uow import unit_of_work
from farmstead.store import bulk as store
from farmstead.store import workflows as wf_store


async def claim(db: Database, limit: int, workflow_id: int | None) -> list[dict[str, Any]]:
    """Up to `limit` available QUEUED instances → INSTANTIATED, highest priority first."""
    async with unit_of_work(db) as session:
        where = store.available_queued(None, session)
        if workflow_id is not None:
            where = where & store.of_workflow(workflow_id, ["Q"])
        cands = await store.lock_candidates(session, where, limit=limit, by_priority=True)
        moved = await apply_bulk(session, cands, TIStatus.INSTANTIATED, details={"by": "claim"})
        rows = await wf_store.batch_keys(session, moved.ids)
    by_id = {c.ti_id: c for c in cands}
    return [
        {
            "task_instance_id": ti,
            "task_id": by_id[ti].task_id,
            "workflow_id": by_id[ti].workflow_id,
            "array_id": array_id,
            "array_batch_num": batch,
            "array_step_id": step,
        }
        for ti, array_id, _name, batch, step in sorted(rows)
    ]
