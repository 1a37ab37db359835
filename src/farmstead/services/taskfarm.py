"""taskfarm's use cases (the `/api` face): runs, claims, task updates, restarts, workers.

A run is a farmstead workflow with a uuid; its tasks 0..N-1 are one array, created by the
array submit; its statuses are views of farmstead's (`fsm.taskfarm`). Every move goes through
the claim service, the transitions and the resume and cancel actions: nothing here decides a
status.
"""

import time
from typing import Any
from uuid import uuid4

from farmstead.db.engine import Conn, Database
from farmstead.fsm import TaskStatus, TIStatus
from farmstead.fsm.taskfarm import TASKFARM_REQUEST, TASKFARM_STATUS, TaskfarmStatus, counts_by_view
from farmstead.schemas import WorkflowCreate
from farmstead.services import actions
from farmstead.services.auth import Principal, audit, sign_in_token
from farmstead.services.claims import claim_in
from farmstead.services.errors import Conflict, Forbidden, InvalidTransition, NotFound
from farmstead.services.transitions import transition_in
from farmstead.services.uow import in_transaction
from farmstead.services.workflows import Pull, submit
from farmstead.settings import Settings
from farmstead.store import instances as ti_store
from farmstead.store import taskfarm as store
from farmstead.store.rows import EventRow
from farmstead.store.sql import insert_events
from farmstead.store.taskfarm import Run, TaskAt

#: tries a run's task has (a give-back or an expiry uses one); then it waits for a restart
MAX_ATTEMPTS = 1000
#: seconds a token from `GET /api/token` lasts (taskfarm's client never asks for another)
TOKEN_SECONDS = 30 * 86400.0
#: seconds a process keeps what it read of a run or a worker (neither ever changes; a run
#: deleted through another process stays known here that long, its tasks already cancelled)
CACHE_SECONDS = 5.0
_known: dict[tuple[int, str, str], tuple[float, Any]] = {}
INFO_KEYS = ("percentDone", "numWaiting", "numDone", "numComputing")
TASK_INFO_KEYS = ("status", "percentCompleted")


def run_view(run: Run) -> dict[str, Any]:
    """A run in taskfarm's words."""
    return {"id": run.id, "uuid": run.uuid, "numTasks": run.num_tasks}


def _task_view(at: TaskAt) -> dict[str, Any]:
    status = TASKFARM_STATUS[TaskStatus(at.status)]
    return {"id": at.id, "task": at.number, "percentCompleted": at.progress, "status": status}


async def _cached(db_key: int, kind: str, key: str, read: Any) -> Any:
    """What `read()` gives for (kind, key), kept for CACHE_SECONDS when found."""
    now = time.monotonic()
    hit = _known.get((db_key, kind, key))
    if hit is not None and hit[0] > now:
        return hit[1]
    value = await read()
    if value is not None:
        if len(_known) > 10_000:
            _known.clear()
        _known[(db_key, kind, key)] = (now + CACHE_SECONDS, value)
    return value


def _forget(db_key: int, kind: str, key: str) -> None:
    _known.pop((db_key, kind, key), None)


async def _run(db: Database, conn: Conn, uuid: str, who: Principal) -> Run:
    run: Run | None = await _cached(id(db), "run", uuid, lambda: store.run_by_uuid(conn, uuid))
    if run is None:
        raise NotFound(f"no run {uuid}", uuid=uuid)
    if not who.may_touch(run.id):
        raise Forbidden("this token may act only on its own workflows' runs")
    return run


async def _task(conn: Conn, run: Run, number: int, lock: bool = False) -> TaskAt:
    at = None
    if 0 <= number < run.num_tasks:
        if lock:
            at = await store.task_at(conn, run.array_id, number, lock=True)
        if at is None:
            at = await store.task_at(conn, run.array_id, number)
    if at is None:
        raise NotFound(f"run {run.uuid} has no task {number} (0..{run.num_tasks - 1})")
    return at


async def token(db: Database, who: Principal) -> str:
    """A token with the caller's own rights, for the client's later calls."""
    return await sign_in_token(db, who, "taskfarm sign-in (GET /api/token)", TOKEN_SECONDS)


async def create_run(
    db: Database, settings: Settings, who: Principal, num_tasks: int, timeout: float | None
) -> dict[str, Any]:
    """A run of `num_tasks` waiting tasks: one array submit (a million take seconds)."""
    uuid = uuid4().hex
    req = WorkflowCreate.model_validate(
        {
            "name": f"taskfarm run {uuid}",
            "array": {
                "name": "{i}",
                "command": "taskfarm task {i}",
                "first": 0,
                "last": num_tasks - 1,
            },
            "max_attempts": MAX_ATTEMPTS,
        }
    )
    pull = Pull(uuid, timeout or settings.report_increment)
    summary = await submit(db, settings, req, actor=who, pull=pull)
    return {"id": summary["id"], "uuid": uuid, "numTasks": num_tasks}


async def list_runs(db: Database, who: Principal) -> list[dict[str, Any]]:
    """Every run the caller may see."""
    found = await in_transaction(db, store.runs, write=False)
    return [run_view(r) for r in found if who.may_touch(r.id)]


async def info(db: Database, uuid: str, who: Principal) -> dict[str, Any]:
    """A run with its counts by taskfarm status and its percent done."""

    async def work(conn: Conn) -> dict[str, Any]:
        run = await _run(db, conn, uuid, who)
        counts, progress = await store.tallies(conn, run.id)
        views = counts_by_view(counts)
        return {
            **run_view(run),
            "percentDone": progress / run.num_tasks if run.num_tasks else 0.0,
            "numWaiting": views["waiting"],
            "numComputing": views["computing"],
            "numDone": views["done"],
        }

    return await in_transaction(db, work, write=False)


async def get_task(db: Database, uuid: str, number: int, who: Principal) -> dict[str, Any]:
    """Task `number` of a run."""

    async def work(conn: Conn) -> dict[str, Any]:
        return _task_view(await _task(conn, await _run(db, conn, uuid, who), number))

    return await in_transaction(db, work, write=False)


async def register_worker(
    db: Database, who: Principal, uuid: str, hostname: str, pid: int
) -> dict[str, Any]:
    """A worker, remembered with the credentials it registered with (registering again with
    the same credentials, a client's retry, answers the same worker)."""

    async def work(conn: Conn) -> int:
        known = await store.worker(conn, uuid)
        if known is None:
            return await store.insert_worker(conn, uuid, hostname, pid, who.identity)
        if known["identity"] != who.identity:
            raise Conflict(f"a worker {uuid} is registered already", uuid=uuid)
        return int(known["id"])

    return {"uuid": uuid, "id": await in_transaction(db, work)}


async def claim(db: Database, uuid: str, worker_uuid: str, who: Principal) -> dict[str, Any] | None:
    """The next waiting task of a run for a worker (None: none left), in one transaction:
    the claim service takes one QUEUED instance of the run (SKIP LOCKED: no lock on the run),
    then it starts RUNNING for the worker, with the run's update deadline."""

    async def work(conn: Conn) -> dict[str, Any] | None:
        run = await _run(db, conn, uuid, who)
        worker = await _cached(
            id(db), "worker", worker_uuid, lambda: store.worker(conn, worker_uuid)
        )
        if worker is None:
            raise NotFound(f"no worker {worker_uuid}", worker_uuid=worker_uuid)
        if who.reporter is not None and worker["identity"] not in (None, who.identity):
            raise Forbidden("this worker was registered with other credentials")
        claimed = await claim_in(conn, db.is_sqlite, 1, run.id, pull=True)
        if not claimed:
            return None
        ti = claimed[0]
        await transition_in(
            conn,
            ti["task_instance_id"],
            TIStatus.RUNNING,
            fields={"nodename": worker["hostname"], "reporter": who.identity},
            report_increment=run.timeout,
            details={"by": "taskfarm claim", "worker": worker_uuid},
        )
        number = ti["array_step_id"]
        if ti["array_batch_num"] != 1:  # a retry: the task's number is its first try's step
            number = await store.task_number(conn, ti["task_id"])
        return _task_view(await _task(conn, run, number))

    return await in_transaction(db, work)


def _moved_on(number: int, view: str) -> InvalidTransition:
    return InvalidTransition(
        f"task {number} is {view}: it is not computed by this worker (its update deadline "
        "passed and it was handed out again, or it was restarted or finished)",
        task=number,
        status=view,
    )


async def update_task(
    db: Database,
    uuid: str,
    number: int,
    who: Principal,
    percent: float | None,
    status: TaskfarmStatus | None,
) -> None:
    """A worker's update of the task it computes: progress (which also extends its deadline)
    and/or a status (done: log_done; waiting: give it back, a new try is queued; computing:
    a heartbeat). Only the worker that holds it (or an operator) may, along the state machine.
    """

    async def work(conn: Conn) -> None:
        run = await _run(db, conn, uuid, who)
        # the instance and its task locked first (then the deadline row): the lock order of
        # every move; a task with no live instance is read unlocked, for the answer
        at = await _task(conn, run, number, lock=True)
        view = TASKFARM_STATUS[TaskStatus(at.status)]
        if at.ti_id is None or at.ti_status == TIStatus.QUEUED:
            if status == view and percent is None:
                return  # already so: a client's retry
            raise _moved_on(number, view)
        if who.reporter is not None and at.reporter not in (None, who.reporter):
            raise _moved_on(number, "computed by another worker")
        if percent is not None or status == "computing":
            await _beat(conn, run, at, who)
        if percent is not None:
            # the task's status now: the beat may have moved it (a rescue from TRIAGING, a
            # worker's first report of an instance that was only INSTANTIATED)
            now = await store.set_progress(conn, at.id, percent)
            details = {"progress": percent, "by": who.name}
            await insert_events(conn, [EventRow(run.id, "task", at.id, now, now, details)])
        if status is not None and status != "computing":
            out = await transition_in(
                conn,
                at.ti_id,
                TASKFARM_REQUEST[status],
                error="given back by its worker" if status == "waiting" else None,
                details={"by": who.name, "via": "taskfarm update"},
                reporter=who.reporter,
            )
            if not out.applied and out.status != TASKFARM_REQUEST[status]:
                raise _moved_on(number, str(out.status.name).lower())

    await in_transaction(db, work)


async def _beat(conn: Conn, run: Run, at: TaskAt, who: Principal) -> None:
    """Extend the deadline of the task's instance (a TRIAGING one is rescued to RUNNING)."""
    assert at.ti_id is not None
    if await ti_store.heartbeat(conn, at.ti_id, run.timeout, {}, who.reporter):
        return
    out = await transition_in(
        conn,
        at.ti_id,
        TIStatus.RUNNING,
        report_increment=run.timeout,
        details={"by": who.name, "via": "taskfarm update"},
        reporter=who.reporter,
    )
    if not out.applied:
        raise _moved_on(at.number, str(out.status.name).lower())


async def restart(db: Database, uuid: str, who: Principal, everything: bool) -> dict[str, Any]:
    """Unfinished tasks back to waiting, leaving those whose worker still reports alone (their
    deadline is ahead); with `everything`, every task, done or computed, with no progress."""
    run = await in_transaction(db, lambda c: _run(db, c, uuid, who), write=False)
    audit("taskfarm restart", who, workflow_id=run.id, all=everything)
    if everything:
        moved = await actions.stop_live(db, run.id, who, "reset by a restart of the whole run")
        await in_transaction(db, lambda c: store.reset_progress(c, run.id))
    else:
        moved = 0
        for sweep in store.computing_expired(run.id):
            moved += await actions.expire(db, sweep, who)
    resumed = await actions.resume(db, run.id, everything, who, finished=everything)
    return {"stopped": moved, **resumed}


async def delete(db: Database, uuid: str, who: Principal) -> None:
    """A run leaves taskfarm's API at once; its workflow is cancelled and stays in history."""

    async def work(conn: Conn) -> Run:
        run = await _run(db, conn, uuid, who)
        await store.forget_uuid(conn, run.id)
        return run

    run = await in_transaction(db, work)
    _forget(id(db), "run", uuid)
    await actions.cancel(db, run.id, who)
