"""Dialect helpers shared by the store modules."""

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Float,
    Table,
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import BigInteger, Integer, Text

from farmstead.db.engine import Conn
from farmstead.db.models import (
    Array,
    Event,
    Task,
    TaskCount,
    TaskfarmWorker,
    TaskInstance,
    TaskInstanceDeadline,
    TaskInstanceErrorLog,
    Workflow,
)
from farmstead.db.prepared import prepare
from farmstead.db.types import after_seconds, db_after, db_now, seconds_from_now
from farmstead.metrics import EVENTS_WRITTEN, TRANSITIONS

TI = cast(Table, TaskInstance.__table__)
TASK = cast(Table, Task.__table__)
EVENT = cast(Table, Event.__table__)
ERRLOG = cast(Table, TaskInstanceErrorLog.__table__)
ARRAY = cast(Table, Array.__table__)
WORKFLOW = cast(Table, Workflow.__table__)
TF_WORKER = cast(Table, TaskfarmWorker.__table__)
DEADLINE = cast(Table, TaskInstanceDeadline.__table__)
#: per array, tasks by status: running counts kept by triggers on task (migration 0011)
TASK_COUNT = cast(Table, TaskCount.__table__)
#: the statuses whose instances have a heartbeat deadline (a DEADLINE row)
DEADLINE_STATUSES = frozenset({"O", "R"})


def with_deadline(table: Any = TI) -> Any:
    """`table` (the instances, or a join starting with them) outer-joined to their live
    deadline rows: read the deadline columns through `report_by()`."""
    return table.outerjoin(DEADLINE, DEADLINE.c.task_instance_id == TI.c.id)


def report_by() -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """An instance's deadline and last report: the live ones while it has a deadline row,
    else those recorded when it last left LAUNCHED or RUNNING (needs `with_deadline`)."""
    live = DEADLINE.c.task_instance_id.is_not(None)
    return tuple(  # type: ignore[return-value]
        case((live, DEADLINE.c[name]), else_=TI.c[name]).label(name)
        for name in ("report_by_date", "last_report_date")
    )


def dialect(conn: Conn) -> str:
    """The name of the conn's database dialect."""
    return conn.dialect.name


def id_in(column: ColumnElement[Any], ids: Sequence[int], dialect_name: str) -> ColumnElement[bool]:
    """`column IN ids` as one bound parameter, whatever the number of ids."""
    return ids_placeholder(column, dialect_name, ids_value(ids, dialect_name))


def ids_value(ids: Sequence[int], dialect_name: str) -> Any:
    """The one parameter value that carries `ids` (an array, or JSON text on SQLite)."""
    if dialect_name == "postgresql":
        return list(ids)
    return "[" + ",".join(str(int(i)) for i in ids) + "]"


def ids_placeholder(
    column: ColumnElement[Any], dialect_name: str, value: Any = None, name: str = "ids"
) -> ColumnElement[bool]:
    """`column IN` the ids bound as parameter `name` (`ids_value`)."""
    if dialect_name == "postgresql":
        return column == func.any(bindparam(name, value, type_=postgresql.ARRAY(BigInteger)))
    table = func.json_each(bindparam(name, value, type_=Text()))
    return column.in_(select(table.table_valued("value").c.value.cast(Integer)))


class PlusOne:
    """A column value: the column's own value plus one."""


PLUS_ONE = PlusOne()


def _kind(value: Any) -> str | None:
    """How a SET value is prepared: a parameter, the db clock, the clock plus seconds, +1;
    None for any other SQL expression (then the statement is built each time)."""
    if isinstance(value, db_now):
        return "now"
    if isinstance(value, db_after):
        return "after" if after_seconds(value) is not None else None
    if value is PLUS_ONE:
        return "plus1"
    if isinstance(value, ClauseElement):
        return None
    return "value"


def _placeholder(table: Table, name: str, kind: str) -> Any:
    if kind == "now":
        return db_now()
    if kind == "after":
        return seconds_from_now(bindparam(f"v_{name}", type_=Float()))
    if kind == "plus1":
        return table.c[name] + 1
    return bindparam(f"v_{name}", type_=table.c[name].type)


def set_values(values: dict[str, Any]) -> tuple[tuple[tuple[str, str], ...], dict[str, Any]]:
    """How each of `values` is prepared (`set_placeholders`), and the parameters they take.

    Every value must be preparable: a plain value, the clock, the clock plus seconds, +1."""
    kinds = tuple((k, _kind(v)) for k, v in values.items())
    if any(kind is None for _, kind in kinds):
        raise ValueError(f"not a preparable value among {sorted(values)}")
    params: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, db_after):
            params[f"v_{k}"] = after_seconds(v)
        elif not isinstance(v, ClauseElement) and v is not PLUS_ONE:
            params[f"v_{k}"] = v
    return cast(tuple[tuple[str, str], ...], kinds), params


def set_placeholders(table: Table, kinds: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The SET clause of `set_values`' kinds, with named placeholders."""
    return {k: _placeholder(table, k, kind) for k, kind in kinds}


def _as_sql(table: Table, name: str, value: Any) -> Any:
    return table.c[name] + 1 if value is PLUS_ONE else value


async def update_by_ids(
    conn: Conn, table: Table, ids: Sequence[int], values: dict[str, Any]
) -> int:
    """`UPDATE table SET values WHERE id IN ids` (rows the caller locked); how many changed.

    Prepared (db/prepared.py) when every value is a plain value, the database clock, the clock
    plus seconds, or PLUS_ONE; built each time when a value is any other SQL expression.
    """
    name = dialect(conn)
    kinds = tuple((k, _kind(v)) for k, v in values.items())
    if any(kind is None for _, kind in kinds):
        stmt = (
            update(table)
            .where(id_in(table.c.id, ids, name))
            .values({k: _as_sql(table, k, v) for k, v in values.items()})
            .execution_options(synchronize_session=False)
        )
        return int((await conn.execute(stmt)).rowcount)  # type: ignore[attr-defined]
    one = len(ids) == 1

    def build() -> Any:
        where = table.c.id == bindparam("row_id") if one else ids_placeholder(table.c.id, name)
        sets = {k: _placeholder(table, k, kind) for k, kind in kinds if kind}
        return update(table).where(where).values(sets)

    prepared = prepare(name, ("update_by_ids", table.name, one, kinds), build)
    params: dict[str, Any] = {"row_id": ids[0]} if one else {"ids": ids_value(ids, name)}
    for k, v in values.items():
        if isinstance(v, db_after):
            params[f"v_{k}"] = after_seconds(v)
        elif not isinstance(v, ClauseElement) and v is not PLUS_ONE:
            params[f"v_{k}"] = v
    return (await conn.run(prepared, params)).rowcount


def id_pairs(mapping: Mapping[int, str], dialect_name: str) -> Any:
    """A table `pairs(id, value)` of `mapping`, bound as at most two parameters, whatever its size.

    Join it in an UPDATE … FROM to write a different value per row in one statement (a CASE
    would bind two parameters per row and compare each row with every id).
    """
    if dialect_name == "postgresql":
        ids = bindparam("pair_ids", list(mapping), type_=postgresql.ARRAY(BigInteger))
        values = bindparam("pair_values", list(mapping.values()), type_=postgresql.ARRAY(Text))
        return func.unnest(ids, values).table_valued("id", "value").render_derived("pairs")
    as_json = json.dumps({str(int(k)): v for k, v in mapping.items()}, ensure_ascii=False)
    table = func.json_each(bindparam("pairs", as_json)).table_valued("key", "value")
    return select(table.c.key.cast(Integer).label("id"), table.c.value).subquery("pairs")


def _insert_events() -> Any:
    return EVENT.insert().values(
        time=db_now(),
        workflow_id=bindparam("workflow_id"),
        entity=bindparam("entity"),
        entity_id=bindparam("entity_id"),
        from_status=bindparam("from_status"),
        to_status=bindparam("to_status"),
        details=bindparam("details", type_=EVENT.c.details.type),
    )


def _insert_events_pg() -> Any:
    """One INSERT of any number of events: their columns bound as arrays, unnested."""
    columns = ("workflow_id", "entity", "entity_id", "from_status", "to_status", "details")
    big: Any = postgresql.ARRAY(BigInteger())
    txt: Any = postgresql.ARRAY(Text())
    types = (big, txt, big, txt, txt, txt)
    arrays: list[Any] = [bindparam(c, type_=t) for c, t in zip(columns, types, strict=True)]
    rows = func.unnest(*arrays).table_valued(*columns).render_derived("e")
    return EVENT.insert().from_select(
        ["time", *columns],
        select(db_now(), *[rows.c[c] for c in columns[:-1]], rows.c.details.cast(JSONB)),
    )


def count_events(events: Sequence[Any]) -> None:
    """Count written events and the moves they record (Prometheus; counted as written: a
    transaction rolled back after it is counted too, rare)."""
    EVENTS_WRITTEN.inc(len(events))
    for e in events:
        if e.entity in ("task", "task_instance"):
            TRANSITIONS.labels(e.entity, e.from_status or "", e.to_status).inc()


async def insert_events(conn: Conn, events: Sequence[Any]) -> None:
    """Write event rows (the outbox of each applied transition): one statement."""
    if not events:
        return
    count_events(events)
    if dialect(conn) == "postgresql":  # one round trip, whatever the number of events
        prepared = prepare("postgresql", "insert_events", _insert_events_pg)
        await conn.run(
            prepared,
            {
                "workflow_id": [e.workflow_id for e in events],
                "entity": [e.entity for e in events],
                "entity_id": [e.entity_id for e in events],
                "from_status": [e.from_status for e in events],
                "to_status": [e.to_status for e in events],
                "details": [None if e.details is None else json.dumps(e.details) for e in events],
            },
        )
        return
    prepared = prepare(dialect(conn), "insert_events", _insert_events)
    await conn.run(
        prepared,
        [
            {
                "workflow_id": e.workflow_id,
                "entity": e.entity,
                "entity_id": e.entity_id,
                "from_status": e.from_status,
                "to_status": e.to_status,
                "details": e.details,
            }
            for e in events
        ],
    )
