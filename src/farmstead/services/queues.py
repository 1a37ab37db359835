"""Queues (PyFarm's job queues) and agents: the farm's tree, its admin, and its counts."""

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from farmstead import __version__
from farmstead.db.engine import Conn, Database
from farmstead.fsm.celery import AGENT_HEARTBEAT, AGENT_OFFLINE, AGENT_ONLINE
from farmstead.fsm.shares import Node
from farmstead.services.auth import Principal
from farmstead.services.errors import BadRequest, Conflict, NotFound
from farmstead.services.uow import in_transaction
from farmstead.store import scheduling as store
from farmstead.store.rows import EventRow
from farmstead.store.scheduling import ArrayLoad
from farmstead.store.sql import insert_events

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KNOBS = ("priority", "weight", "minimum_agents", "maximum_agents")


@dataclass
class Farm:
    """The tree for one decision: the root, every queue's node (by id) and every active
    workflow's leaf (by id), with its arrays' counters."""

    root: Node
    queues: dict[int, Node]
    workflows: dict[int, Node]
    arrays: dict[int, list[ArrayLoad]]
    parents: dict[tuple[str, int], Node]
    rows: dict[int, dict[str, Any]]

    def path(self, node: Node) -> list[Node]:
        """The nodes from the root down to `node`."""
        out = [node]
        while node.key in self.parents:
            node = self.parents[node.key]
            out.append(node)
        return out[::-1]


def room(arrays: list[ArrayLoad]) -> dict[int, int]:
    """Per array: how many more of its instances may hold an agent (its concurrency limit)."""
    return {a.array_id: a.max_running - a.assigned for a in arrays}


def build(load: list[ArrayLoad], queues: list[dict[str, Any]], only: int | None = None) -> Farm:
    """The tree of queues and active workflows. A pull-based run's leaf (taskfarm's: only its
    own workers claim it), or with `only` any other workflow's, has nothing claimable, but its
    agents count for its queues."""
    root = Node(("queue", 0))
    nodes = {
        q["id"]: Node(
            ("queue", q["id"]),
            q["priority"],
            q["weight"],
            q["minimum_agents"],
            q["maximum_agents"],
        )
        for q in queues
    }
    parents: dict[tuple[str, int], Node] = {}
    for q in queues:
        parent = nodes.get(q["parent_id"], root) if q["parent_id"] is not None else root
        parent.children.append(nodes[q["id"]])
        parents[("queue", q["id"])] = parent
    by_workflow: dict[int, list[ArrayLoad]] = defaultdict(list)
    for a in load:
        by_workflow[a.workflow_id].append(a)
    leaves: dict[int, Node] = {}
    for wf, arrays in by_workflow.items():
        first = arrays[0]
        claimable = 0
        if not first.pull and only in (None, wf):
            left = room(arrays)
            claimable = sum(min(a.queued, max(0, left[a.array_id])) for a in arrays)
        leaf = Node(
            ("workflow", wf),
            first.priority,
            first.weight,
            first.minimum,
            first.maximum,
            assigned=sum(a.assigned for a in arrays),
            claimable=claimable,
            queued=sum(a.queued for a in arrays),
        )
        parent = nodes.get(first.queue_id, root) if first.queue_id is not None else root
        parent.children.append(leaf)
        parents[leaf.key] = parent
        leaves[wf] = leaf
    root.total()
    return Farm(root, nodes, leaves, dict(by_workflow), parents, {q["id"]: q for q in queues})


async def read_farm(conn: Conn, of: int | None = None, only: int | None = None) -> Farm:
    """The tree as the database has it now: two reads (the queues, the active arrays; with
    `of`, only that workflow's arrays). `only`: the one workflow a claim may take from."""
    return build(await store.load(conn, of), await store.queues(conn), only)


# --- admin -----------------------------------------------------------------------------------


def split_path(path: str) -> list[str]:
    """`/render/film-a` → ["render", "film-a"]; a bad path is a 422 naming it."""
    if not path.startswith("/"):
        raise BadRequest(f"queue path {path!r}: it starts with / (e.g. /render/film-a)")
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if not _NAME.fullmatch(part):
            raise BadRequest(
                f"queue name {part!r}: letters, digits, '.', '_' or '-', starting with a letter "
                "or digit, at most 64 characters"
            )
    if len("/" + "/".join(parts)) > 1024:
        raise BadRequest("a queue path is at most 1,024 characters")
    return parts


def norm(path: str) -> str:
    """The canonical spelling of a queue path (`/` is the root)."""
    return "/" + "/".join(split_path(path))


async def queue_id_of(conn: Conn, path: str | None) -> int | None:
    """The id of the queue at `path` (None: the root); 404 if there is none."""
    if path is None or norm(path) == "/":
        return None
    row = await store.queue_by_path(conn, norm(path))
    if row is None:
        raise NotFound(f"no queue {norm(path)} (create it: farmstead queues create {norm(path)})")
    return int(row["id"])


def _check_knobs(values: dict[str, Any]) -> None:
    low, high = values.get("minimum_agents"), values.get("maximum_agents")
    if low is not None and high is not None and low > high:
        raise BadRequest(f"minimum_agents ({low}) is above maximum_agents ({high})")


async def create_queue(
    db: Database, path: str, knobs: dict[str, Any], who: Principal
) -> dict[str, Any]:
    """A new queue at `path`; its parent must exist (or be the root)."""
    parts = split_path(path)
    if not parts:
        raise BadRequest("the root queue / always exists")
    _check_knobs(knobs)

    async def work(conn: Conn) -> dict[str, Any]:
        parent = await queue_id_of(conn, "/" + "/".join(parts[:-1]))
        full = "/" + "/".join(parts)
        if await store.queue_by_path(conn, full) is not None:
            raise Conflict(f"queue {full} exists already")
        await store.insert_queue(
            conn, {"parent_id": parent, "name": parts[-1], "path": full, **knobs}
        )
        return await _one(conn, full)

    return await in_transaction(db, work)


async def _one(conn: Conn, path: str) -> dict[str, Any]:
    row = await store.queue_by_path(conn, path)
    if row is None:
        raise NotFound(f"no queue {path}")
    farm = await read_farm(conn)
    return view(farm, row)


def view(farm: Farm, row: dict[str, Any]) -> dict[str, Any]:
    """A queue as the API shows it: its knobs, its agents and its QUEUED work right now."""
    node = farm.queues[row["id"]]
    return {
        **{k: row[k] for k in ("id", "name", "path", *KNOBS)},
        "parent": None if row["parent_id"] is None else farm.rows[row["parent_id"]]["path"],
        "agents": node.assigned,
        "queued": node.queued,
        "workflows": sorted(c.key[1] for c in node.children if c.leaf),
    }


async def list_queues(db: Database) -> list[dict[str, Any]]:
    """Every queue with its counts (agents, QUEUED instances), by path."""

    async def work(conn: Conn) -> list[dict[str, Any]]:
        farm = await read_farm(conn)
        return sorted((view(farm, q) for q in farm.rows.values()), key=lambda q: q["path"])

    return await in_transaction(db, work, write=False)


async def get_queue(db: Database, path: str) -> dict[str, Any]:
    return await in_transaction(db, lambda c: _one(c, norm(path)), write=False)


async def change_queue(
    db: Database, path: str, knobs: dict[str, Any], move_to: str | None, who: Principal
) -> dict[str, Any]:
    """Change a queue's knobs (only those given), and/or move it under another parent (its
    subtree moves with it; never into itself)."""

    async def work(conn: Conn) -> dict[str, Any]:
        row = await store.queue_by_path(conn, norm(path))
        if row is None:
            raise NotFound(f"no queue {norm(path)}")
        merged = {**{k: row[k] for k in KNOBS}, **knobs}
        _check_knobs(merged)
        values: dict[str, Any] = dict(knobs)
        new_path = row["path"]
        if move_to is not None:
            parent_path = norm(move_to)
            if parent_path == row["path"] or parent_path.startswith(row["path"] + "/"):
                raise BadRequest(f"cannot move {row['path']} into itself ({parent_path})")
            values["parent_id"] = await queue_id_of(conn, parent_path)
            new_path = parent_path.rstrip("/") + "/" + row["name"]
            if new_path != row["path"] and await store.queue_by_path(conn, new_path):
                raise Conflict(f"queue {new_path} exists already")
            values["path"] = new_path
        if values:
            await store.update_queue(conn, row["id"], values)
        if new_path != row["path"]:
            await store.repath(conn, row["path"], new_path)
        return await _one(conn, new_path)

    return await in_transaction(db, work)


async def delete_queue(db: Database, path: str, who: Principal) -> None:
    """Delete an empty queue (no child queue, no workflow)."""

    async def work(conn: Conn) -> None:
        row = await store.queue_by_path(conn, norm(path))
        if row is None:
            raise NotFound(f"no queue {norm(path)}")
        children, flows = await store.queue_in_use(conn, row["id"])
        if children or flows:
            raise Conflict(
                f"queue {row['path']} holds {children} queue(s) and {flows} workflow(s): "
                "move or delete them first"
            )
        await store.delete_queue(conn, row["id"])

    await in_transaction(db, work)


async def set_workflow(
    db: Database, workflow_id: int, knobs: dict[str, Any], queue: str | None
) -> None:
    """Move a workflow to another queue and/or change its knobs."""

    async def work(conn: Conn) -> None:
        values = dict(knobs)
        if queue is not None:
            values["queue_id"] = await queue_id_of(conn, queue)
        if values:
            await store.set_workflow_knobs(conn, workflow_id, values)

    await in_transaction(db, work)


# --- agents ----------------------------------------------------------------------------------


#: how often a busy agent's heartbeat is written (its claims count as heartbeats)
SEEN_EVERY = 5.0


def agent_event(agent: dict[str, Any], letter: str, **extra: Any) -> EventRow:
    """An agent's worker-* event row (workflow 0: not any workflow's), with Celery's fields."""
    details = {
        "hostname": agent.get("hostname"),
        "name": agent.get("name"),
        "kind": agent.get("kind"),
        "pid": agent.get("pid"),
        "slots": agent.get("slots"),
        "freq": SEEN_EVERY,
        "sw_ident": "farmstead",
        "sw_ver": __version__,
        **extra,
    }
    return EventRow(0, "agent", int(agent["id"]), None, letter, details)


async def register_agent(
    db: Database, name: str, hostname: str, kind: str, pid: int | None, slots: int, who: Principal
) -> dict[str, Any]:
    """A new agent (a claimer); its id goes with its claims. Its worker-online event."""

    async def work(conn: Conn) -> dict[str, Any]:
        agent_id = await store.insert_agent(
            conn,
            {
                "name": name,
                "hostname": hostname,
                "kind": kind,
                "pid": pid,
                "slots": slots,
                "identity": who.identity,
            },
        )
        agent = await store.agent(conn, agent_id) or {}
        await insert_events(conn, [agent_event(agent, AGENT_ONLINE)])
        return agent

    return await in_transaction(db, work)


async def agent_seen(conn: Conn, agent_id: int, claimed: bool = False) -> bool:
    """An agent's heartbeat: its worker-heartbeat event, or worker-online if it had been
    declared offline. False if there is no such agent."""
    agent = await store.seen(conn, agent_id, claimed)
    if agent is None:
        return False
    letter = AGENT_ONLINE if await store.back_online(conn, agent_id) else AGENT_HEARTBEAT
    await insert_events(conn, [agent_event(agent, letter)])
    return True


async def agent_heartbeat(db: Database, agent_id: int) -> None:
    async def work(conn: Conn) -> None:
        if not await agent_seen(conn, agent_id):
            raise NotFound(f"no agent {agent_id}")

    await in_transaction(db, work)


async def mark_agents_offline(db: Database, silent_for: float, chunk: int) -> int:
    """Declare agents silent for `silent_for` seconds offline (worker-offline); how many."""

    async def work(conn: Conn) -> int:
        gone = await store.mark_offline(conn, silent_for, chunk)
        await insert_events(conn, [agent_event(a, AGENT_OFFLINE) for a in gone])
        return len(gone)

    total = 0
    while n := await in_transaction(db, work):
        total += n
        if n < chunk:
            break
    return total


async def list_agents(db: Database, seen_within: float | None) -> list[dict[str, Any]]:
    return await in_transaction(db, lambda c: store.agents(c, seen_within), write=False)
