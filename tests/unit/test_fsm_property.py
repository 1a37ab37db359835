"""Property tests: random interleavings of worker, distributor, reconciler and operator requests
on one task, applied through `decide` exactly as the server applies them."""

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from farmstead.fsm import (
    LIVE_TI,
    TASK_VALID,
    TERMINAL_TASK,
    TERMINAL_TI,
    TI_VALID,
    Apply,
    Invalid,
    Same,
    TaskStatus,
    TIStatus,
    Untimely,
    decide,
)

TI = TIStatus
T = TaskStatus

#: Instance statuses that must not exist under a settled task (KILL_SELF may linger).
ACTIVE_TI = frozenset({TI.QUEUED, TI.INSTANTIATED, TI.LAUNCHED, TI.RUNNING, TI.TRIAGING,
                       TI.NO_HEARTBEAT})  # fmt: skip
#: The task statuses a live instance in each status may have.
CONSISTENT: dict[TIStatus, frozenset[TaskStatus]] = {
    TI.QUEUED: frozenset({T.QUEUED}),
    TI.INSTANTIATED: frozenset({T.INSTANTIATING}),
    TI.LAUNCHED: frozenset({T.LAUNCHED}),
    TI.RUNNING: frozenset({T.RUNNING}),
    TI.TRIAGING: frozenset({T.RUNNING}),
    TI.NO_HEARTBEAT: frozenset({T.LAUNCHED}),
    TI.KILL_SELF: frozenset({T.QUEUED, T.INSTANTIATING, T.LAUNCHED, T.RUNNING}),
}
#: Statuses a task passes through inside one transaction but never rests in.
TRANSIENT_TASK = frozenset({T.REGISTERING, T.ERROR_RECOVERABLE, T.ADJUSTING_RESOURCES})


def _fixed(req: TIStatus) -> Callable[[TIStatus, bool], TIStatus | None]:
    return lambda _current, _stale: req


def _reconciler(src: TIStatus, req: TIStatus) -> Callable[[TIStatus, bool], TIStatus | None]:
    """The reconciler selects instances in `src`. Fresh, it only acts on what it selected;
    stale, the row moved on between its select and its locked update (decide sees the row)."""
    return lambda current, stale: req if stale or current == src else None


def _cancel(current: TIStatus, stale: bool) -> TIStatus | None:
    """The operator's cancel: Q/I -> F, O/R/T -> K; stale, it read an earlier status."""
    if current in (TI.QUEUED, TI.INSTANTIATED):
        return TI.ERROR_FATAL
    if current in (TI.LAUNCHED, TI.RUNNING, TI.TRIAGING):
        return TI.KILL_SELF
    if stale:  # it read Q/I (asks F) or O/R/T (asks K) before the instance moved on
        return TI.ERROR_FATAL if current in (TI.NO_HEARTBEAT, TI.KILL_SELF) else TI.KILL_SELF
    return None


ACTIONS: dict[str, Callable[[TIStatus, bool], TIStatus | None]] = {
    "worker_log_running": _fixed(TI.RUNNING),
    "worker_heartbeat": _fixed(TI.RUNNING),
    "worker_done": _fixed(TI.DONE),
    "worker_error": _fixed(TI.ERROR),
    "worker_resource_error": _fixed(TI.RESOURCE_ERROR),
    "worker_fatal": _fixed(TI.ERROR_FATAL),
    "distributor_instantiate": _fixed(TI.INSTANTIATED),
    "distributor_launch": _fixed(TI.LAUNCHED),
    "distributor_no_distributor_id": _fixed(TI.NO_DISTRIBUTOR_ID),
    "distributor_unknown_error": _fixed(TI.UNKNOWN_ERROR),
    "reconciler_triage": _reconciler(TI.RUNNING, TI.TRIAGING),
    "reconciler_triage_expired": _reconciler(TI.TRIAGING, TI.UNKNOWN_ERROR),
    "reconciler_no_heartbeat": _reconciler(TI.LAUNCHED, TI.NO_HEARTBEAT),
    "reconciler_retry_no_heartbeat": _reconciler(TI.NO_HEARTBEAT, TI.ERROR),
    "reconciler_kill_deadline": _reconciler(TI.KILL_SELF, TI.ERROR_FATAL),
    "operator_cancel": _cancel,
}


@dataclass
class TaskModel:
    max_attempts: int
    task: TaskStatus = T.QUEUED
    instances: list[TIStatus] = field(default_factory=lambda: [TI.QUEUED])
    num_attempts: int = 1
    trace: list[str] = field(default_factory=list)

    def request(self, index: int, req: TIStatus, label: str) -> object:
        """Apply one request to instance `index` the way the server does."""
        before = self.instances[index]
        task_before = self.task
        d = decide(before, self.task, req, self.num_attempts, self.max_attempts)
        self.trace.append(
            f"{label}: inst#{index} {before.value} task {task_before.value} asks {req.value}"
            f" (attempts {self.num_attempts}/{self.max_attempts}) -> {d}"
        )
        if isinstance(d, Apply):
            assert before in LIVE_TI, self.report("Apply on a terminal instance")
            assert d.ti_to in TI_VALID[before], self.report("instance moved off the table")
            node = self.task
            for nxt in d.task_path:
                assert nxt in TASK_VALID[node], self.report("task moved off the table")
                node = nxt
            self.instances[index] = d.ti_to
            self.task = d.task_to
            if d.retry:
                self.instances.append(TI.QUEUED)
                self.num_attempts += 1
        elif before in TERMINAL_TI:
            # a late or repeated report on a settled instance is answered 200, never 409
            assert isinstance(d, Same | Untimely), self.report("409 for a settled instance")
        return d

    def report(self, what: str) -> str:
        return (
            f"{what}\n  max_attempts={self.max_attempts} task={self.task.value} "
            f"instances={[s.value for s in self.instances]} num_attempts={self.num_attempts}\n  "
            + "\n  ".join(self.trace)
        )

    def check(self) -> None:
        live = [s for s in self.instances if s in LIVE_TI]
        assert len(live) <= 1, self.report("two live instances")
        assert self.num_attempts == len(self.instances), self.report("num_attempts != instances")
        assert self.num_attempts <= self.max_attempts, self.report("too many attempts")
        if self.task in TERMINAL_TASK:
            assert not ACTIVE_TI & set(self.instances), self.report("active instance, task settled")
            assert not live, self.report("orphan left by the machines")
        else:
            assert len(live) == 1, self.report("unsettled task without exactly one live instance")
            assert self.task in CONSISTENT[live[0]], self.report("instance/task mismatch")
        assert all(s in TERMINAL_TI for s in self.instances[:-1]), self.report("old live instance")
        assert self.task not in TRANSIENT_TASK, self.report("task rests in a transient status")
        done = self.instances.count(TI.DONE)
        assert done == (1 if self.task == T.DONE else 0), self.report("DONE task/instance mismatch")


#: The request that moves a live instance on when nothing goes wrong.
HAPPY_NEXT = {
    TI.QUEUED: TI.INSTANTIATED,
    TI.INSTANTIATED: TI.LAUNCHED,
    TI.LAUNCHED: TI.RUNNING,
    TI.RUNNING: TI.DONE,
    TI.TRIAGING: TI.RUNNING,
    TI.NO_HEARTBEAT: TI.ERROR,
    TI.KILL_SELF: TI.ERROR_FATAL,
}

action_st = st.tuples(
    st.sampled_from(sorted(ACTIONS)),
    st.integers(0, 3),  # 0: the newest (live) instance; else a random older one
    st.integers(0, 7),  # which older instance
    st.booleans(),  # a stale read (reconciler, operator)
)


@settings(max_examples=300, deadline=None)
@given(max_attempts=st.integers(1, 4), actions=st.lists(action_st, max_size=40))
def test_random_interleavings_keep_the_invariants(
    max_attempts: int, actions: list[tuple[str, int, int, bool]]
) -> None:
    m = TaskModel(max_attempts)
    m.check()
    for name, target, which, stale in actions:
        if target and len(m.instances) > 1:
            index = which % (len(m.instances) - 1)  # an older, settled instance
        else:
            index = len(m.instances) - 1
        req = ACTIONS[name](m.instances[index], stale)
        if req is None:
            continue
        m.request(index, req, name)
        m.check()

    # Whatever happened, the task can still be driven to a settled status.
    for _ in range(4 * (max_attempts + 1)):
        if m.task in TERMINAL_TASK:
            break
        index = len(m.instances) - 1
        d = m.request(index, HAPPY_NEXT[m.instances[index]], "drive")
        assert isinstance(d, Apply), m.report("no way forward")
        m.check()
    assert m.task in TERMINAL_TASK, m.report("task never settled")


@settings(max_examples=300, deadline=None)
@given(
    ti=st.sampled_from(list(TIStatus)),
    task=st.sampled_from(list(TaskStatus)),
    req=st.sampled_from(list(TIStatus)),
    num=st.integers(0, 6),
    max_=st.integers(0, 6),
)
def test_decide_is_total_and_consistent(
    ti: TIStatus, task: TaskStatus, req: TIStatus, num: int, max_: int
) -> None:
    d = decide(ti, task, req, num, max_)
    assert isinstance(d, Apply | Same | Untimely | Invalid)
    if isinstance(d, Invalid):
        assert d == Invalid(ti, req)
    elif isinstance(d, Same | Untimely):
        assert d.status == ti
    else:
        assert ti in LIVE_TI
        assert d.ti_from == ti
        assert d.task_from == task
        assert d.requested == req
        assert d.ti_to in TI_VALID[ti]
        node = task
        for nxt in d.task_path:
            assert nxt in TASK_VALID[node]
            node = nxt
        if d.retry:
            assert num < max_
            assert d.ti_to in TERMINAL_TI
            assert d.task_to == T.QUEUED
        if d.adjust:
            assert d.retry
        if task in TERMINAL_TASK:
            assert d.task_path == ()
