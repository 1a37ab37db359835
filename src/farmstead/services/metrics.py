"""/metrics: this process's (or all processes') counts and the database's figures."""

from farmstead import metrics
from farmstead.db.engine import Database
from farmstead.services.uow import in_transaction
from farmstead.store import metrics as store


async def exposition(db: Database) -> bytes:
    """The Prometheus text exposition."""
    f = await in_transaction(db, store.figures, write=False)
    families = metrics.database_families(f["instances"], f["tasks"], f["lag"], f["newest_event"])
    return metrics.render(families)
