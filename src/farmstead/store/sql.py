"""Dialect helpers shared by the store modules."""

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import BigInteger, Integer, Text

from farmstead.db.models import Array, Event, Task, TaskInstance, TaskInstanceErrorLog, Workflow
from farmstead.db.types import db_now

TI = cast(Table, TaskInstance.__table__)
TASK = cast(Table, Task.__table__)
EVENT = cast(Table, Event.__table__)
ERRLOG = cast(Table, TaskInstanceErrorLog.__table__)
ARRAY = cast(Table, Array.__table__)
WORKFLOW = cast(Table, Workflow.__table__)


def dialect(session: AsyncSession) -> str:
    """The name of the session's database dialect."""
    return session.get_bind().dialect.name


def id_in(column: ColumnElement[Any], ids: Sequence[int], dialect_name: str) -> ColumnElement[bool]:
    """`column IN ids` as one bound parameter, whatever the number of ids."""
    if dialect_name == "postgresql":
        return column == func.any(bindparam("ids", list(ids), type_=postgresql.ARRAY(BigInteger)))
    table = func.json_each(bindparam("ids", "[" + ",".join(str(int(i)) for i in ids) + "]"))
    return column.in_(select(table.table_valued("value").c.value.cast(Integer)))


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


async def insert_events(session: AsyncSession, events: Sequence[Any]) -> None:
    """Write event rows (the outbox of each applied transition)."""
    if not events:
        return
    await session.execute(
        EVENT.insert().values(time=db_now()),
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
