"""The queue rules (fsm/shares.py), each alone, then together: PyFarm's choice of work."""

from farmstead.fsm.shares import Node, choose, pick, quotas


def wf(i: int, **kw: object) -> Node:
    kw.setdefault("claimable", 100)
    return Node(("workflow", i), **kw)  # type: ignore[arg-type]


def queue(i: int, *children: Node, **kw: object) -> Node:
    return Node(("queue", i), children=list(children), **kw)  # type: ignore[arg-type]


def tree(*children: Node) -> Node:
    root = queue(0, *children)
    root.total()
    return root


def test_a_child_below_its_minimum_is_served_first_whatever_its_priority() -> None:
    low = wf(1, priority=0, minimum=2, assigned=1)
    high = wf(2, priority=9)
    assert choose([high, low]) is low
    low.assigned = 2  # minimum reached: priority rules again
    assert choose([high, low]) is high


def test_the_furthest_below_its_minimum_goes_first() -> None:
    a = wf(1, minimum=5, assigned=4)
    b = wf(2, minimum=5, assigned=1)
    assert choose([a, b]) is b


def test_only_the_highest_priority_level_with_work_is_served() -> None:
    top = wf(1, priority=5, assigned=50)
    low = wf(2, priority=1)
    assert choose([low, top]) is top
    top.claimable = 0  # nothing left at the top: the next level
    assert choose([low, top]) is low


def test_within_a_level_the_lowest_assigned_share_per_weight_share_wins() -> None:
    a = wf(1, weight=1, assigned=1)
    b = wf(2, weight=3, assigned=2)
    # shares: a 1/3 of agents for 1/4 of weight (1.33), b 2/3 for 3/4 (0.89): b
    assert choose([a, b]) is b
    b.assigned = 4  # b 4/5 for 3/4 (1.07), a 1/5 for 1/4 (0.8): a
    assert choose([a, b]) is a


def test_ties_go_to_the_oldest() -> None:
    assert choose([wf(7), wf(3), wf(5)]).key == ("workflow", 3)  # type: ignore[union-attr]


def test_a_child_at_its_maximum_is_never_given_more() -> None:
    capped = wf(1, priority=9, maximum=2, assigned=2)
    other = wf(2, priority=0)
    assert choose([capped, other]) is other
    assert choose([capped]) is None
    below_min_but_full = wf(3, minimum=5, maximum=2, assigned=2)
    assert choose([below_min_but_full]) is None


def test_queues_recurse_and_a_queue_whose_subtree_is_full_is_passed_over() -> None:
    inner = wf(1, maximum=1, assigned=1)
    q = queue(10, inner, priority=9)
    other = wf(2)
    root = tree(q, other)
    path = pick(root)
    assert path is not None and path[-1] is other
    inner.maximum = 3
    root.total()
    path = pick(root)
    assert path is not None and [n.key for n in path] == [("queue", 0), ("queue", 10), inner.key]


def test_a_queue_maximum_caps_everything_below_it() -> None:
    a, b = wf(1), wf(2)
    q = queue(10, a, b, maximum=3)
    root = tree(q, wf(3, priority=-1))
    out = quotas(root, 10)
    assert out[1] + out[2] == 3 and out[3] == 7


def test_quotas_spread_agents_by_weight() -> None:
    a = queue(10, wf(1), weight=1)
    b = queue(20, wf(2), weight=3)
    out = quotas(tree(a, b), 40)
    assert (out[1], out[2]) == (10, 30)


def test_quotas_never_hand_out_more_than_is_claimable() -> None:
    out = quotas(tree(wf(1, claimable=2), wf(2, claimable=1)), 10)
    assert dict(out) == {1: 2, 2: 1}


def test_nothing_to_claim_gives_nothing() -> None:
    assert pick(tree()) is None
    assert not quotas(tree(wf(1, claimable=0)), 5)
