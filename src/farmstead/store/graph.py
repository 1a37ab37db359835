"""Dependencies between tasks and workflows: the edges, releasing HELD tasks, blocking and
re-opening the tasks downstream of a failure. Every move here is set-based: one statement per
finished batch, whatever the number of edges.

A HELD task is released (to QUEUED, with its first instance) when every upstream task is DONE
and every task of every upstream workflow is DONE. On PostgreSQL two finishing upstream tasks of
one downstream task can commit at the same time: the release first locks its candidates, then
checks their upstream tasks in a new statement (a new snapshot under READ COMMITTED), so the
second of the two always sees the first one's DONE.
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql

from farmstead.db.engine import Conn
from farmstead.db.models import TaskEdge, WorkflowEdge
from farmstead.db.prepared import prepare
from farmstead.db.types import db_now
from farmstead.fsm import TaskStatus
from farmstead.store.bulk import next_batches
from farmstead.store.rows import EventRow
from farmstead.store.sql import TASK, TI, WORKFLOW, dialect, id_in, ids_placeholder, ids_value
from farmstead.store.workflows import INSTANCE_COLUMNS

TASK_EDGE = cast(Table, TaskEdge.__table__)
WORKFLOW_EDGE = cast(Table, WorkflowEdge.__table__)
#: every task status but DONE, written out: an index on (workflow_id, status) serves an IN list
NOT_DONE = sorted(s.value for s in TaskStatus if s != TaskStatus.DONE)
HELD, BLOCKED = TaskStatus.HELD.value, TaskStatus.BLOCKED.value


@dataclass(frozen=True)
class Released:
    """A HELD task just QUEUED, and its new instance."""

    task_id: int
    workflow_id: int
    instance_id: int


# ---- edges -----------------------------------------------------------------------------------


def _edges_pg() -> Any:
    def ids(name: str) -> Any:
        return func.unnest(bindparam(name, type_=postgresql.ARRAY(BigInteger())))

    return insert(TASK_EDGE).from_select(
        ["downstream_id", "upstream_id"], select(ids("down"), ids("up"))
    )


async def insert_task_edges(conn: Conn, pairs: Sequence[tuple[int, int]]) -> None:
    """Edges (downstream task id, upstream task id): on PostgreSQL one statement over two
    arrays, on SQLite an executemany."""
    if not pairs:
        return
    if dialect(conn) == "postgresql":
        params = {"down": [d for d, _ in pairs], "up": [u for _, u in pairs]}
        await conn.run(prepare("postgresql", "insert_task_edges", _edges_pg), params)
        return
    await conn.execute(
        TASK_EDGE.insert(), [{"downstream_id": d, "upstream_id": u} for d, u in pairs]
    )


async def insert_workflow_edges(conn: Conn, downstream: int, upstream: Sequence[int]) -> None:
    """Every task of `downstream` waits for every task of each of `upstream`."""
    if upstream:
        await conn.execute(
            WORKFLOW_EDGE.insert(),
            [{"downstream_workflow_id": downstream, "upstream_workflow_id": u} for u in upstream],
        )


async def insert_each_edges(conn: Conn, downstream: int, upstream: int) -> int:
    """Task i of workflow `downstream` on task i of `upstream` (both in id order): one
    statement; how many edges."""

    def ranked(workflow_id: int, name: str) -> Any:
        rank = func.row_number().over(order_by=TASK.c.id).label("rank")
        return select(TASK.c.id, rank).where(TASK.c.workflow_id == workflow_id).subquery(name)

    down, up = ranked(downstream, "down"), ranked(upstream, "up")
    sel = select(down.c.id, up.c.id).join_from(down, up, down.c.rank == up.c.rank)
    result = await conn.execute(
        insert(TASK_EDGE).from_select(["downstream_id", "upstream_id"], sel)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def hold_unfinished(conn: Conn, workflow_ids: Sequence[int]) -> None:
    """PostgreSQL: share-lock the tasks of `workflow_ids` that are not DONE, in id order, before
    edges to them are written. A DONE of one of them either commits first (this waits for it,
    and the release check that follows sees it), or waits for this transaction (and its own
    check for downstream tasks, a later statement, sees the new edges): never both miss."""
    if dialect(conn) == "postgresql" and workflow_ids:
        await conn.execute(
            select(TASK.c.id)
            .where(TASK.c.workflow_id.in_(sorted(workflow_ids)), TASK.c.status.in_(NOT_DONE))
            .order_by(TASK.c.id)
            .with_for_update(read=True)
        )


async def workflow_sizes(conn: Conn, ids: Sequence[int]) -> dict[int, int]:
    """Existing workflows among `ids`, with their numbers of tasks."""
    rows = await conn.execute(
        select(
            WORKFLOW.c.id,
            select(func.count()).where(TASK.c.workflow_id == WORKFLOW.c.id).scalar_subquery(),
        ).where(id_in(WORKFLOW.c.id, list(ids), dialect(conn)))
    )
    return {int(i): int(n) for i, n in rows.all()}


# ---- release -----------------------------------------------------------------------------------


def _not_done(column: Any) -> ColumnElement[bool]:
    """`column` (a task status) is not DONE: the statuses written into the SQL (no expanding
    parameter, so statements using it can be prepared)."""
    return cast(ColumnElement[bool], column.in_([literal_column(f"'{v}'") for v in NOT_DONE]))


def _upstream_pending() -> ColumnElement[bool]:
    """Some upstream task of TASK is not DONE, or some task of an upstream workflow of its
    workflow: through a task edge, or a workflow edge."""
    up, up_wf = TASK.alias("up"), TASK.alias("up_wf")
    edge = (TASK_EDGE.c.downstream_id, TASK_EDGE.c.upstream_id, TASK.c.id, up.c.id, up)
    wf_edge = (
        WORKFLOW_EDGE.c.downstream_workflow_id,
        WORKFLOW_EDGE.c.upstream_workflow_id,
        TASK.c.workflow_id,
        up_wf.c.workflow_id,
        up_wf,
    )
    return or_(
        *(
            exists().where(down == mine, theirs == upstream, _not_done(other.c.status))
            for down, upstream, mine, theirs, other in (edge, wf_edge)
        )
    )


def _failed_up() -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
    """An upstream task of TASK that is ERROR_FATAL or BLOCKED: the alias, and the conditions
    through a task edge and through a workflow edge."""
    up = TASK.alias("failed_up")
    bad = up.c.status.in_(("F", BLOCKED))
    by_task = (TASK_EDGE.c.downstream_id == TASK.c.id, up.c.id == TASK_EDGE.c.upstream_id, bad)
    by_workflow = (
        WORKFLOW_EDGE.c.downstream_workflow_id == TASK.c.workflow_id,
        up.c.workflow_id == WORKFLOW_EDGE.c.upstream_workflow_id,
        bad,
    )
    return up, by_task, by_workflow


def failed_upstream() -> ColumnElement[bool]:
    """Some upstream task of a task, or some task of an upstream workflow of its workflow, is
    ERROR_FATAL or BLOCKED: re-opening it would only wait forever."""
    _up, by_task, by_workflow = _failed_up()
    return or_(exists().where(*by_task), exists().where(*by_workflow))


async def release(
    conn: Conn, candidates: ColumnElement[bool], batch_size: int, *, lock: bool = True
) -> list[Released]:
    """HELD tasks matching `candidates` whose upstream is all DONE → QUEUED, each with a new
    QUEUED instance (an array's released tasks share new batches). `lock=False`: tasks this
    transaction has just inserted (nobody else can see them)."""
    held = select(TASK.c.id).where(candidates, TASK.c.status == HELD).order_by(TASK.c.id)
    if lock and dialect(conn) == "postgresql":
        held = held.with_for_update()
    ids = [int(r[0]) for r in (await conn.execute(held)).all()]
    return await _release_ids(conn, ids, batch_size)


def _downstream_held(d: str) -> Any:
    """The HELD tasks with an edge from tasks :done or in workflows :workflows, in id order
    (locked on PostgreSQL)."""
    edged = select(TASK_EDGE.c.downstream_id).where(
        ids_placeholder(TASK_EDGE.c.upstream_id, d, name="done")
    )
    stmt = (
        select(TASK.c.id)
        .where(
            TASK.c.status == HELD,
            or_(TASK.c.id.in_(edged), ids_placeholder(TASK.c.workflow_id, d, name="workflows")),
        )
        .order_by(TASK.c.id)
    )
    return stmt.with_for_update() if d == "postgresql" else stmt


async def release_downstream(
    conn: Conn, done_ids: Sequence[int], workflow_ids: Sequence[int], batch_size: int
) -> list[Released]:
    """`release` of the HELD tasks downstream of tasks `done_ids` (just DONE) and of the tasks
    of workflows `workflow_ids` (whose upstream workflows have just finished): the statements
    of the path every finished batch with downstream tasks takes, prepared."""
    d = dialect(conn)
    params = {"done": ids_value(done_ids, d), "workflows": ids_value(workflow_ids, d)}
    found = await conn.run(prepare(d, "downstream_held", lambda: _downstream_held(d)), params)
    return await _release_ids(conn, [int(r[0]) for r in found.rows], batch_size)


def _queue_ready(d: str) -> Any:
    return (
        update(TASK)
        .where(
            ids_placeholder(TASK.c.id, d),
            TASK.c.status == HELD,
            ~_upstream_pending(),
        )
        .values(status="Q", status_date=db_now(), num_attempts=TASK.c.num_attempts + 1)
        .returning(TASK.c.id, TASK.c.workflow_id, TASK.c.array_id)
    )


async def _release_ids(conn: Conn, ids: list[int], batch_size: int) -> list[Released]:
    """Those of HELD tasks `ids` (locked, on PostgreSQL) whose upstream tasks and workflows are
    all DONE → QUEUED, with their first instances. The check is a statement after the lock:
    on PostgreSQL it sees what committed while the lock waited."""
    if not ids:
        return []
    d = dialect(conn)
    prepared = prepare(d, "queue_ready", lambda: _queue_ready(d))
    ready = await conn.run(prepared, {"ids": ids_value(ids, d)})
    by_array: dict[int, list[int]] = defaultdict(list)
    workflow_of: dict[int, int] = {}
    for task_id, workflow_id, array_id in ready.rows:
        by_array[int(array_id)].append(int(task_id))
        workflow_of[int(task_id)] = int(workflow_id)
    out: list[Released] = []
    for array_id, task_ids in sorted(by_array.items()):  # arrays locked in id order
        for task_id, ti_id in await _first_instances(conn, array_id, sorted(task_ids), batch_size):
            out.append(Released(task_id, workflow_of[task_id], ti_id))
    return out


def _first_instances_stmt(d: str) -> Any:
    rank = func.row_number().over(order_by=TASK.c.id) - 1
    ranked = (
        select(
            TASK.c.id,
            TASK.c.workflow_id,
            TASK.c.resources,
            TASK.c.priority,
            rank.label("rank"),
            WORKFLOW.c.pull_timeout.is_not(None).label("pull"),
        )
        .join_from(TASK, WORKFLOW, WORKFLOW.c.id == TASK.c.workflow_id)
        .where(ids_placeholder(TASK.c.id, d))
        .subquery()
    )
    size = bindparam("batch_size", type_=BigInteger())
    sel = select(
        ranked.c.id,
        ranked.c.workflow_id,
        bindparam("array_id", type_=BigInteger()),
        bindparam("first", type_=BigInteger()) + ranked.c.rank // size,
        ranked.c.rank % size,
        literal_column("'Q'"),
        db_now(),
        ranked.c.resources,
        ranked.c.priority,
        ranked.c.pull,
    )
    return insert(TI).from_select(INSTANCE_COLUMNS, sel).returning(TI.c.task_id, TI.c.id)


async def _first_instances(
    conn: Conn, array_id: int, task_ids: list[int], batch_size: int
) -> list[tuple[int, int]]:
    """A QUEUED instance for each of `task_ids` (tasks of one array), in new batches of the
    array: one statement; (task id, instance id) pairs."""
    first = await next_batches(conn, array_id, (len(task_ids) + batch_size - 1) // batch_size)
    d = dialect(conn)
    params = {
        "ids": ids_value(task_ids, d),
        "array_id": array_id,
        "first": first,
        "batch_size": batch_size,
    }
    result = await conn.run(prepare(d, "first_instances", lambda: _first_instances_stmt(d)), params)
    return [(int(t), int(i)) for t, i in result.rows]


def release_events(released: Sequence[Released]) -> list[EventRow]:
    """The events of released tasks: the task HELD → QUEUED, its new instance QUEUED."""
    events = [EventRow(r.workflow_id, "task", r.task_id, HELD, "Q") for r in released]
    events += [
        EventRow(r.workflow_id, "task_instance", r.instance_id, None, "Q", {"released": True})
        for r in released
    ]
    return events


# ---- what finished: probes and candidates -----------------------------------------------------


def _probe(d: str) -> Any:
    by_task = exists().where(ids_placeholder(TASK_EDGE.c.upstream_id, d, name="tasks"))
    by_workflow = exists().where(
        ids_placeholder(WORKFLOW_EDGE.c.upstream_workflow_id, d, name="workflows")
    )
    return select(by_task, by_workflow)


@dataclass(frozen=True)
class Downstream:
    """Whether edges leave some tasks: task edges, workflow edges."""

    tasks: bool
    workflows: bool

    def __bool__(self) -> bool:
        return self.tasks or self.workflows


async def has_downstream(
    conn: Conn, task_ids: Sequence[int], workflow_ids: Sequence[int]
) -> Downstream:
    """Whether any edge leaves these tasks or workflows: one prepared, indexed probe (the
    usual answer, no, costs one round trip)."""
    d = dialect(conn)
    params = {"tasks": ids_value(task_ids, d), "workflows": ids_value(sorted(set(workflow_ids)), d)}
    row = (await conn.run(prepare(d, "edge_probe", lambda: _probe(d)), params)).first()
    return Downstream(bool(row and row[0]), bool(row and row[1]))


async def finished_downstream_workflows(conn: Conn, workflow_ids: Sequence[int]) -> list[int]:
    """The workflows downstream of `workflow_ids` whose upstream workflows all just finished
    (every task DONE): their tasks may be released."""
    edges = (
        await conn.execute(
            select(
                WORKFLOW_EDGE.c.downstream_workflow_id, WORKFLOW_EDGE.c.upstream_workflow_id
            ).where(WORKFLOW_EDGE.c.upstream_workflow_id.in_([int(w) for w in workflow_ids]))
        )
    ).all()
    if not edges:
        return []
    unfinished = {
        int(r[0])
        for r in (
            await conn.execute(
                select(TASK.c.workflow_id)
                .where(
                    TASK.c.workflow_id.in_(sorted({int(u) for _, u in edges})),
                    TASK.c.status.in_(NOT_DONE),
                )
                .distinct()
            )
        ).all()
    }
    return sorted({int(dn) for dn, up in edges if int(up) not in unfinished})


# ---- failures: block, and re-open on resume -----------------------------------------------------


async def spread(
    conn: Conn,
    roots: Sequence[int],
    from_status: str,
    to_status: str,
    standing_for: dict[int, int] | None = None,
) -> list[tuple[int, int, int]]:
    """Move every task in `from_status` downstream of tasks `roots` (through task edges and
    workflow edges, transitively) to `to_status`; (task id, workflow id, the root it is
    downstream of).

    BLOCKED tasks get the root in their last error ("upstream task N ended ERROR_FATAL");
    tasks re-opened to HELD get it cleared. Each round is one recursive statement over the
    task edges, then one over the workflow edges of the workflows it reached. `standing_for`:
    the failed task a root stands for (a root that is itself BLOCKED), if not itself.
    """
    d = dialect(conn)
    moved: list[tuple[int, int, int]] = []
    # task id -> the failed task it stands for
    frontier = {int(r): (standing_for or {}).get(int(r), int(r)) for r in roots}
    seen_workflows: set[int] = set()
    while frontier:
        start = (
            select(TASK_EDGE.c.downstream_id.label("id"), TASK_EDGE.c.upstream_id.label("root"))
            .where(id_in(TASK_EDGE.c.upstream_id, list(frontier), d))
            .cte("down", recursive=True)
        )
        down = start.union(
            select(TASK_EDGE.c.downstream_id, start.c.root).where(
                TASK_EDGE.c.upstream_id == start.c.id
            )
        )
        reached = select(down.c.id, func.min(down.c.root)).group_by(down.c.id)
        root_of = {int(i): frontier[int(r)] for i, r in (await conn.execute(reached)).all()}
        # the workflows of everything reached so far: their downstream workflows wait on them
        workflows = await _workflows_of(conn, [*frontier, *root_of])
        root_of_workflow: dict[int, int] = {}
        for task_id, wf in sorted(workflows.items()):
            root_of_workflow.setdefault(wf, frontier.get(task_id) or root_of[task_id])
        new = sorted(set(root_of_workflow) - seen_workflows)
        seen_workflows |= set(new)
        via: dict[int, int] = {}
        if new:
            edges = await conn.execute(
                select(
                    WORKFLOW_EDGE.c.downstream_workflow_id, WORKFLOW_EDGE.c.upstream_workflow_id
                ).where(WORKFLOW_EDGE.c.upstream_workflow_id.in_(new))
            )
            via = {int(dn): root_of_workflow[int(up)] for dn, up in edges.all()}
        frontier = {}
        if root_of:
            got = await _move(conn, TASK.c.id.in_(sorted(root_of)), from_status, to_status)
            moved += [(t, w, root_of[t]) for t, w in got]
        if via:
            got = await _move(conn, TASK.c.workflow_id.in_(sorted(via)), from_status, to_status)
            moved += [(t, w, via[w]) for t, w in got]
            frontier = {t: via[w] for t, w in got}
    if to_status == BLOCKED:
        await _name_roots(conn, moved)
    return moved


async def _name_roots(conn: Conn, moved: Sequence[tuple[int, int, int]]) -> None:
    """Write each BLOCKED task's reason: the upstream task it waits on that failed."""
    by_root: dict[int, list[int]] = defaultdict(list)
    for t, _w, r in moved:
        by_root[r].append(t)
    for r, ids in sorted(by_root.items()):
        await conn.execute(
            update(TASK)
            .where(id_in(TASK.c.id, ids, dialect(conn)))
            .values(last_error=f"upstream task {r} ended ERROR_FATAL", time_finished=db_now())
            .execution_options(synchronize_session=False)
        )


async def block_failed(conn: Conn, candidates: ColumnElement[bool]) -> list[tuple[int, int, int]]:
    """HELD tasks matching `candidates` with an upstream task (or a task of an upstream
    workflow) already ERROR_FATAL or BLOCKED → BLOCKED, and everything downstream of them
    (a new submission after a failed workflow; a task a resume held again)."""
    up, by_task, by_workflow = _failed_up()
    via_task = select(func.min(up.c.id)).where(*by_task).scalar_subquery()
    via_workflow = select(func.min(up.c.id)).where(*by_workflow).scalar_subquery()
    rows = await conn.execute(
        select(TASK.c.id, func.coalesce(via_task, via_workflow))
        .where(candidates, TASK.c.status == HELD, failed_upstream())
        .order_by(TASK.c.id)
    )
    root_of = {int(t): int(r) for t, r in rows.all()}
    if not root_of:
        return []
    # the root a BLOCKED upstream task stands for is the one its own reason names
    got = await _move(conn, TASK.c.id.in_(sorted(root_of)), HELD, BLOCKED)
    moved = [(t, w, root_of[t]) for t, w in got]
    await _name_roots(conn, moved)
    return moved + await spread(conn, [t for t, _w, _r in moved], HELD, BLOCKED, root_of)


async def _workflows_of(conn: Conn, task_ids: Sequence[int]) -> dict[int, int]:
    if not task_ids:
        return {}
    rows = await conn.execute(
        select(TASK.c.id, TASK.c.workflow_id).where(id_in(TASK.c.id, list(task_ids), dialect(conn)))
    )
    return {int(t): int(w) for t, w in rows.all()}


async def _move(
    conn: Conn, which: ColumnElement[bool], from_status: str, to_status: str
) -> list[tuple[int, int]]:
    """The tasks in `which` and `from_status` → `to_status` (locked in id order first on
    PostgreSQL); (task id, workflow id) of each.

    Re-opened (to HELD) only once nothing upstream has failed: a level at a time, since a
    BLOCKED task's upstream may be BLOCKED too and re-opened by the round before."""
    where = and_(which, TASK.c.status == from_status)
    if dialect(conn) == "postgresql":
        await conn.execute(select(TASK.c.id).where(where).order_by(TASK.c.id).with_for_update())
    values: dict[str, Any] = {"status": to_status, "status_date": db_now()}
    if to_status == HELD:
        values.update(last_error=None, time_finished=None)
        where = and_(where, ~failed_upstream())
    moved: list[tuple[int, int]] = []
    while True:
        result = await conn.execute(
            update(TASK)
            .where(where)
            .values(**values)
            .returning(TASK.c.id, TASK.c.workflow_id)
            .execution_options(synchronize_session=False)
        )
        got = [(int(t), int(w)) for t, w in result.all()]
        moved += got
        if not got or to_status != HELD:
            return sorted(moved)


async def cancel_held(conn: Conn, workflow_id: int, limit: int, by: str) -> list[int]:
    """Up to `limit` HELD tasks of a workflow → ERROR_FATAL (a cancel); their ids."""
    which = TASK.c.id.in_(
        select(TASK.c.id)
        .where(TASK.c.workflow_id == workflow_id, TASK.c.status == HELD)
        .order_by(TASK.c.id)
        .limit(limit)
    )
    moved = await _move(conn, which, HELD, "F")
    ids = [t for t, _w in moved]
    if ids:
        await conn.execute(
            update(TASK)
            .where(id_in(TASK.c.id, ids, dialect(conn)))
            .values(last_error=f"cancelled by {by}", time_finished=db_now())
            .execution_options(synchronize_session=False)
        )
    return ids


async def with_upstream(conn: Conn, workflow_id: int, task_ids: Sequence[int]) -> set[int]:
    """Those of `task_ids` (tasks of `workflow_id`) that have an upstream task or workflow."""
    has_workflows = (
        await conn.execute(
            select(literal(1)).where(WORKFLOW_EDGE.c.downstream_workflow_id == workflow_id)
        )
    ).first()
    if has_workflows:
        return set(task_ids)
    rows = await conn.execute(
        select(TASK_EDGE.c.downstream_id)
        .where(id_in(TASK_EDGE.c.downstream_id, list(task_ids), dialect(conn)))
        .distinct()
    )
    return {int(r[0]) for r in rows.all()}


# ---- reading ------------------------------------------------------------------------------------


async def upstream_of(conn: Conn, task_id: int, limit: int = 10) -> dict[str, Any]:
    """A task's upstream: its upstream tasks not DONE (first `limit`, with statuses), how
    many there are in all and how many are DONE; its workflow's upstream workflows with their
    unfinished counts."""
    up = TASK.alias("up")
    base = (
        select(up.c.id, up.c.name, up.c.status, up.c.workflow_id)
        .join_from(TASK_EDGE, up, up.c.id == TASK_EDGE.c.upstream_id)
        .where(TASK_EDGE.c.downstream_id == task_id)
    )
    pending = (
        await conn.execute(base.where(up.c.status != "D").order_by(up.c.id).limit(limit))
    ).all()
    counts = (
        await conn.execute(
            select(func.count(), func.sum(case((up.c.status == "D", 1), else_=0)))
            .select_from(TASK_EDGE)
            .join(up, up.c.id == TASK_EDGE.c.upstream_id)
            .where(TASK_EDGE.c.downstream_id == task_id)
        )
    ).one()
    workflow_id = (
        await conn.execute(select(TASK.c.workflow_id).where(TASK.c.id == task_id))
    ).scalar_one()
    wf_rows = (
        await conn.execute(
            select(
                WORKFLOW_EDGE.c.upstream_workflow_id,
                select(func.count())
                .where(
                    TASK.c.workflow_id == WORKFLOW_EDGE.c.upstream_workflow_id,
                    TASK.c.status != "D",
                )
                .scalar_subquery(),
            ).where(WORKFLOW_EDGE.c.downstream_workflow_id == workflow_id)
        )
    ).all()
    return {
        "tasks": [
            {"id": int(i), "name": n, "status": s, "workflow_id": int(w)} for i, n, s, w in pending
        ],
        "total": int(counts[0] or 0),
        "done": int(counts[1] or 0),
        "workflows": [{"id": int(w), "unfinished": int(n)} for w, n in wf_rows],
    }


async def task_names(conn: Conn, workflow_id: int) -> dict[str, int]:
    """A workflow's tasks by name (the first of each name)."""
    rows = await conn.execute(
        select(TASK.c.name, func.min(TASK.c.id))
        .where(TASK.c.workflow_id == workflow_id)
        .group_by(TASK.c.name)
    )
    return {str(n): int(i) for n, i in rows.all()}
