"""Fair share: which workflow the next free agent works for (PyFarm's queue rules). Pure.

The farm is a tree: queues hold queues and workflows; every node has a `priority` (higher
first), a `weight` (share of agents among siblings), and optional `minimum` / `maximum` agents.
A node's `assigned` is the number of agents (claimed instances) working below it, its
`claimable` the number of QUEUED instances below it that a claim may take. From the root down:

1. a child below its minimum (and with work) is served first, the furthest below it first;
2. otherwise only the children of the highest priority level that has work are considered;
3. among those, the child with the lowest (share of the level's assigned agents) / (share of
   the level's weight) is served: agents spread in proportion to weight (ties: oldest first);
4. a child at its maximum is never given more (nor is anything below it); queues recurse.

`quotas` hands out `n` agents one by one, counting each as assigned at once, so one claim of
many slots spreads them as many claims of one would.
"""

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Node:
    """A queue (with `children`) or a workflow (a leaf, `workflow_id` set)."""

    key: tuple[str, int]  # ("queue", id) or ("workflow", id); orders ties (older first)
    priority: int = 0
    weight: float = 10.0
    minimum: int | None = None
    maximum: int | None = None
    assigned: int = 0
    claimable: int = 0
    #: QUEUED instances below it, claimable or not (what an operator sees)
    queued: int = 0
    #: most more agents the node itself may take now (e.g. its arrays' concurrency limits)
    room: int | None = None
    children: list["Node"] = field(default_factory=list)

    def total(self) -> None:
        """Sum the queues' `assigned`, `claimable` and `queued` from their leaves."""
        for child in self.children:
            child.total()
        if self.children:
            self.assigned = sum(c.assigned for c in self.children)
            self.claimable = sum(c.claimable for c in self.children)
            self.queued = sum(c.queued for c in self.children)

    @property
    def leaf(self) -> bool:
        """A workflow (the agents work for it), not a queue."""
        return self.key[0] == "workflow"

    def full(self) -> bool:
        """At its maximum (or its own room is used up): it takes no more agents."""
        if self.maximum is not None and self.assigned >= self.maximum:
            return True
        return self.room is not None and self.room <= 0


def _ratio(child: Node, weights: float, assigned: int) -> float:
    """The child's share of its level's agents over its share of the level's weight."""
    if assigned == 0:
        return 0.0
    if weights <= 0 or child.weight <= 0:
        return float("inf") if child.assigned else 0.0
    return (child.assigned / assigned) / (child.weight / weights)


def choose(children: list[Node]) -> Node | None:
    """The child the next agent goes to, by the rules above (None: none can take one)."""
    open_ = [c for c in children if c.claimable > 0 and not c.full()]
    if not open_:
        return None
    below = [c for c in open_ if c.minimum is not None and c.assigned < c.minimum]
    if below:  # furthest below its minimum first, then priority, then the oldest
        return min(below, key=lambda c: (c.assigned - (c.minimum or 0), -c.priority, c.key))
    top = max(c.priority for c in open_)
    level = [c for c in children if c.priority == top]  # shares among the whole level
    weights = sum(c.weight for c in level)
    assigned = sum(c.assigned for c in level)
    return min(
        (c for c in open_ if c.priority == top),
        key=lambda c: (_ratio(c, weights, assigned), c.key),
    )


def pick(root: Node) -> list[Node] | None:
    """The path from `root` to the workflow the next agent goes to, or None if no workflow
    can take one. A queue whose subtree cannot take one after all is passed over."""
    if root.leaf:
        return [root] if root.claimable > 0 and not root.full() else None
    tried: set[tuple[str, int]] = set()
    while True:
        child = choose([c for c in root.children if c.key not in tried])
        if child is None:
            return None
        below = pick(child)
        if below is not None:
            return [root, *below]
        tried.add(child.key)


def quotas(root: Node, n: int) -> Counter[int]:
    """How many of `n` free agents go to each workflow (by id), one agent at a time; each one
    handed out counts as assigned at once (and takes one claimable)."""
    out: Counter[int] = Counter()
    for _ in range(n):
        path = pick(root)
        if path is None:
            break
        for node in path:
            node.assigned += 1
            node.claimable -= 1
            if node.room is not None:
                node.room -= 1
        out[path[-1].key[1]] += 1
    return out
