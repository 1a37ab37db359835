"""Heartbeat deadlines: the narrow table that holds them while an instance is LAUNCHED or RUNNING.

A move that enters one of those statuses inserts the instance's deadline row (or, within them,
sets it anew); a move that leaves them copies the row back to the instance's own
`report_by_date` and `last_report_date` (its record) and deletes it; both in the statement
that moves the instance on PostgreSQL (a data-modifying CTE), in the same transaction on
SQLite. Heartbeats rewrite only these rows.

Lock order (store.locks): a deadline row comes with its instance. Every mover holds the
instance's row lock before it touches the deadline row, so two movers never wait for each
other's deadline rows; the batch heartbeat, the only writer that does not lock the instance,
takes the deadline rows in id order, and a move of many instances takes theirs in id order
too, so the two never wait for each other in a cycle.
"""

from collections.abc import Sequence
from functools import lru_cache, partial
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Float,
    Text,
    bindparam,
    delete,
    func,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from farmstead.db.engine import Conn
from farmstead.db.prepared import prepare
from farmstead.db.types import db_now, seconds_from_now
from farmstead.store.sql import (
    DEADLINE,
    TI,
    dialect,
    id_in,
    ids_placeholder,
    ids_value,
    set_placeholders,
    set_values,
)

_ID = DEADLINE.c.task_instance_id
_RECORD = ("report_by_date", "last_report_date")
Change = Literal["enter", "enter_bare", "renew", "leave"]


def _deadline_values(change: Change) -> dict[str, Any]:
    if change == "enter_bare":  # entered with no deadline: none until a report sets one
        return {"report_by_date": null(), "last_report_date": null()}
    increment = bindparam("increment", type_=Float())
    return {"report_by_date": seconds_from_now(increment), "last_report_date": db_now()}


def _each_id(name: str, one: bool) -> Any:
    """The ids of the move as rows (`id`), in the order given (sorted by the caller)."""
    if one:
        return select(bindparam("row_id", type_=BigInteger()).label("id")).subquery("each")
    if name == "postgresql":
        array = bindparam("ids", type_=postgresql.ARRAY(BigInteger()))
        return func.unnest(array).table_valued("id").render_derived("each")
    rows = func.json_each(bindparam("ids", type_=Text())).table_valued("value")
    return select(rows.c.value.label("id")).subquery("each")


def _upsert(name: str, one: bool, change: Change) -> Any:
    """Insert the deadline rows of the move (or set them anew where they exist)."""
    values = _deadline_values(change)
    each = _each_id(name, one)
    rows = select(each.c.id, *(v.label(k) for k, v in values.items()))
    stmt: Any = (postgresql if name == "postgresql" else sqlite).insert(DEADLINE)
    if name == "sqlite":  # `ON CONFLICT` after a SELECT needs a WHERE in SQLite's grammar
        rows = rows.where(literal_column("1") == 1)
    stmt = stmt.from_select(["task_instance_id", *values], rows)
    if change == "enter_bare":
        return stmt.on_conflict_do_nothing(index_elements=[_ID])
    return stmt.on_conflict_do_update(
        index_elements=[_ID], set_={k: stmt.excluded[k] for k in values}
    )


def _mine(name: str, one: bool, column: Any) -> Any:
    return column == bindparam("row_id") if one else ids_placeholder(column, name)


@lru_cache(maxsize=256)
def _build(
    name: str, one: bool, change: Change, kinds: tuple[tuple[str, str], ...]
) -> tuple[Any, ...]:
    sets = set_placeholders(TI, kinds)
    if change != "leave":
        stmt = update(TI).where(_mine(name, one, TI.c.id)).values(sets)
        upsert = _upsert(name, one, change)
        # PostgreSQL: one statement (the instances are locked already; the deadline rows,
        # taken in id order, are the only rows it may wait for)
        return (stmt.add_cte(upsert.cte("deadlines")),) if name == "postgresql" else (stmt, upsert)
    if name != "postgresql":  # one writer: nothing comes between the copy and the delete
        for col in _RECORD:
            live = select(DEADLINE.c[col]).where(TI.c.id == _ID).scalar_subquery()
            sets[col] = func.coalesce(live, TI.c[col])
        stmt = update(TI).where(_mine(name, one, TI.c.id)).values(sets)
        return stmt, delete(DEADLINE).where(_mine(name, one, _ID))
    # PostgreSQL: delete the deadline rows (waiting for a heartbeat that holds one, then
    # reading what it wrote) and copy what they held to the instances, in one statement
    gone = (
        delete(DEADLINE)
        .where(_mine(name, one, _ID))
        .returning(_ID.label("id"), *DEADLINE.c[1:])
        .cte("gone")
    )
    each = _each_id(name, one)
    src = (
        select(each.c.id, *(gone.c[col] for col in _RECORD))
        .select_from(each.outerjoin(gone, gone.c.id == each.c.id))
        .subquery("src")
    )
    for col in _RECORD:
        sets[col] = func.coalesce(src.c[col], TI.c[col])
    return (update(TI).where(TI.c.id == src.c.id).values(sets).add_cte(gone),)


async def lock(conn: Conn, ids: Sequence[int]) -> None:
    """Lock the deadline rows of instances `ids` (rows the caller locked) in id order,
    waiting: before a move of many instances leaves or renews them (PostgreSQL)."""
    if dialect(conn) == "postgresql":
        stmt = select(_ID).where(id_in(_ID, sorted(ids), "postgresql")).order_by(_ID)
        await conn.execute(stmt.with_for_update())


async def move(
    conn: Conn, ids: Sequence[int], values: dict[str, Any], change: Change, increment: float | None
) -> None:
    """Set `values` on instances `ids` (rows the caller locked) as they enter the deadline
    statuses (`enter`, with a deadline `increment` seconds away; `enter_bare`, none), move
    within them with a new deadline (`renew`), or leave them (`leave`)."""
    name = dialect(conn)
    ids = sorted(ids)
    one = len(ids) == 1
    kinds, params = set_values(values)
    params |= {"row_id": ids[0]} if one else {"ids": ids_value(ids, name)}
    if increment is not None:
        params["increment"] = increment
    for i, stmt in enumerate(_build(name, one, change, kinds)):
        prepared = prepare(name, ("deadline_move", one, change, kinds, i), partial(_same, stmt))
        await conn.run(prepared, params)


def _same(stmt: Any) -> Any:
    return stmt
