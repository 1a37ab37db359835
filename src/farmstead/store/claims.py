"""A claim's statements, prepared once (db/prepared.py).

PostgreSQL: one statement, one round trip, no BEGIN or COMMIT: lock the candidates, move them
as the decision table says (`ClaimMoves`, computed by the decision function), update the
instances and their tasks and insert the events (data-modifying CTEs), answer the moved.
SQLite (whole transactions on the database thread): read the candidates, decide in Python,
then per decision two updates and one insert. Either way the events are derived in SQL from
the moved ids, not built row by row in Python.
"""

import json
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Integer,
    Text,
    and_,
    bindparam,
    func,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import BigInteger

from farmstead.db.engine import Conn
from farmstead.db.prepared import prepare
from farmstead.db.types import db_now
from farmstead.fsm import Apply
from farmstead.store.bulk import _QUEUED, _hold_passed, set_instances, set_tasks
from farmstead.store.sql import EVENT, TASK, TI, WORKFLOW, ids_value


class Claimable(NamedTuple):
    """A QUEUED instance and its task, locked by a claim; what the decision and answer need."""

    ti_id: int
    ti_status: str
    task_id: int
    task_status: str
    tries: int  # tries used since the last resume
    max_attempts: int
    cancelled: bool
    workflow_id: int
    array_id: int
    array_batch_num: int
    array_step_id: int


def pull_term(pull: bool, sqlite: bool) -> ColumnElement[bool]:
    """Instances of pull-based runs (`pull`) or of every other workflow, spelt as the
    claim-order index's condition is (db.models.QUEUED_PUSH), so the planner sees the
    claim's WHERE implies it and walks that index."""
    if sqlite:
        return TI.c.pull == literal_column("1" if pull else "0")
    return TI.c.pull if pull else not_(TI.c.pull)


def _where(by_workflow: bool, sqlite: bool, pull: bool = False) -> ColumnElement[bool]:
    # SQLite's planner would rather find every QUEUED row through another index and sort
    # them, unless told that `status = 'Q'` is not selective (`likely`, a no-op at run time)
    queued = func.likely(_QUEUED) if sqlite and not by_workflow else _QUEUED
    # a pull-based run's instances are claimed only by its own claims (taskfarm's face):
    # never by farmstead's executors, which walk an index that leaves them out
    where = and_(queued, pull_term(pull, sqlite), _hold_passed())
    # arrays at their concurrency limit (`full`, maybe none); a retry is not offered to the
    # agent its try failed on (`avoid`, or -1) while another agent could take it
    avoid = bindparam("avoid", type_=BigInteger())
    where = and_(
        where,
        _not_in_full(sqlite),
        or_(TI.c.avoid_agent_id.is_(None), TI.c.avoid_agent_id != avoid),
    )
    if by_workflow:
        where = and_(where, TI.c.workflow_id == bindparam("workflow_id", type_=BigInteger()))
    return where


def _not_in_full(sqlite: bool) -> ColumnElement[bool]:
    if not sqlite:
        return TI.c.array_id != func.all(bindparam("full", type_=postgresql.ARRAY(BigInteger)))
    each = func.json_each(bindparam("full", type_=Text())).table_valued("value")
    return TI.c.array_id.not_in(select(each.c.value.cast(Integer)))


def _filters(sqlite: bool, full: Sequence[int], avoid: int | None) -> dict[str, Any]:
    """The parameters of `_where`'s filters."""
    return {"full": ids_value(full, "sqlite" if sqlite else "postgresql"),
            "avoid": -1 if avoid is None else avoid}  # fmt: skip


def _candidates_sqlite(by_workflow: bool, pull: bool) -> Any:
    return (
        select(
            TI.c.id,
            TI.c.status,
            TASK.c.id,
            TASK.c.status,
            TASK.c.num_attempts - TASK.c.attempts_base,
            TASK.c.max_attempts,
            WORKFLOW.c.cancelled_date.is_not(None),
            TI.c.workflow_id,
            TI.c.array_id,
            TI.c.array_batch_num,
            TI.c.array_step_id,
        )
        .join(TASK, TASK.c.id == TI.c.task_id)
        .join(WORKFLOW, WORKFLOW.c.id == TASK.c.workflow_id)
        .where(_where(by_workflow, sqlite=True, pull=pull))
        .order_by(TI.c.priority.desc(), TI.c.id)
        .limit(bindparam("limit", type_=Integer()))
    )


async def candidates(
    conn: Conn,
    workflow_id: int | None,
    limit: int,
    pull: bool = False,
    full: Sequence[int] = (),
    avoid: int | None = None,
) -> list[Claimable]:
    """SQLite (the writer's lock is held since BEGIN): read up to `limit` available QUEUED
    instances (of one workflow, or of any) in claim order, with their tasks: one statement.

    An index yields them in claim order (`ix_task_instance_queued_priority_id`, or for one
    workflow `ix_task_instance_workflow_id_status_priority_id`), so the LIMIT stops the walk
    after `limit` rows (plus any retries still held back), however many instances are QUEUED.
    """
    by_workflow = workflow_id is not None
    prepared = prepare(
        "sqlite",
        ("claim_candidates", by_workflow, pull),
        lambda: _candidates_sqlite(by_workflow, pull),
    )
    params: dict[str, Any] = {"limit": limit, **_filters(True, full, avoid)}
    if by_workflow:
        params["workflow_id"] = workflow_id
    return [Claimable(*r) for r in (await conn.run(prepared, params)).rows]


#: the statuses of a move: one parameter each, wherever the statement uses them
_TI_FROM = bindparam("ti_from", type_=TI.c.status.type)
_TI_TO = bindparam("ti_to", type_=TI.c.status.type)
_TASK_TO = bindparam("task_to", type_=TASK.c.status.type)


def _events(members: Any, steps: Any | None, on: Any = None) -> Any:
    """INSERT the events of one move: each member's instance event, then (with `steps`) each
    member's task events along the task's path (the steps `on` matches, default all), in
    that order (event ids follow it)."""
    details = bindparam("details", type_=EVENT.c.details.type)
    rows: list[Any] = [
        select(
            members.c.workflow_id.label("workflow_id"),
            literal("task_instance").label("entity"),
            members.c.ti_id.label("entity_id"),
            _TI_FROM.label("from_status"),
            _TI_TO.label("to_status"),
            details.label("details"),
            members.c.n.label("n"),
            literal(0).label("k"),
        )
    ]
    if steps is not None:
        rows.append(
            select(
                members.c.workflow_id,
                literal("task"),
                members.c.task_id,
                steps.c.f,
                steps.c.t,
                null(),
                members.c.n,
                steps.c.k,
            ).select_from(members.join(steps, true() if on is None else on))
        )
    e = union_all(*rows).subquery("e") if len(rows) > 1 else rows[0].subquery("e")
    columns = ["workflow_id", "entity", "entity_id", "from_status", "to_status", "details"]
    return EVENT.insert().from_select(
        ["time", *columns],
        select(db_now(), *[e.c[c] for c in columns]).order_by(e.c.k > 0, e.c.n, e.c.k),
    )


class ClaimMoves(NamedTuple):
    """What the decision function says a claim does to a QUEUED instance, by its task's
    status (PostgreSQL's claim applies it in SQL): the task statuses it moves the instance
    from, the task's status after the move, and the steps of each task's path."""

    task_from: list[str]
    task_to: list[str]
    step_of: list[str]  # the task status the path starts from
    step_from: list[str]
    step_to: list[str]
    step_k: list[int]  # the step's place in its path, from 1


def _claim_pg(by_workflow: bool, pull: bool) -> Any:
    """PostgreSQL: a whole claim in one statement, atomic on its own.

    `candidates`: the first `limit` QUEUED instances in claim order (locked, skipping locked
    ones), each joined to its task (locked, skipping) in a LATERAL subquery: no join the
    planner could make a merge join (costing one probes the ends of the joined columns'
    indexes, which after a large rolled-back submit took over 100 ms of planning). An instance
    whose task another transaction holds is left out (it stays QUEUED). `moved`: those whose
    task's status the decision table (`ClaimMoves`) has. Then the instances and tasks are
    updated and the events inserted (data-modifying CTEs, each row found by its primary key),
    and the moved instances are the answer.
    """
    txt: Any = postgresql.ARRAY(Text())
    ti = (
        select(
            TI.c.id,
            TI.c.status,
            TI.c.task_id,
            TI.c.workflow_id,
            TI.c.array_id,
            TI.c.array_batch_num,
            TI.c.array_step_id,
        )
        .where(_where(by_workflow, sqlite=False, pull=pull))
        .order_by(TI.c.priority.desc(), TI.c.id)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(skip_locked=True)
        .subquery("ti")
    )
    task = (
        select(TASK.c.status)
        .where(TASK.c.id == ti.c.task_id)
        .with_for_update(skip_locked=True)
        .lateral("t")
    )
    decisions = (
        func.unnest(bindparam("task_from", type_=txt), bindparam("task_to", type_=txt))
        .table_valued("task_from", "task_to")
        .render_derived("d")
    )
    moved = (
        select(
            ti.c.id.label("ti_id"),
            ti.c.task_id,
            ti.c.workflow_id,
            ti.c.array_id,
            ti.c.array_batch_num,
            ti.c.array_step_id,
            task.c.status.label("task_status"),
            decisions.c.task_to,
            ti.c.id.label("n"),
        )
        .select_from(ti.join(task, true()).join(decisions, decisions.c.task_from == task.c.status))
        .cte("moved")
    )

    def ids(column: Any, where: Any = None) -> Any:  # `id = ANY(ARRAY(SELECT …))`: the pkey
        found = select(column)
        return func.any(
            func.array((found if where is None else found.where(where)).scalar_subquery())
        )

    instances = (
        update(TI)
        .where(TI.c.id == ids(moved.c.ti_id))
        .values(
            status=_TI_TO, status_date=db_now(), agent_id=bindparam("agent", type_=BigInteger())
        )
        .cte("moved_instances")
    )
    changed = moved.c.task_to != moved.c.task_status
    tasks = (
        update(TASK)
        .where(TASK.c.id == ids(moved.c.task_id, changed), TASK.c.id == moved.c.task_id)
        .values(status=moved.c.task_to, status_date=db_now())
        .cte("moved_tasks")
    )
    steps = (
        func.unnest(
            bindparam("step_of", type_=txt),
            bindparam("step_from", type_=txt),
            bindparam("step_to", type_=txt),
            bindparam("step_k", type_=postgresql.ARRAY(Integer())),
        )
        .table_valued("of", "f", "t", "k")
        .render_derived("s")
    )
    events = _events(moved, steps, steps.c.of == moved.c.task_status).cte("events")
    return (
        select(
            moved.c.ti_id,
            moved.c.task_id,
            moved.c.workflow_id,
            moved.c.array_id,
            moved.c.array_batch_num,
            moved.c.array_step_id,
        )
        .order_by(moved.c.ti_id)
        .add_cte(instances, tasks, events)
    )


async def claim_pg(
    conn: Conn,
    moves: ClaimMoves,
    workflow_id: int | None,
    limit: int,
    details: dict[str, Any] | None,
    pull: bool = False,
    full: Sequence[int] = (),
    avoid: int | None = None,
    agent: int | None = None,
) -> list[tuple[int, int, int, int, int, int]]:
    """PostgreSQL: claim up to `limit` instances as `moves` says, in one statement; the moved
    instances' (id, task, workflow, array, batch, step), by id."""
    by_workflow = workflow_id is not None
    prepared = prepare(
        "postgresql", ("claim", by_workflow, pull), lambda: _claim_pg(by_workflow, pull)
    )
    params: dict[str, Any] = {
        "limit": limit,
        **moves._asdict(),
        "ti_from": "Q",
        "ti_to": "I",
        "details": details,
        "agent": agent,
        **_filters(False, full, avoid),
    }
    if by_workflow:
        params["workflow_id"] = workflow_id
    return list((await conn.run(prepared, params)).rows)


def _members_sqlite() -> Any:
    each = func.json_each(bindparam("members", type_=Text())).table_valued("key", "value")
    return select(
        func.json_extract(each.c.value, "$[0]").label("ti_id"),
        func.json_extract(each.c.value, "$[1]").label("task_id"),
        func.json_extract(each.c.value, "$[2]").label("workflow_id"),
        each.c.key.label("n"),
    ).subquery("m")


def _events_sqlite(with_task: bool) -> Any:
    steps = None
    if with_task:
        each = func.json_each(bindparam("steps", type_=Text())).table_valued("key", "value")
        steps = select(
            func.json_extract(each.c.value, "$[0]").label("f"),
            func.json_extract(each.c.value, "$[1]").label("t"),
            (each.c.key + 1).label("k"),  # from 1: 0 is the instance's own event
        ).subquery("s")
    return _events(_members_sqlite(), steps)


async def apply_claim(
    conn: Conn,
    move: Apply,
    members: Sequence[Claimable],
    details: dict[str, Any] | None,
    agent: int | None = None,
) -> None:
    """SQLite: apply `move` (one decision) to every member: instances, their tasks along the
    move's task path, one event per row moved and per task step (rows the caller holds)."""
    if not members:
        return
    params: dict[str, Any] = {
        "ti_from": move.ti_from.value,
        "ti_to": move.ti_to.value,
        "details": details,
    }
    with_task = bool(move.task_path)
    await set_instances(conn, [m.ti_id for m in members], move.ti_to.value, {"agent_id": agent})
    if with_task:
        path = [move.task_from.value, *(s.value for s in move.task_path)]
        await set_tasks(conn, [m.task_id for m in members], move.task_to.value, {})
        params["steps"] = json.dumps(list(pairwise(path)))
    params["members"] = json.dumps([(m.ti_id, m.task_id, m.workflow_id) for m in members])
    insert = prepare("sqlite", ("claim_events", with_task), lambda: _events_sqlite(with_task))
    await conn.run(insert, params)
