"""What /metrics reads from the database at each scrape (a few grouped counts and a min)."""

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from farmstead.db.engine import Conn
from farmstead.db.types import db_now
from farmstead.store.sql import DEADLINE, EVENT, TASK_COUNT, TI


async def figures(conn: Conn) -> dict[str, Any]:
    """Instances and tasks by status, the reconciler's lag (seconds), the newest event id."""
    instances = await conn.execute(select(TI.c.status, func.count()).group_by(TI.c.status))
    tasks = await conn.execute(  # the running counters (migration 0011), not a scan of tasks
        select(TASK_COUNT.c.status, func.sum(TASK_COUNT.c.n))
        .where(TASK_COUNT.c.n > 0)
        .group_by(TASK_COUNT.c.status)
    )
    newest = (await conn.execute(select(func.coalesce(func.max(EVENT.c.id), 0)))).scalar_one()
    return {
        "instances": {str(s): int(n) for s, n in instances.all()},
        "tasks": {str(s): int(n) for s, n in tasks.all()},
        "lag": await lag(conn),
        "newest_event": int(newest),
    }


async def lag(conn: Conn) -> float:
    """The reconciler's lag: seconds since the oldest deadline that has passed (0: none)."""
    oldest, now = (
        await conn.execute(
            select(func.min(DEADLINE.c.report_by_date), db_now()).where(
                DEADLINE.c.report_by_date < db_now()
            )
        )
    ).one()
    return _seconds(now, oldest)


def _seconds(now: Any, oldest: Any) -> float:
    if oldest is None or now is None:
        return 0.0
    if isinstance(now, str):  # SQLite's clock comes back as text
        now = datetime.fromisoformat(now)
    if isinstance(oldest, str):
        oldest = datetime.fromisoformat(oldest)
    if now.tzinfo is None:
        now = now.replace(tzinfo=oldest.tzinfo)
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=now.tzinfo)
    return max(0.0, float((now - oldest).total_seconds()))
