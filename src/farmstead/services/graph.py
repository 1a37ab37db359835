"""Dependencies (Jobmon's DAG, PyFarm's parent jobs): checking a submission's edges, and what a
finished batch of tasks does downstream.

- A task with an upstream task not DONE is HELD (no instance). When its last upstream task
  is DONE it is released: QUEUED, with its first instance, in the transaction of that DONE.
- When a task ends ERROR_FATAL, every HELD task downstream of it (transitively, through task
  and workflow edges) becomes BLOCKED, naming it; the rest of the graph goes on, and a workflow
  whose tasks are all DONE, ERROR_FATAL or BLOCKED is FAILED.
- A resume re-opens the BLOCKED tasks downstream of what it resumes (they are HELD again).
"""

from collections.abc import Sequence

from farmstead.db.engine import Conn
from farmstead.schemas import TaskSpec, WorkflowDep
from farmstead.services.errors import BadRequest
from farmstead.store import graph as store
from farmstead.store.rows import EventRow

#: instances released by one finished batch share new batches of this size (as a submission's)
RELEASE_BATCH = 1000
#: names and edges shown in an error, at most
SHOWN = 10


def check_names(tasks: Sequence[TaskSpec]) -> list[tuple[int, int]]:
    """The edges of a list of tasks as (downstream index, upstream index); a 422 naming the
    unknown names, the ambiguous ones, or a cycle."""
    index: dict[str, int] = {}
    twice: set[str] = set()
    for i, t in enumerate(tasks):
        if t.name in index:
            twice.add(t.name)
        index.setdefault(t.name, i)
    edges: list[tuple[int, int]] = []
    unknown: list[str] = []
    ambiguous: set[str] = set()
    for i, t in enumerate(tasks):
        for name in dict.fromkeys(t.depends_on or ()):  # a name given twice is one edge
            if name not in index:
                unknown.append(f"{t.name!r} depends on unknown task {name!r}")
            elif name in twice:
                ambiguous.add(name)
            else:
                edges.append((i, index[name]))
    if unknown:
        raise BadRequest(
            _listed("unknown task names", unknown), field="tasks", unknown=unknown[:SHOWN]
        )
    if ambiguous:
        names = sorted(ambiguous)
        raise BadRequest(
            _listed("depends_on names a name that several tasks have", [repr(n) for n in names]),
            field="tasks",
            ambiguous=names[:SHOWN],
        )
    cycle = find_cycle(len(tasks), edges)
    if cycle:
        path = [tasks[i].name for i in cycle]
        raise BadRequest(
            "the dependencies have a cycle: " + " → ".join(repr(n) for n in path),
            field="tasks",
            cycle=path,
        )
    return edges


def _listed(what: str, items: Sequence[str]) -> str:
    more = f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"{what}: " + "; ".join(items[:SHOWN]) + more


def find_cycle(n: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """A cycle among nodes 0..n-1 of (downstream, upstream) edges, as its nodes from one back
    to itself (each depends on the next); [] if there is none. Iterative: no recursion limit."""
    upstream: list[list[int]] = [[] for _ in range(n)]
    for down, up in edges:
        upstream[down].append(up)
    state = [0] * n  # 0 new, 1 on the path, 2 finished
    for root in range(n):
        if state[root]:
            continue
        path: list[int] = [root]
        nexts = [iter(upstream[root])]
        state[root] = 1
        while path:
            nxt = next(nexts[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                nexts.pop()
            elif state[nxt] == 1:
                return [*path[path.index(nxt) :], nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                nexts.append(iter(upstream[nxt]))
    return []


async def check_workflows(conn: Conn, deps: Sequence[WorkflowDep], size: int) -> None:
    """A 422 naming upstream workflows that do not exist, or an element-wise one whose size
    differs from the submission's."""
    sizes = await store.workflow_sizes(conn, [d.workflow for d in deps])
    missing = [d.workflow for d in deps if d.workflow not in sizes]
    if missing:
        raise BadRequest(
            f"depends_on names workflows that do not exist: {missing[:SHOWN]}",
            field="depends_on",
            unknown=missing[:SHOWN],
        )
    for d in deps:
        if d.mode == "each" and sizes[d.workflow] != size:
            raise BadRequest(
                f"depends_on workflow {d.workflow} element by element: it has "
                f"{sizes[d.workflow]} tasks and this submission {size}",
                field="depends_on",
                workflow=d.workflow,
            )


async def after_moves(
    conn: Conn,
    done: Sequence[tuple[int, int]],
    failed: Sequence[tuple[int, int]],
    events: list[EventRow],
) -> None:
    """What tasks that have just become DONE or ERROR_FATAL ((task id, workflow id) pairs)
    do downstream, in the same transaction: release, or block. One probe when they have no
    downstream (the usual case)."""
    tasks = [t for t, _ in (*done, *failed)]
    workflows = sorted({w for _, w in (*done, *failed)})
    edges = await store.has_downstream(conn, tasks, workflows)
    if not edges:
        return
    if failed:
        events += blocked_events(await store.spread(conn, [t for t, _ in failed], "H", "B"))
    if done:
        finished: list[int] = []
        if edges.workflows:
            finished = await store.finished_downstream_workflows(conn, sorted({w for _, w in done}))
        released = await store.release_downstream(
            conn, [t for t, _ in done], finished, RELEASE_BATCH
        )
        events += store.release_events(released)


def blocked_events(moved: Sequence[tuple[int, int, int]]) -> list[EventRow]:
    """The events of tasks BLOCKED by the failure of an upstream task."""
    return [EventRow(w, "task", t, "H", "B", {"upstream": r}) for t, w, r in moved]


def reopened_events(moved: Sequence[tuple[int, int, int]], by: str) -> list[EventRow]:
    """The events of BLOCKED tasks a resume re-opened (HELD again)."""
    return [
        EventRow(w, "task", t, "B", "H", {"by": by, "action": "resume", "upstream": r})
        for t, w, r in moved
    ]
