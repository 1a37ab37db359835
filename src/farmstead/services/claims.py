"""Claims: a puller (the local executor, or any distributor) takes QUEUED instances to run."""

from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm import TIStatus
from farmstead.services.bulk import apply_bulk
from farmstead.services.uow import in_transaction
from farmstead.store import bulk as store
from farmstead.store import workflows as wf_store
from farmstead.store.bulk import Candidate


async def claim(db: Database, limit: int, workflow_id: int | None) -> list[dict[str, Any]]:
    """Up to `limit` available QUEUED instances → INSTANTIATED, highest priority first."""

    async def work(conn: Conn) -> tuple[list[Candidate], list[Any]]:
        cands = await store.claim_candidates(conn, workflow_id, limit)
        moved = await apply_bulk(conn, cands, TIStatus.INSTANTIATED, details={"by": "claim"})
        return cands, await wf_store.batch_keys(conn, moved.ids)

    cands, rows = await in_transaction(db, work)
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
