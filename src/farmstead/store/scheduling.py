"""Queues, agents and the running counters the claims read (array_count, kept by triggers)."""

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.types import BigInteger

from farmstead.db.engine import Conn
from farmstead.db.models import Agent, ArrayCount, Queue
from farmstead.db.prepared import prepare
from farmstead.db.types import db_now, seconds_from_now
from farmstead.store.sql import ARRAY, EVENT, TI, WORKFLOW, dialect, id_in

QUEUE: Table = Queue.__table__  # type: ignore[assignment]
AGENT: Table = Agent.__table__  # type: ignore[assignment]
COUNT: Table = ArrayCount.__table__  # type: ignore[assignment]

QUEUE_COLUMNS = ("id", "parent_id", "name", "path", "priority", "weight", "minimum_agents",
                 "maximum_agents")  # fmt: skip


class ArrayLoad(NamedTuple):
    """An array with QUEUED instances or agents, and its workflow's place and knobs."""

    array_id: int
    workflow_id: int
    queued: int
    assigned: int
    max_running: int
    queue_id: int | None
    priority: int
    weight: float
    minimum: int | None
    maximum: int | None
    pull: bool


def _load(by_workflow: bool) -> Any:
    active = or_(COUNT.c.queued > 0, COUNT.c.assigned > 0)  # the partial index's condition
    stmt = (
        select(
            COUNT.c.array_id,
            COUNT.c.workflow_id,
            COUNT.c.queued,
            COUNT.c.assigned,
            ARRAY.c.max_concurrently_running,
            WORKFLOW.c.queue_id,
            WORKFLOW.c.priority,
            WORKFLOW.c.weight,
            WORKFLOW.c.minimum_agents,
            WORKFLOW.c.maximum_agents,
            WORKFLOW.c.pull_timeout.is_not(None),
        )
        .join(ARRAY, ARRAY.c.id == COUNT.c.array_id)
        .join(WORKFLOW, WORKFLOW.c.id == COUNT.c.workflow_id)
        .where(active)
    )
    if by_workflow:
        stmt = stmt.where(COUNT.c.workflow_id == bindparam("workflow_id", type_=BigInteger()))
    return stmt.order_by(COUNT.c.array_id)


async def load(conn: Conn, workflow_id: int | None = None) -> list[ArrayLoad]:
    """Every array with work or agents (or those of one workflow): one indexed read."""
    by_workflow = workflow_id is not None
    prepared = prepare(dialect(conn), ("array_load", by_workflow), lambda: _load(by_workflow))
    params = {"workflow_id": workflow_id} if by_workflow else {}
    return [ArrayLoad(*r) for r in (await conn.run(prepared, params)).rows]


def _queues() -> Any:
    return select(*(QUEUE.c[c] for c in QUEUE_COLUMNS)).order_by(QUEUE.c.id)


async def queues(conn: Conn) -> list[dict[str, Any]]:
    """Every queue (a small table), by id."""
    result = await conn.run(prepare(dialect(conn), "queues", _queues), {})
    return [dict(zip(QUEUE_COLUMNS, r, strict=True)) for r in result.rows]


async def lock_for_claim(conn: Conn, queue_ids: Sequence[int], workflow_id: int) -> None:
    """PostgreSQL: hold the queues (with a maximum) on a workflow's path and its counters,
    in id order, so claims that could pass a maximum together take turns."""
    if queue_ids:
        await conn.execute(
            select(QUEUE.c.id)
            .where(id_in(QUEUE.c.id, sorted(queue_ids), "postgresql"))
            .order_by(QUEUE.c.id)
            .with_for_update()
        )
    await conn.execute(
        select(COUNT.c.array_id)
        .where(COUNT.c.workflow_id == workflow_id)
        .order_by(COUNT.c.array_id)
        .with_for_update()
    )


async def queue_by_path(conn: Conn, path: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(select(*(QUEUE.c[c] for c in QUEUE_COLUMNS)).where(QUEUE.c.path == path))
    ).first()
    return None if row is None else dict(zip(QUEUE_COLUMNS, row, strict=True))


async def insert_queue(conn: Conn, values: dict[str, Any]) -> int:
    stmt = QUEUE.insert().values(created_date=db_now(), **values).returning(QUEUE.c.id)
    return int((await conn.execute(stmt)).scalar_one())


async def update_queue(conn: Conn, queue_id: int, values: dict[str, Any]) -> None:
    await conn.execute(update(QUEUE).where(QUEUE.c.id == queue_id).values(**values))


async def repath(conn: Conn, old: str, new: str) -> None:
    """Rename the paths below `old` (a queue moved or renamed) to start with `new`."""
    below = QUEUE.c.path.startswith(old + "/", autoescape=True)
    await conn.execute(
        update(QUEUE).where(below).values(path=new + func.substr(QUEUE.c.path, len(old) + 1))
    )


async def delete_queue(conn: Conn, queue_id: int) -> None:
    await conn.execute(QUEUE.delete().where(QUEUE.c.id == queue_id))


async def queue_in_use(conn: Conn, queue_id: int) -> tuple[int, int]:
    """(child queues, workflows) directly in a queue."""
    children = select(func.count()).where(QUEUE.c.parent_id == queue_id).scalar_subquery()
    flows = select(func.count()).where(WORKFLOW.c.queue_id == queue_id).scalar_subquery()
    row = (await conn.execute(select(children, flows))).one()
    return int(row[0]), int(row[1])


async def set_workflow_knobs(conn: Conn, workflow_id: int, values: dict[str, Any]) -> None:
    await conn.execute(update(WORKFLOW).where(WORKFLOW.c.id == workflow_id).values(**values))


AGENT_COLUMNS = ("id", "name", "hostname", "kind", "pid", "slots", "identity", "created_date",
                 "last_seen_date", "last_claim_date")  # fmt: skip


async def insert_agent(conn: Conn, values: dict[str, Any]) -> int:
    stmt = AGENT.insert().values(created_date=db_now(), last_seen_date=db_now(), **values)
    return int((await conn.execute(stmt.returning(AGENT.c.id))).scalar_one())


async def agent(conn: Conn, agent_id: int) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(*(AGENT.c[c] for c in AGENT_COLUMNS)).where(AGENT.c.id == agent_id)
        )
    ).first()
    return None if row is None else dict(zip(AGENT_COLUMNS, row, strict=True))


async def agents(conn: Conn, seen_within: float | None) -> list[dict[str, Any]]:
    """Agents by id; with `seen_within`, only those seen in the last so many seconds."""
    stmt = select(*(AGENT.c[c] for c in AGENT_COLUMNS)).order_by(AGENT.c.id)
    if seen_within is not None:
        stmt = stmt.where(AGENT.c.last_seen_date >= seconds_from_now(-seen_within))
    return [dict(zip(AGENT_COLUMNS, r, strict=True)) for r in (await conn.execute(stmt)).all()]


def _seen() -> Any:
    agent_id = bindparam("agent_id", type_=BigInteger())
    return (
        update(AGENT)
        .where(AGENT.c.id == agent_id)
        .values(last_seen_date=db_now())
        .returning(*(AGENT.c[c] for c in SEEN_COLUMNS))
    )


def _claimed() -> Any:
    agent_id = bindparam("agent_id", type_=BigInteger())
    return (
        update(AGENT)
        .where(AGENT.c.id == agent_id)
        .values(last_seen_date=db_now(), last_claim_date=db_now())
        .returning(*(AGENT.c[c] for c in SEEN_COLUMNS))
    )


SEEN_COLUMNS = ("id", "name", "hostname", "kind", "pid", "slots")


async def seen(conn: Conn, agent_id: int, claimed: bool = False) -> dict[str, Any] | None:
    """An agent's heartbeat (and, `claimed`, its last claim that got work): the agent (its id,
    name, host, kind, pid, slots), or None if there is no such agent."""
    stmt = prepare(dialect(conn), ("agent_seen", claimed), _claimed if claimed else _seen)
    row = (await conn.run(stmt, {"agent_id": agent_id})).first()
    return None if row is None else dict(zip(SEEN_COLUMNS, row, strict=True))


def _others() -> Any:
    agent_id = bindparam("agent_id", type_=BigInteger())
    recent = AGENT.c.last_seen_date >= seconds_from_now(-bindparam("within", type_=BigInteger()))
    return select(func.count()).where(and_(recent, AGENT.c.id != agent_id))


async def others_live(conn: Conn, agent_id: int, within: float) -> int:
    """How many other agents were seen in the last `within` seconds."""
    stmt = prepare(dialect(conn), "agents_others", _others)
    return int((await conn.run(stmt, {"agent_id": agent_id, "within": int(within)})).rows[0][0])


async def last_claim(conn: Conn) -> Any:
    """When any agent last got work (None: never)."""
    return (await conn.execute(select(func.max(AGENT.c.last_claim_date)))).scalar()


async def newest_instance(conn: Conn, task_id: int) -> dict[str, Any] | None:
    """A task's newest instance, with whether its retry hold has passed (database clock)."""
    held = and_(TI.c.available_date.is_not(None), TI.c.available_date > db_now())
    stmt = (
        select(
            TI.c.id,
            TI.c.status,
            TI.c.status_date,
            TI.c.nodename,
            TI.c.agent_id,
            TI.c.avoid_agent_id,
            TI.c.available_date,
            TI.c.priority,
            TI.c.workflow_id,
            TI.c.array_id,
            held.label("held"),
            TI.c.pull,
        )
        .where(TI.c.task_id == task_id)
        .order_by(TI.c.id.desc())
        .limit(1)
    )
    row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else dict(row)


async def queued_ahead(conn: Conn, ti: dict[str, Any], most: int) -> int:
    """QUEUED instances of the same workflow a claim takes before `ti` (at most `most`)."""
    ahead = or_(
        TI.c.priority > ti["priority"],
        and_(TI.c.priority == ti["priority"], TI.c.id < ti["id"]),
    )
    first = (
        select(TI.c.id)
        .where(TI.c.workflow_id == ti["workflow_id"], TI.c.status == "Q", ahead)
        .limit(most)
        .subquery()
    )
    return int((await conn.execute(select(func.count()).select_from(first))).scalar_one())


async def workflow_actions(conn: Conn, workflow_id: int, most: int = 50) -> list[dict[str, Any]]:
    """A workflow's own newest events (cancel, resume, …), newest first."""
    stmt = (
        select(EVENT.c.time, EVENT.c.details)
        .where(EVENT.c.workflow_id == workflow_id, EVENT.c.entity == "workflow")
        .order_by(EVENT.c.id.desc())
        .limit(most)
    )
    return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]


# ---- agents online and offline (their worker-* events) ----------------------------------------


def _back_online() -> Any:
    agent_id = bindparam("agent_id", type_=BigInteger())
    return (
        update(AGENT)
        .where(AGENT.c.id == agent_id, AGENT.c.offline_date.is_not(None))
        .values(offline_date=None)
        .returning(AGENT.c.id)
    )


async def back_online(conn: Conn, agent_id: int) -> bool:
    """Clear an agent's offline mark; whether it had one (it is online again)."""
    stmt = prepare(dialect(conn), "agent_back_online", _back_online)
    return bool((await conn.run(stmt, {"agent_id": agent_id})).rows)


async def mark_offline(conn: Conn, silent_for: float, limit: int) -> list[dict[str, Any]]:
    """Agents silent for `silent_for` seconds and not yet marked: marked offline now."""
    silent = (
        select(AGENT.c.id)
        .where(
            AGENT.c.offline_date.is_(None),
            AGENT.c.last_seen_date < seconds_from_now(-silent_for),
        )
        .order_by(AGENT.c.id)
        .limit(limit)
    )
    if dialect(conn) == "postgresql":
        silent = silent.with_for_update(skip_locked=True)
    ids = [int(r[0]) for r in (await conn.execute(silent)).all()]
    if not ids:
        return []
    rows = await conn.execute(
        update(AGENT)
        .where(id_in(AGENT.c.id, ids, dialect(conn)), AGENT.c.offline_date.is_(None))
        .values(offline_date=db_now())
        .returning(AGENT.c.id, AGENT.c.name, AGENT.c.hostname, AGENT.c.pid, AGENT.c.last_seen_date)
    )
    keys = ("id", "name", "hostname", "pid", "last_seen_date")
    return [dict(zip(keys, r, strict=True)) for r in rows.all()]
