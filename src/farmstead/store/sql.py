"""Dialect helpers shared by the store modules."""

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import BigInteger, Integer

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
