"""What the dashboard reads beyond the API's own reads: each an indexed read of a bounded size
(a page of tasks, the newest instance of each, the failed tasks grouped by error, an hour of a
workflow's finished-task events, a small graph), never a scan of a workflow's tasks."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select

from farmstead.db.engine import Conn
from farmstead.db.models import TaskEdge
from farmstead.store import events
from farmstead.store.events import EVENT_COLUMNS
from farmstead.store.sql import EVENT, TASK, TI, dialect, id_in
from farmstead.store.workflows import TASK_ROW

#: the chart reads no further back than this many events (of all workflows) before the newest
CHART_REACH = 200_000
#: the `farm_state` row holding the reconciler's last sweep (milliseconds since the epoch)
LAST_SWEEP = "reconciler_last_sweep_ms"


async def task_page(
    conn: Conn, workflow_id: int, statuses: Sequence[str] | None, after_id: int, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` of a workflow's tasks with ids above `after_id` (by id), each with its
    newest instance's host, runtime and status."""
    where = [TASK.c.workflow_id == workflow_id, TASK.c.id > after_id]
    if statuses:
        where.append(TASK.c.status.in_(list(statuses)))
    stmt = select(*TASK_ROW, TASK.c.status_date).where(*where).order_by(TASK.c.id).limit(limit)
    tasks = [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
    if not tasks:
        return tasks
    d = dialect(conn)
    newest = (
        select(func.max(TI.c.id))
        .where(id_in(TI.c.task_id, [t["id"] for t in tasks], d))
        .group_by(TI.c.task_id)
    )
    rows = await conn.execute(
        select(TI.c.task_id, TI.c.nodename, TI.c.wallclock, TI.c.status).where(TI.c.id.in_(newest))
    )
    latest = {int(r[0]): r for r in rows.all()}
    for t in tasks:
        found = latest.get(t["id"])
        t["host"] = found[1] if found else None
        t["runtime"] = found[2] if found else None
    return tasks


async def failure_groups(conn: Conn, workflow_id: int, limit: int) -> list[tuple[str, int]]:
    """The workflow's ERROR_FATAL tasks grouped by their last error, most common first."""
    n = func.count().label("n")
    stmt = (
        select(TASK.c.last_error, n)
        .where(TASK.c.workflow_id == workflow_id, TASK.c.status == "F")
        .group_by(TASK.c.last_error)
        .order_by(n.desc())
        .limit(limit)
    )
    return [(str(e or "(no message)"), int(c)) for e, c in (await conn.execute(stmt)).all()]


def _aware(value: datetime | str) -> datetime:
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def finished_per_minute(
    conn: Conn, workflow_id: int, minutes: int, now: datetime
) -> list[tuple[datetime, int, int]]:
    """(minute, done, failed) for each of the last `minutes` minutes, from the workflow's task
    events: DONE and ERROR_FATAL moves of its tasks, among the newest CHART_REACH events of the
    farm (one bounded index range: a farm writing more than that in the time gets a shorter
    chart, never a long read)."""
    start = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    newest = (await conn.execute(select(func.max(EVENT.c.id)))).scalar()
    buckets = {start + timedelta(minutes=i): [0, 0] for i in range(minutes)}
    if newest is not None:
        stmt = select(EVENT.c.time, EVENT.c.to_status).where(
            EVENT.c.workflow_id == workflow_id,
            EVENT.c.id > int(newest) - CHART_REACH,
            EVENT.c.time >= start,
            EVENT.c.entity == "task",
            EVENT.c.to_status.in_(["D", "F"]),
        )
        for when, to in (await conn.execute(stmt)).all():
            minute = _aware(when).replace(second=0, microsecond=0)
            if minute in buckets:
                buckets[minute][0 if to == "D" else 1] += 1
    return [(m, d, f) for m, (d, f) in sorted(buckets.items())]


async def task_events(
    conn: Conn, task_id: int, ti_ids: Sequence[int], limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` event rows of a task and its instances, oldest first."""
    d = dialect(conn)
    mine: ColumnElement[bool] = (EVENT.c.entity == "task") & (EVENT.c.entity_id == task_id)
    if ti_ids:
        mine = or_(mine, (EVENT.c.entity == "task_instance") & id_in(EVENT.c.entity_id, ti_ids, d))
    stmt = (
        select(*(EVENT.c[c] for c in EVENT_COLUMNS))
        .where(mine)
        .order_by(EVENT.c.id.desc())
        .limit(limit)
    )
    rows = [dict(r) for r in (await conn.execute(stmt)).mappings().all()]
    return rows[::-1]


async def small_graph(
    conn: Conn, workflow_id: int, max_tasks: int
) -> tuple[list[dict[str, Any]], list[tuple[int, int]]] | None:
    """A workflow's tasks and the edges between them (upstream, downstream), if it has edges
    and no more than `max_tasks` tasks; else None."""
    edge = TaskEdge.__table__
    tasks = (
        await conn.execute(
            select(TASK.c.id, TASK.c.name, TASK.c.status)
            .where(TASK.c.workflow_id == workflow_id)
            .order_by(TASK.c.id)
            .limit(max_tasks + 1)
        )
    ).all()
    if not tasks or len(tasks) > max_tasks:
        return None
    ids = [int(t[0]) for t in tasks]
    rows = await conn.execute(
        select(edge.c.upstream_id, edge.c.downstream_id).where(
            id_in(edge.c.downstream_id, ids, dialect(conn))
        )
    )
    edges = [(int(u), int(v)) for u, v in rows.all()]
    if not edges:
        return None
    return [{"id": int(i), "name": n, "status": s} for i, n, s in tasks], edges


async def last_sweep(conn: Conn) -> datetime | None:
    """When the reconciler (of any server process) last finished a sweep."""
    found = await events.state(conn, LAST_SWEEP)
    return None if found is None else datetime.fromtimestamp(found / 1000, UTC)


async def record_sweep(conn: Conn, when: datetime) -> None:
    """Note that a sweep ended at `when`."""
    await events.set_state(conn, LAST_SWEEP, int(when.timestamp() * 1000))
