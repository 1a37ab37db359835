"""Reading the event table as a stream: pages in id order, what they refer to, where the stream
can safely stand, and retention.

Where it can stand: an event row's id is drawn when it is inserted, but rows become visible when
their transactions commit, which on PostgreSQL need not be in id order. A reader that moved past
a gap could skip a row that commits a moment later. So a reader stops at a gap until it is
settled: filled, or known to be empty for good (a rolled-back transaction's id). On PostgreSQL a
gap seen while transactions X1..Xn were in flight is settled once all of them have ended: the
oldest running transaction id (`xmin` of a new snapshot) has passed the next id to be assigned
when the gap was seen (every writer of an event row already holds its transaction id: its
transaction moved rows before it writes their events). On SQLite one writer at a time commits
in id order: there are no such gaps.
"""

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import BigInteger, Integer, Table, bindparam, delete, func, select, text, update

from farmstead.db.engine import Conn
from farmstead.db.models import FarmState
from farmstead.db.prepared import prepare
from farmstead.db.types import seconds_from_now
from farmstead.store.sql import EVENT, TASK, TI, dialect, id_in

FARM_STATE = cast(Table, FarmState.__table__)
PRUNED = "events_pruned_through"
EVENT_COLUMNS = (
    "id",
    "workflow_id",
    "entity",
    "entity_id",
    "from_status",
    "to_status",
    "time",
    "details",
)


def _page() -> Any:
    return (
        select(*(EVENT.c[c] for c in EVENT_COLUMNS))
        .where(EVENT.c.id > bindparam("after", type_=BigInteger()))
        .order_by(EVENT.c.id)
        .limit(bindparam("limit", type_=Integer()))
    )


def _page_of_workflow() -> Any:
    return _page().where(EVENT.c.workflow_id == bindparam("workflow_id", type_=BigInteger()))


async def page(
    conn: Conn, after: int, limit: int, workflow_id: int | None = None
) -> list[dict[str, Any]]:
    """Event rows with ids above `after`, in id order (of one workflow, if given)."""
    d = dialect(conn)
    if workflow_id is None:
        rows = await conn.run(prepare(d, "events_page", _page), {"after": after, "limit": limit})
    else:
        params = {"after": after, "limit": limit, "workflow_id": workflow_id}
        rows = await conn.run(prepare(d, "events_page_wf", _page_of_workflow), params)
    return [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows.rows]


async def newest_id(conn: Conn) -> int:
    """The highest event id there is (0: none). On PostgreSQL it first waits for every
    transaction writing events to commit (a brief SHARE lock of the table), so that no row
    below the answer can still appear: a safe place for a stream to start."""
    if dialect(conn) == "postgresql":
        await conn.execute(text("LOCK TABLE event IN SHARE MODE"))
    return int((await conn.execute(select(func.coalesce(func.max(EVENT.c.id), 0)))).scalar_one())


async def snapshot(conn: Conn) -> tuple[int, int] | None:
    """PostgreSQL: (xmin, xmax) of a new snapshot: the oldest transaction still running and the
    next transaction id to be assigned. None on SQLite (no gaps to settle)."""
    if dialect(conn) != "postgresql":
        return None
    row = (
        await conn.execute(
            text(
                "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
                "FROM pg_current_snapshot() AS s"
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def context(
    conn: Conn, task_ids: Sequence[int], ti_ids: Sequence[int]
) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
    """What events refer to: task names by task id; for instances, their task, host, pid,
    wallclock and how many tries of their task came before them (Celery's `retries`)."""
    d = dialect(conn)
    instances: dict[int, dict[str, Any]] = {}
    if ti_ids:
        earlier = TI.alias("earlier")
        before = (
            select(func.count())
            .where(earlier.c.task_id == TI.c.task_id, earlier.c.id < TI.c.id)
            .scalar_subquery()
        )
        rows = await conn.execute(
            select(
                TI.c.id,
                TI.c.task_id,
                TI.c.nodename,
                TI.c.process_group_id,
                TI.c.wallclock,
                before,
            ).where(id_in(TI.c.id, sorted(set(ti_ids)), d))
        )
        for i, task_id, node, pgid, wallclock, retries in rows.all():
            instances[int(i)] = {
                "task_id": int(task_id),
                "hostname": node,
                "pid": pgid,
                "wallclock": wallclock,
                "retries": int(retries),
            }
    wanted = sorted({*task_ids, *(i["task_id"] for i in instances.values())})
    names: dict[int, str] = {}
    if wanted:
        rows = await conn.execute(select(TASK.c.id, TASK.c.name).where(id_in(TASK.c.id, wanted, d)))
        names = {int(i): str(n) for i, n in rows.all()}
    return names, instances


async def pruned_through(conn: Conn) -> int:
    """The highest event id retention has removed (0: none)."""
    return await state(conn, PRUNED) or 0


async def prune(conn: Conn, older_than: float, chunk: int) -> int:
    """Remove the oldest events, up to `chunk`, while they are older than `older_than` seconds
    (a bounded read from the oldest id on: times follow ids), never the newest event of all (on
    SQLite ids continue from the highest row left); record how far retention has gone. How
    many were removed."""
    old = EVENT.c.time < seconds_from_now(-older_than)
    oldest = (
        await conn.execute(select(EVENT.c.id, old).order_by(EVENT.c.id).limit(chunk + 1))
    ).all()
    ids = []
    # the newest event of all stays: if all were read, the last one is it
    for i, is_old in oldest[:chunk] if len(oldest) > chunk else oldest[:-1]:
        if not is_old:
            break
        ids.append(int(i))
    if not ids:
        return 0
    await conn.execute(delete(EVENT).where(id_in(EVENT.c.id, ids, dialect(conn))))
    through = max(ids)
    changed = await conn.execute(
        update(FARM_STATE)
        .where(FARM_STATE.c.name == PRUNED, FARM_STATE.c.value < through)
        .values(value=through)
    )
    if not changed.rowcount and await pruned_through(conn) < through:  # type: ignore[attr-defined]
        await conn.execute(FARM_STATE.insert().values(name=PRUNED, value=through))
    return len(ids)


RELAYED = "celery_published_through"


async def relay_cursor(conn: Conn, lock: bool) -> int | None:
    """The Celery relay's position (the last event id it published; -1 before its first
    start); with `lock` (PostgreSQL), None when another process's relay holds it now."""
    if lock:
        await conn.execute(
            text("INSERT INTO farm_state (name, value) VALUES (:name, -1) ON CONFLICT DO NOTHING"),
            {"name": RELAYED},
        )
        row = (
            await conn.execute(
                select(FARM_STATE.c.value)
                .where(FARM_STATE.c.name == RELAYED)
                .with_for_update(skip_locked=True)
            )
        ).first()
        return None if row is None else int(row[0])
    found = await state(conn, RELAYED)
    return -1 if found is None else found


async def set_relay_cursor(conn: Conn, value: int) -> None:
    """Move the Celery relay's position on to `value`."""
    await set_state(conn, RELAYED, value)


async def state(conn: Conn, name: str) -> int | None:
    """A `farm_state` value (None: never set)."""
    found = (
        await conn.execute(select(FARM_STATE.c.value).where(FARM_STATE.c.name == name))
    ).scalar()
    return None if found is None else int(found)


async def set_state(conn: Conn, name: str, value: int) -> None:
    """Set a `farm_state` value (the row is made the first time, whoever races)."""
    await conn.execute(
        text("INSERT INTO farm_state (name, value) VALUES (:name, :value) ON CONFLICT DO NOTHING"),
        {"name": name, "value": value},
    )
    await conn.execute(update(FARM_STATE).where(FARM_STATE.c.name == name).values(value=value))
