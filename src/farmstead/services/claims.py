"""Claims: a puller (the local executor, or any distributor) takes QUEUED instances to run."""

import time
from collections import defaultdict
from collections.abc import Sequence
from functools import cache
from typing import Any, cast

from farmstead.db.engine import Conn, Database
from farmstead.fsm import Apply, Decision, TaskStatus, TIStatus
from farmstead.fsm.shares import quotas
from farmstead.metrics import EVENTS_WRITTEN, TRANSITIONS
from farmstead.services import queues
from farmstead.services.bulk import decide_for
from farmstead.services.errors import NotFound
from farmstead.services.uow import in_transaction
from farmstead.store import claims as store
from farmstead.store import scheduling as store_scheduling
from farmstead.store.claims import Claimable, ClaimMoves
from farmstead.store.scheduling import ArrayLoad

_DETAILS = {"by": "claim"}
_ANSWER = ("task_instance_id", "task_id", "workflow_id", "array_id", "array_batch_num",
           "array_step_id")  # fmt: skip


def _claimable(move: Decision) -> Apply | None:
    """The move, if it moves the instance; a claim never errs nor retries (no error log, no
    new instance to queue), so any other kind of move is a bug."""
    if not isinstance(move, Apply):  # e.g. its task is settled: the instance stays QUEUED
        return None
    if move.retry or move.ti_to != TIStatus.INSTANTIATED:
        raise RuntimeError(f"a claim cannot apply {move}")
    return move


def _count(move: Apply, n: int) -> None:
    """Count `n` claims' moves and events (Prometheus): the claim writes its events in SQL."""
    if not n:
        return
    TRANSITIONS.labels("task_instance", move.ti_from.value, move.ti_to.value).inc(n)
    prev = move.task_from
    for step in move.task_path:
        TRANSITIONS.labels("task", prev.value, step.value).inc(n)
        prev = step
    EVENTS_WRITTEN.inc(n * (1 + len(move.task_path)))


@cache
def claim_moves() -> ClaimMoves:
    """The decision function's answer for a QUEUED instance, by its task's status, as a table.

    Asking for INSTANTIATED, the answer depends on the two statuses only (tries count for
    error reports alone): checked here with no tries and with every try used.
    """
    moves = ClaimMoves([], [], [], [], [], [])
    for task in TaskStatus:
        move = _claimable(decide_for("Q", task.value, TIStatus.INSTANTIATED, 0, 3, False))
        if move != _claimable(decide_for("Q", task.value, TIStatus.INSTANTIATED, 3, 3, False)):
            raise RuntimeError(f"a claim's move from task status {task} depends on its tries")
        if move is None:
            continue
        moves.task_from.append(task.value)
        moves.task_to.append(move.task_to.value)
        prev = task
        for k, step in enumerate(move.task_path, 1):
            moves.step_of.append(task.value)
            moves.step_from.append(prev.value)
            moves.step_to.append(step.value)
            moves.step_k.append(k)
            prev = step
    return moves


#: a claim's move for a task that is QUEUED (what nearly every claim is)
_USUAL = cast(Apply, decide_for("Q", "Q", TIStatus.INSTANTIATED, 0, 1, False))

#: another agent seen within this many seconds could take a retry its try failed on here
OTHER_AGENTS_WITHIN = 60.0
#: an agent's last-seen time is written at most this often (claims count as heartbeats)
SEEN_EVERY = queues.SEEN_EVERY


async def claim(
    db: Database,
    limit: int,
    workflow_id: int | None,
    pull: bool = False,
    agent: int | None = None,
) -> list[dict[str, Any]]:
    """Up to `limit` available QUEUED instances → INSTANTIATED, for `agent` (if given).

    Which workflows they come from follows the queue rules (fsm.shares: minimums, priority,
    weights, maximums), then each workflow's own priority order; arrays at their concurrency
    limit give none. `workflow_id`: only from that workflow (the queue maximums still hold).
    `pull`: claim a pull-based run's instances (taskfarm's face, with its `workflow_id`);
    farmstead's own executors never do."""
    if pull:
        assert workflow_id is not None
        if not db.is_sqlite:  # one statement, atomic on its own: no BEGIN, no COMMIT

            async def one(conn: Conn) -> list[dict[str, Any]]:
                return await claim_in(conn, False, limit, workflow_id, pull, agent=agent)

            return await in_transaction(db, one, single=True)
        return await in_transaction(
            db, lambda c: claim_in(c, True, limit, workflow_id, pull, agent=agent)
        )
    avoid = await _avoid(db, agent)
    if db.is_sqlite:  # one writer: the plan and the claims in one transaction
        got = await in_transaction(db, lambda c: _fair(c, None, limit, workflow_id, agent, avoid))
    else:
        got = await _fair(None, db, limit, workflow_id, agent, avoid)
    if agent is not None:
        await _seen(db, agent, bool(got))
    return sorted(got, key=lambda r: r["task_instance_id"])


async def _fair(
    conn: Conn | None,
    db: Database | None,
    limit: int,
    only: int | None,
    agent: int | None,
    avoid: int | None,
) -> list[dict[str, Any]]:
    """Plan by the queue rules from the counters, then claim from each chosen workflow; a
    workflow that gives fewer than planned (held retries, instances locked by others) is
    passed over in the next round. On SQLite `conn` holds the writer's lock throughout; on
    PostgreSQL (`db`) each workflow's claim is a transaction of its own that first takes the
    locks its limits need and re-reads the counters."""
    got: list[dict[str, Any]] = []
    dry: set[int] = set()
    for _ in range(8):
        if conn is not None:
            farm = await queues.read_farm(conn, only=only)
        else:
            assert db is not None
            # a plan: its two reads need not be one snapshot (each claim re-checks its limits)
            farm = await in_transaction(
                db, lambda c: queues.read_farm(c, only=only), write=False, single=True
            )
        for wf in dry:
            if wf in farm.workflows:
                farm.workflows[wf].claimable = 0
        farm.root.total()
        plan = quotas(farm.root, limit - len(got))
        if not plan:
            break
        short = False
        for wf, k in sorted(plan.items()):
            if conn is not None:
                rows = await _take(conn, True, wf, k, farm.arrays[wf], agent, avoid)
            else:
                assert db is not None
                try:
                    rows = await in_transaction(db, _locked_take(farm, wf, k, agent, avoid))
                except _Overshoot:
                    rows = []
            got += rows
            if len(rows) < k:
                dry.add(wf)
                short = True
        if len(got) >= limit or not short:  # served, or nothing more to be had
            break
    return got


class _Overshoot(Exception):
    """A claim that would pass an array's or its workflow's limit: rolled back."""


def _locked_take(farm: queues.Farm, wf: int, k: int, agent: int | None, avoid: int | None) -> Any:
    """PostgreSQL: with a queue maximum on the workflow's path, hold those queues and its
    counters (claims that could pass a limit together take turns), re-read them, claim within
    them; with none, claim first and check its own limits after."""
    path = farm.path(farm.workflows[wf])
    capped = [n.key[1] for n in path[1:-1] if n.maximum is not None]
    arrays = farm.arrays[wf]
    most = arrays[0].maximum if arrays else None
    # its own maximum over several arrays: another claim could add on an array this one does
    # not lock; so it takes turns like a capped queue
    optimistic = not capped and (most is None or len(arrays) == 1)

    async def work(conn: Conn) -> list[dict[str, Any]]:
        if optimistic:
            # Only its own limits: claim at once, then check its counters, which the claim's
            # own counter update holds locked to the end of this transaction (so every other
            # claim's is counted): over a limit, roll back (the workflow is dry this round).
            # Claims on one array wait for each other only from their claim to their commit.
            cap = k if most is None else min(k, most - sum(a.assigned for a in arrays))
            rows = await _take(conn, False, wf, cap, arrays, agent, avoid) if cap > 0 else []
            if rows:
                now = await store_scheduling.load(conn, wf)
                over = any(a.assigned > a.max_running for a in now)
                if most is not None and sum(a.assigned for a in now) > most:
                    over = True
                if over:
                    raise _Overshoot
            return rows
        await store_scheduling.lock_for_claim(conn, capped, wf)
        # the whole tree: a queue's maximum counts other workflows' agents
        fresh = await queues.read_farm(conn, only=wf)
        leaf = fresh.workflows.get(wf)
        if leaf is None:
            return []
        nodes = fresh.path(leaf)[1:]
        cap = min([k] + [n.maximum - n.assigned for n in nodes if n.maximum is not None])
        if cap <= 0:
            return []
        return await _take(conn, False, wf, cap, fresh.arrays[wf], agent, avoid)

    return work


async def _take(
    conn: Conn,
    sqlite: bool,
    wf: int,
    k: int,
    arrays: list[ArrayLoad],
    agent: int | None,
    avoid: int | None,
) -> list[dict[str, Any]]:
    """Claim up to `k` instances of workflow `wf` in its priority order, never taking an
    array past its concurrency limit."""
    left = queues.room(arrays)
    queued = {a.array_id: a.queued for a in arrays}
    got: list[dict[str, Any]] = []
    while len(got) < k:
        open_ = [r for a, r in left.items() if r > 0 and queued.get(a, 0) > 0]
        if not open_:
            break
        n = min(k - len(got), *open_)
        full = sorted(a for a, r in left.items() if r <= 0)
        rows = await claim_in(conn, sqlite, n, wf, full=full, avoid=avoid, agent=agent)
        for r in rows:
            left[r["array_id"]] -= 1
            queued[r["array_id"]] -= 1
        got += rows
        if len(rows) < n:
            break
    return got


async def _avoid(db: Database, agent: int | None) -> int | None:
    """The agent whose failed retries a claim passes over: `agent`, if another agent was seen
    lately (else it takes them: nobody else would); cached a few seconds per process."""
    if agent is None:
        return None
    key = ("agent_others", agent)
    now = time.monotonic()
    known = db.memo.get(key)
    if known is None or now - known[0] > SEEN_EVERY:

        async def others(conn: Conn) -> int:
            if await store_scheduling.agent(conn, agent) is None:
                raise NotFound(f"no agent {agent}: register with POST /v3/agents")
            return await store_scheduling.others_live(conn, agent, OTHER_AGENTS_WITHIN)

        n = await in_transaction(db, others, write=False)
        known = db.memo[key] = (now, n > 0)
    return agent if known[1] else None


async def _seen(db: Database, agent: int, claimed: bool) -> None:
    """Record the agent's claim as its heartbeat (at most every few seconds)."""
    key = ("agent_seen", agent)
    now = time.monotonic()
    if now - db.memo.get(key, -SEEN_EVERY) < SEEN_EVERY:
        return
    db.memo[key] = now
    await in_transaction(db, lambda c: queues.agent_seen(c, agent, claimed))


async def claim_in(
    conn: Conn,
    sqlite: bool,
    limit: int,
    workflow_id: int | None,
    pull: bool = False,
    full: Sequence[int] = (),
    avoid: int | None = None,
    agent: int | None = None,
) -> list[dict[str, Any]]:
    """`claim` on a connection (in a transaction the caller opened, or none on PostgreSQL):
    the moved instances, by id; arrays in `full` give none."""
    if not sqlite:
        rows = await store.claim_pg(
            conn, claim_moves(), workflow_id, limit, _DETAILS, pull, full, avoid, agent
        )
        _count(_USUAL, len(rows))  # (a task in another status moves otherwise: rare)
        return [dict(zip(_ANSWER, r, strict=True)) for r in rows]  # by instance id
    groups: dict[Apply, list[Claimable]] = defaultdict(list)
    for c in await store.candidates(conn, workflow_id, limit, pull, full, avoid):
        asked = (c.ti_status, c.task_status, TIStatus.INSTANTIATED)
        move = _claimable(decide_for(*asked, c.tries, c.max_attempts, c.cancelled))
        if move is not None:
            groups[move].append(c)
    for move, members in groups.items():
        await store.apply_claim(conn, move, members, _DETAILS, agent)
        _count(move, len(members))
    moved = sorted(c for members in groups.values() for c in members)  # by instance id
    return [
        dict(zip(_ANSWER, (c.ti_id, c.task_id, c.workflow_id, *c[-3:]), strict=True)) for c in moved
    ]
