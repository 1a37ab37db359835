"""Exhaustive tests of farmstead's two state machines (task instance and task) and of `decide`.

The expectations are written out here as literal data, independently of `farmstead.fsm.tables`,
so that an accidental edit to a table, or to `decide`, makes a test fail.
"""

import itertools
import json

import pytest

from farmstead.fsm import (
    LIVE_TI,
    TASK_VALID,
    TERMINAL_TASK,
    TERMINAL_TI,
    TI_REWRITES,
    TI_UNTIMELY,
    TI_VALID,
    Apply,
    Invalid,
    Same,
    TaskStatus,
    TIStatus,
    Untimely,
    decide,
    retry_resources,
    tables_as_json,
)

TI = TIStatus
T = TaskStatus


def tis(letters: str) -> frozenset[TIStatus]:
    return frozenset(TIStatus(c) for c in letters)


def tasks(letters: str) -> frozenset[TaskStatus]:
    return frozenset(TaskStatus(c) for c in letters)


def path(letters: str) -> tuple[TaskStatus, ...]:
    return tuple(TaskStatus(c) for c in letters)


# --------------------------------------------------------------------------------------------
# The expected tables, as literal data
# --------------------------------------------------------------------------------------------

ALL_TI_LETTERS = "QIORTXKDEUZWF"
ALL_TASK_LETTERS = "GQIORDEAFHB"
LIVE_LETTERS = "QIORTXK"
TERMINAL_TI_LETTERS = "DEUZWF"
ERROR_LETTERS = "EUZW"

#: from -> allowed to (34 edges)
EXPECTED_TI_VALID: dict[str, str] = {
    "Q": "IRKF",  # R: a worker started by hand, without a distributor
    "I": "OWRKF",
    "O": "RXEUZKF",
    "R": "TDEUZKF",
    "T": "RDEUZKF",  # better than Jobmon: T->E and T->D allowed
    "X": "EF",
    "K": "FD",
    "D": "",
    "E": "",
    "U": "",
    "Z": "",
    "W": "",
    "F": "",
}
EXPECTED_TI_EDGES: frozenset[tuple[str, str]] = frozenset({
    ("Q", "I"), ("Q", "R"), ("Q", "K"), ("Q", "F"),
    ("I", "O"), ("I", "W"), ("I", "R"), ("I", "K"), ("I", "F"),
    ("O", "R"), ("O", "X"), ("O", "E"), ("O", "U"), ("O", "Z"), ("O", "K"), ("O", "F"),
    ("R", "T"), ("R", "D"), ("R", "E"), ("R", "U"), ("R", "Z"), ("R", "K"), ("R", "F"),
    ("T", "R"), ("T", "D"), ("T", "E"), ("T", "U"), ("T", "Z"), ("T", "K"), ("T", "F"),
    ("X", "E"), ("X", "F"),
    ("K", "F"), ("K", "D"),
})  # fmt: skip

#: Late reports that are answered with the current status, nothing written.
EXPECTED_UNTIMELY_EXTRA: frozenset[tuple[str, str]] = frozenset({
    ("R", "I"), ("R", "O"), ("T", "O"), ("O", "I"),
    ("K", "I"), ("K", "O"), ("X", "O"), ("T", "T"),
})  # fmt: skip
#: Any request to a terminal instance (other than its own status) is untimely.
EXPECTED_UNTIMELY: frozenset[tuple[str, str]] = EXPECTED_UNTIMELY_EXTRA | {
    (a, b) for a in TERMINAL_TI_LETTERS for b in ALL_TI_LETTERS if a != b
}

EXPECTED_REWRITES: dict[tuple[str, str], str] = {
    ("K", "R"): "F",
    ("K", "E"): "F",
    ("K", "U"): "F",
    ("K", "Z"): "F",
    ("K", "W"): "F",
    ("X", "R"): "E",
    ("X", "U"): "E",
    ("X", "Z"): "E",
}

#: from -> allowed to (22 edges)
EXPECTED_TASK_VALID: dict[str, str] = {
    "G": "QH",
    "Q": "IE",
    "I": "ORE",
    "O": "RE",
    "R": "DE",
    "D": "G",
    "E": "QAFG",
    "A": "Q",
    "F": "G",
    "H": "QBF",  # dependencies: released, blocked by a failed upstream, cancelled
    "B": "H",  # re-opened by a resume
}
#: Task edges that a task instance request drives (the rest are operator or compatibility moves).
TI_DRIVEN_TASK_EDGES: frozenset[tuple[str, str]] = frozenset({
    ("Q", "I"), ("Q", "E"),
    ("I", "O"), ("I", "R"), ("I", "E"),
    ("O", "R"), ("O", "E"),
    ("R", "D"), ("R", "E"),
    ("E", "Q"), ("E", "A"), ("E", "F"),
    ("A", "Q"),
})  # fmt: skip
#: G->Q (queueing a resumed task), E->G (Jobmon's swarm re-queue), F->G (operator resume),
#: D->G (an operator reset a finished taskfarm run).
NOT_TI_DRIVEN_TASK_EDGES: frozenset[tuple[str, str]] = frozenset({
    ("G", "Q"), ("E", "G"), ("F", "G"), ("D", "G"),
    ("G", "H"), ("H", "Q"), ("H", "B"), ("H", "F"), ("B", "H"),
})  # fmt: skip

#: The task statuses a live instance in each status has when nothing bypassed the machines.
#: K may come from Q or I (Jobmon's terminate), and from O, R, T (cancel).
CONSISTENT: dict[str, str] = {
    "Q": "Q",
    "I": "I",
    "O": "O",
    "R": "R",
    "T": "R",
    "X": "O",
    "K": "QIOR",
}

#: Every applied move of a consistent (instance, task) pair:
#: (ti, task, requested) -> (ti_to, task path with tries left, task path with tries used up).
#: A path ending in Q means retry; an A in it means adjust.
_ERR = ("EQ", "EF")
_RES = ("EAQ", "EF")
_FATAL = ("EF", "EF")
EXPECTED_APPLY: dict[tuple[str, str, str], tuple[str, str, str]] = {
    ("Q", "Q", "I"): ("I", "I", "I"),
    ("Q", "Q", "R"): ("R", "IR", "IR"),
    ("Q", "Q", "K"): ("K", "", ""),
    ("Q", "Q", "F"): ("F", *_FATAL),
    ("I", "I", "O"): ("O", "O", "O"),
    ("I", "I", "W"): ("W", *_ERR),
    ("I", "I", "R"): ("R", "R", "R"),
    ("I", "I", "K"): ("K", "", ""),
    ("I", "I", "F"): ("F", *_FATAL),
    ("O", "O", "R"): ("R", "R", "R"),
    ("O", "O", "X"): ("X", "", ""),
    ("O", "O", "E"): ("E", *_ERR),
    ("O", "O", "U"): ("U", *_ERR),
    ("O", "O", "Z"): ("Z", *_RES),
    ("O", "O", "K"): ("K", "", ""),
    ("O", "O", "F"): ("F", *_FATAL),
    ("R", "R", "T"): ("T", "", ""),
    ("R", "R", "D"): ("D", "D", "D"),
    ("R", "R", "E"): ("E", *_ERR),
    ("R", "R", "U"): ("U", *_ERR),
    ("R", "R", "Z"): ("Z", *_RES),
    ("R", "R", "K"): ("K", "", ""),
    ("R", "R", "F"): ("F", *_FATAL),
    ("T", "R", "R"): ("R", "", ""),
    ("T", "R", "D"): ("D", "D", "D"),
    ("T", "R", "E"): ("E", *_ERR),
    ("T", "R", "U"): ("U", *_ERR),
    ("T", "R", "Z"): ("Z", *_RES),
    ("T", "R", "K"): ("K", "", ""),
    ("T", "R", "F"): ("F", *_FATAL),
    ("X", "O", "E"): ("E", *_ERR),
    ("X", "O", "R"): ("E", *_ERR),  # a worker starting after NO_HEARTBEAT: retried
    ("X", "O", "U"): ("E", *_ERR),
    ("X", "O", "Z"): ("E", *_ERR),  # rewritten to E: no resource adjustment
    ("X", "O", "F"): ("F", *_FATAL),
    **{
        ("K", task, "D"): ("D", p, p)
        for task, p in {"Q": "IRD", "I": "RD", "O": "RD", "R": "D"}.items()
    },
    **{("K", task, req): ("F", *_FATAL) for task in "QIOR" for req in "FREUZW"},
}

#: (tries left?) -> (num_attempts, max_attempts)
ATTEMPTS = {True: (1, 3), False: (3, 3)}


# --------------------------------------------------------------------------------------------
# The tables equal the literal data
# --------------------------------------------------------------------------------------------


def test_status_enums() -> None:
    assert [s.value for s in TIStatus] == list(ALL_TI_LETTERS)
    assert [s.value for s in TaskStatus] == list(ALL_TASK_LETTERS)
    assert tis(LIVE_LETTERS) == LIVE_TI
    assert tis(TERMINAL_TI_LETTERS) == TERMINAL_TI
    assert tasks("DF") == TERMINAL_TASK


def test_ti_valid_table_is_exactly_the_expected_edges() -> None:
    assert set(TI_VALID) == set(TIStatus)
    actual = {(a.value, b.value) for a, dsts in TI_VALID.items() for b in dsts}
    assert actual == EXPECTED_TI_EDGES
    assert len(actual) == 34
    assert {k: "".join(sorted(v)) for k, v in EXPECTED_TI_VALID.items()} == {
        a.value: "".join(sorted(d.value for d in TI_VALID[a])) for a in TIStatus
    }


def test_terminal_ti_have_no_outgoing_edges() -> None:
    for s in TERMINAL_TI:
        assert TI_VALID[s] == frozenset()


def test_ti_untimely_table_is_exactly_the_expected_pairs() -> None:
    assert {(a.value, b.value) for a, b in TI_UNTIMELY} == EXPECTED_UNTIMELY
    assert len(TI_UNTIMELY) == 6 * 12 + 8


def test_untimely_pairs_are_never_valid_edges() -> None:
    assert not EXPECTED_UNTIMELY & EXPECTED_TI_EDGES


def test_ti_rewrites_table_is_exactly_the_expected_rewrites() -> None:
    assert {(a.value, b.value): c.value for (a, b), c in TI_REWRITES.items()} == EXPECTED_REWRITES


def test_rewrites_always_land_on_a_valid_edge() -> None:
    for (src, _asked), dst in EXPECTED_REWRITES.items():
        assert (src, dst) in EXPECTED_TI_EDGES


def test_task_valid_table_is_exactly_the_expected_edges() -> None:
    assert set(TASK_VALID) == set(TaskStatus)
    assert {a.value: "".join(sorted(d.value for d in TASK_VALID[a])) for a in TaskStatus} == {
        k: "".join(sorted(v)) for k, v in EXPECTED_TASK_VALID.items()
    }
    edges = {(a.value, b.value) for a, dsts in TASK_VALID.items() for b in dsts}
    assert edges == TI_DRIVEN_TASK_EDGES | NOT_TI_DRIVEN_TASK_EDGES
    assert len(edges) == 22


def test_expected_apply_rows_cover_every_valid_consistent_request() -> None:
    """The literal EXPECTED_APPLY table is complete: one row per valid request of each
    consistent (instance, task) pair, written independently of the code's tables."""
    keys = set()
    for ti, task_letters in CONSISTENT.items():
        for task, req in itertools.product(task_letters, ALL_TI_LETTERS):
            to = EXPECTED_REWRITES.get((ti, req), req)
            if to != ti and (ti, to) not in EXPECTED_UNTIMELY and (ti, to) in EXPECTED_TI_EDGES:
                keys.add((ti, task, req))
    assert keys == set(EXPECTED_APPLY)


# --------------------------------------------------------------------------------------------
# decide() over every (from, requested) pair and every task status
# --------------------------------------------------------------------------------------------


def expected_decision(ti: str, task: str, req: str, tries_left: bool) -> object:
    """The decision expected from the literal tables, or None where it is not pinned down
    (a live instance whose task status it could not have: the table answer must then be
    Apply or Invalid, along valid task edges)."""
    to = EXPECTED_REWRITES.get((ti, req), req)
    if to == ti:
        return Same(TI(ti))
    if (ti, to) in EXPECTED_UNTIMELY:
        return Untimely(TI(ti))
    if (ti, to) not in EXPECTED_TI_EDGES:
        return Invalid(TI(ti), TI(req))
    if task in "DF":  # an orphan: the task is settled
        if to in "IOR":  # moves the task would have to follow: impossible
            return Invalid(TI(ti), TI(req))
        final = "F" if to in TERMINAL_TI_LETTERS else to
        return Apply(TI(ti), TI(final), T(task), ())
    if task in CONSISTENT[ti]:
        ti_to, left, used = EXPECTED_APPLY[(ti, task, req)]
        p = left if tries_left else used
        return Apply(TI(ti), TI(ti_to), T(task), path(p), retry=p.endswith("Q"), adjust="A" in p)
    return None


def assert_walks_valid_task_edges(d: Apply) -> None:
    node = d.task_from
    for nxt in d.task_path:
        assert (node.value, nxt.value) in TI_DRIVEN_TASK_EDGES | NOT_TI_DRIVEN_TASK_EDGES, d
        node = nxt


@pytest.mark.parametrize("task", list(ALL_TASK_LETTERS))
@pytest.mark.parametrize("req", list(ALL_TI_LETTERS))
@pytest.mark.parametrize("ti", list(ALL_TI_LETTERS))
@pytest.mark.parametrize("tries_left", [True, False], ids=["tries_left", "tries_used"])
def test_decide_every_pair(ti: str, req: str, task: str, tries_left: bool) -> None:
    num, max_ = ATTEMPTS[tries_left]
    got = decide(TI(ti), T(task), TI(req), num, max_)
    want = expected_decision(ti, task, req, tries_left)
    if want is None:
        assert isinstance(got, Apply | Invalid), got
    else:
        assert got == want
    if isinstance(got, Apply):
        assert got.requested == TI(req)
        assert got.task_from == T(task)
        assert (got.ti_from.value, got.ti_to.value) in EXPECTED_TI_EDGES
        assert_walks_valid_task_edges(got)
        assert got.retry == (bool(got.task_path) and got.task_path[-1] == T.QUEUED)
        assert not got.adjust or got.retry


@pytest.mark.parametrize("ti", list(LIVE_LETTERS))
def test_decide_kind_for_consistent_live_pairs(ti: str) -> None:
    """For every task status a live instance can have: Same, Untimely, Apply for TI_VALID,
    Invalid otherwise (for an orphan, moves its task would have to follow are Invalid)."""
    for task in CONSISTENT[ti] + "DF":
        for req in ALL_TI_LETTERS:
            to = EXPECTED_REWRITES.get((ti, req), req)
            got = decide(TI(ti), T(task), TI(req), 1, 3)
            if to == ti:
                kind = Same
            elif (ti, to) in EXPECTED_UNTIMELY:
                kind = Untimely
            elif (ti, to) in EXPECTED_TI_EDGES and not (task in "DF" and to in "IOR"):
                kind = Apply
            else:
                kind = Invalid
            assert type(got) is kind, (ti, task, req, got)


def test_every_ti_driven_task_edge_is_produced_and_no_other() -> None:
    produced: set[tuple[str, str]] = set()
    for ti, task_letters in CONSISTENT.items():
        for task, req, tries_left in itertools.product(task_letters, ALL_TI_LETTERS, ATTEMPTS):
            d = decide(TI(ti), T(task), TI(req), *ATTEMPTS[tries_left])
            if isinstance(d, Apply):
                walk = (d.task_from, *d.task_path)
                produced |= {(a.value, b.value) for a, b in itertools.pairwise(walk)}
    assert produced == TI_DRIVEN_TASK_EDGES


def test_task_paths_only_walk_valid_task_edges_everywhere() -> None:
    for ti, task, req in itertools.product(TIStatus, TaskStatus, TIStatus):
        for num, max_ in [(1, 1), (1, 2), (2, 2), (3, 2), (1, 4)]:
            d = decide(ti, task, req, num, max_)
            if isinstance(d, Apply):
                walk = (d.task_from, *d.task_path)
                for a, b in itertools.pairwise(walk):
                    assert b in TASK_VALID[a], (ti, task, req, d)
                    assert (a.value, b.value) in TI_DRIVEN_TASK_EDGES | NOT_TI_DRIVEN_TASK_EDGES


# --------------------------------------------------------------------------------------------
# Where farmstead does better than Jobmon
# --------------------------------------------------------------------------------------------


def test_heartbeat_rescues_a_triaging_instance() -> None:
    """a) Jobmon >= 3.4.21 rejects T->R (its task check is R->R): the worker kills its job."""
    d = decide(TI.TRIAGING, T.RUNNING, TI.RUNNING, 1, 3)
    assert d == Apply(TI.TRIAGING, TI.RUNNING, T.RUNNING, ())
    assert d.task_to == T.RUNNING
    assert d.task_path == ()
    assert not d.retry


@pytest.mark.parametrize(
    ("req", "task_path"),
    [(TI.DONE, (T.DONE,)), (TI.ERROR, (T.ERROR_RECOVERABLE, T.QUEUED))],
)
def test_done_or_error_from_triaging_is_accepted(req: TIStatus, task_path: tuple) -> None:
    """b) Jobmon leaves a triaging instance stuck on the worker's done or error report."""
    d = decide(TI.TRIAGING, T.RUNNING, req, 1, 3)
    assert isinstance(d, Apply)
    assert d.ti_to == req
    assert d.task_path == task_path


@pytest.mark.parametrize("status", list(TIStatus))
def test_repeated_request_is_same(status: TIStatus) -> None:
    """c) A client retry of a request that already took effect writes nothing, whatever the
    task's status (Jobmon has no self-loops and answers them as invalid)."""
    for task in TaskStatus:
        assert decide(status, task, status, 1, 3) == Same(status)


#: (instance status, request) pairs of an orphan that must end in ERROR_FATAL: every error
#: state or F a live instance may be asked for (after the rewrites), written out.
ORPHAN_TO_FATAL = [
    ("Q", "F"),
    ("I", "W"), ("I", "F"),
    ("O", "E"), ("O", "U"), ("O", "Z"), ("O", "F"),
    ("R", "E"), ("R", "U"), ("R", "Z"), ("R", "F"),
    ("T", "E"), ("T", "U"), ("T", "Z"), ("T", "F"),
    ("X", "E"), ("X", "U"), ("X", "Z"), ("X", "F"),
    ("K", "E"), ("K", "U"), ("K", "Z"), ("K", "W"), ("K", "F"),
]  # fmt: skip


@pytest.mark.parametrize("task", [T.DONE, T.ERROR_FATAL])
@pytest.mark.parametrize(("ti", "req"), ORPHAN_TO_FATAL)
def test_orphan_error_ends_fatal_task_untouched(ti: str, req: str, task: TaskStatus) -> None:
    """d) PR #339 in Jobmon, kept: an orphan's error report ends it in F, the task untouched.
    Tries left or not makes no difference."""
    for num, max_ in ATTEMPTS.values():
        d = decide(TI(ti), task, TI(req), num, max_)
        assert d == Apply(TI(ti), TI.ERROR_FATAL, task, ())
        assert not d.retry
        assert not d.adjust


@pytest.mark.parametrize("task", [T.DONE, T.ERROR_FATAL])
@pytest.mark.parametrize("ti", list(LIVE_LETTERS))
def test_orphan_error_requests_not_in_table_stay_invalid(ti: str, task: TaskStatus) -> None:
    """d) The complement of ORPHAN_TO_FATAL: other error or F requests are not moves at all."""
    for req in ERROR_LETTERS + "F":
        if (ti, req) in ORPHAN_TO_FATAL or req == ti:
            continue
        assert decide(TI(ti), task, TI(req), 1, 3) == Invalid(TI(ti), TI(req))


NON_TERMINAL_TASKS = [T(c) for c in "GQIOREA"]


@pytest.mark.parametrize("task", NON_TERMINAL_TASKS)
@pytest.mark.parametrize("req", [TI(c) for c in "FEUZWR"])
def test_kill_self_always_reaches_fatal(task: TaskStatus, req: TIStatus) -> None:
    """e) A stopped worker's report (running or any error) always settles its instance in F
    (Jobmon leaves it in K when its task was reset to G)."""
    for num, max_ in ATTEMPTS.values():
        d = decide(TI.KILL_SELF, task, req, num, max_)
        assert isinstance(d, Apply), d
        assert d.ti_to == TI.ERROR_FATAL
        assert not d.retry
        assert_walks_valid_task_edges(d)
        assert d.task_to in (task, T.ERROR_FATAL)


@pytest.mark.parametrize("task", NON_TERMINAL_TASKS)
def test_kill_self_can_always_finish(task: TaskStatus) -> None:
    """e) A command that finished before it could be stopped is DONE."""
    d = decide(TI.KILL_SELF, task, TI.DONE, 1, 3)
    assert isinstance(d, Apply), d
    assert d.ti_to == TI.DONE
    assert_walks_valid_task_edges(d)


@pytest.mark.parametrize("req", [TI(c) for c in "FEUZWR"])
def test_kill_self_of_resumed_task_moves_the_instance_only(req: TIStatus) -> None:
    """A KILL_SELF instance of a task an operator already resumed (task G) ends in F and
    leaves the resumed task untouched (it must not be failed again)."""
    d = decide(TI.KILL_SELF, T.REGISTERING, req, 1, 3)
    assert d == Apply(TI.KILL_SELF, TI.ERROR_FATAL, T.REGISTERING, ())


# --------------------------------------------------------------------------------------------
# Retry policy
# --------------------------------------------------------------------------------------------

#: (instance, task, error request) for every error report a consistent live instance accepts
#: that is not rewritten to F.
ERROR_REPORTS = [
    (ti, task, req)
    for (ti, task, req), (_to, left, _used) in EXPECTED_APPLY.items()
    if left in ("EQ", "EAQ")
]


def test_error_reports_are_the_expected_ones() -> None:
    assert sorted(ERROR_REPORTS) == sorted([
        ("I", "I", "W"),
        ("O", "O", "E"), ("O", "O", "U"), ("O", "O", "Z"),
        ("R", "R", "E"), ("R", "R", "U"), ("R", "R", "Z"),
        ("T", "R", "E"), ("T", "R", "U"), ("T", "R", "Z"),
        ("X", "O", "E"), ("X", "O", "R"), ("X", "O", "U"), ("X", "O", "Z"),
    ])  # fmt: skip


@pytest.mark.parametrize(("ti", "task", "req"), ERROR_REPORTS)
@pytest.mark.parametrize(("num", "max_"), [(1, 2), (1, 4), (3, 4)])
def test_error_with_tries_left_retries(ti: str, task: str, req: str, num: int, max_: int) -> None:
    d = decide(TI(ti), T(task), TI(req), num, max_)
    assert isinstance(d, Apply)
    assert d.retry
    assert d.task_path[0] == T.ERROR_RECOVERABLE
    assert d.task_to == T.QUEUED
    resource = TI(req) == TI.RESOURCE_ERROR and ti != "X"
    assert d.adjust == resource
    if resource:
        assert d.task_path == (T.ERROR_RECOVERABLE, T.ADJUSTING_RESOURCES, T.QUEUED)
    else:
        assert d.task_path == (T.ERROR_RECOVERABLE, T.QUEUED)


@pytest.mark.parametrize(("ti", "task", "req"), ERROR_REPORTS)
@pytest.mark.parametrize(("num", "max_"), [(1, 1), (2, 2), (4, 4), (5, 4)])
def test_error_with_tries_used_up_is_fatal(
    ti: str, task: str, req: str, num: int, max_: int
) -> None:
    d = decide(TI(ti), T(task), TI(req), num, max_)
    assert isinstance(d, Apply)
    assert d.task_path == (T.ERROR_RECOVERABLE, T.ERROR_FATAL)
    assert d.task_to == T.ERROR_FATAL
    assert not d.retry
    assert not d.adjust


@pytest.mark.parametrize(
    ("ti", "task"),
    [("Q", "Q"), ("I", "I"), ("O", "O"), ("R", "R"), ("T", "R"), ("X", "O"), ("K", "R")],
)
def test_fatal_request_never_retries(ti: str, task: str) -> None:
    d = decide(TI(ti), T(task), TI.ERROR_FATAL, 1, 4)
    assert d == Apply(TI(ti), TI.ERROR_FATAL, T(task), (T.ERROR_RECOVERABLE, T.ERROR_FATAL))


# --------------------------------------------------------------------------------------------
# retry_resources
# --------------------------------------------------------------------------------------------


def test_retry_resources_default_scales_memory_and_runtime() -> None:
    res = {"memory": 4, "runtime": 100, "cores": 2, "queue": "all.q"}
    out = retry_resources(res, None)
    assert out == {"memory": 6, "runtime": 150, "cores": 2, "queue": "all.q"}
    assert type(out["memory"]) is int
    assert type(out["runtime"]) is int
    assert res == {"memory": 4, "runtime": 100, "cores": 2, "queue": "all.q"}  # not mutated


def test_retry_resources_ints_stay_ints_and_floats_stay_floats() -> None:
    out = retry_resources({"memory": 3, "runtime": 2.0}, None)
    assert type(out["memory"]) is int
    assert out["memory"] in (4, 5)  # 4.5, rounded
    assert type(out["runtime"]) is float
    assert out["runtime"] == pytest.approx(3.0)


def test_retry_resources_leaves_other_values_untouched() -> None:
    out = retry_resources({"memory": "4G", "runtime": True, "cores": 1.5}, None)
    assert out == {"memory": "4G", "runtime": True, "cores": 1.5}


def test_retry_resources_does_not_add_missing_keys() -> None:
    assert retry_resources({"cores": 2}, None) == {"cores": 2}


def test_retry_resources_custom_scales() -> None:
    out = retry_resources({"memory": 10, "runtime": 60, "cores": 3}, {"memory": 2.0, "cores": 3})
    assert out == {"memory": 20, "runtime": 60, "cores": 9}


@pytest.mark.parametrize("scales", [None, {"memory": 2.0}])
def test_retry_resources_none_resources(scales: dict[str, float] | None) -> None:
    assert retry_resources(None, scales) == {}
    assert retry_resources({}, scales) == {}


# --------------------------------------------------------------------------------------------
# tables_as_json
# --------------------------------------------------------------------------------------------


def test_tables_as_json_is_serialisable_and_complete() -> None:
    data = tables_as_json()
    assert json.loads(json.dumps(data)) == data
    ti_part, task_part = data["task_instance"], data["task"]
    assert sorted(ti_part["statuses"]) == sorted(ALL_TI_LETTERS)
    assert len(ti_part["statuses"]) == 13
    assert ti_part["statuses"]["O"] == "LAUNCHED"
    assert sorted(task_part["statuses"]) == sorted(ALL_TASK_LETTERS)
    assert len(task_part["statuses"]) == 11
    assert task_part["statuses"]["E"] == "ERROR_RECOVERABLE"
    assert {k: "".join(sorted(v)) for k, v in ti_part["valid"].items()} == {
        k: "".join(sorted(v)) for k, v in EXPECTED_TI_VALID.items()
    }
    assert {k: "".join(sorted(v)) for k, v in task_part["valid"].items()} == {
        k: "".join(sorted(v)) for k, v in EXPECTED_TASK_VALID.items()
    }
    assert {tuple(p) for p in ti_part["untimely"]} == EXPECTED_UNTIMELY
    assert {(a, b): c for a, b, c in ti_part["rewrites"]} == EXPECTED_REWRITES
    assert ti_part["terminal"] == sorted(TERMINAL_TI_LETTERS)
