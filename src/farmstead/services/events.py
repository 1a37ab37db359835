"""The event stream: every move as an event in Celery's words, served live and from history.

One `EventFeed` per server process reads the event table for everyone: a poller wakes every
`event_poll_interval` seconds while anyone listens, reads what is new past its cursor (stopping
at an unsettled gap, store/events.py), describes it (one query for the tasks and instances it
names) and keeps the newest events in memory. A subscriber that asks for events after id N is
served from that memory when it reaches back far enough, else from the table in pages, then
live: each event once, in id order, whichever process it reconnects to.
"""

import asyncio
import bisect
import contextlib
import logging
import operator
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sse_starlette import ServerSentEvent

from farmstead.db.engine import Conn, Database
from farmstead.fsm.celery import active, event_type, status_name, task_uuid
from farmstead.metrics import SUBSCRIBERS
from farmstead.services.errors import Gone
from farmstead.services.uow import in_transaction
from farmstead.store import events as store

log = logging.getLogger("farmstead.events")
#: events kept in memory per process for subscribers that fall a little behind
KEEP = 20_000
#: rows read per poll or per page of history
PAGE = 1_000
#: a poller with nobody listening for this long stops (the next listener starts it again)
IDLE_STOP = 60.0
#: entities only an admin sees in the stream (audit rows of users and tokens)
AUDIT = frozenset({"user", "token"})
#: an event's id (the sort key of every kept list)
_ID = operator.itemgetter("id")
#: instance statuses reached by stopping a running command (a revoke that terminated it)
_STOPPED_FROM = frozenset({"K", "R", "T"})


@dataclass(frozen=True)
class Filters:
    """Which events a subscriber wants."""

    workflow_id: int | None = None
    task_id: int | None = None
    types: frozenset[str] | None = None
    audit: bool = False  # users' and tokens' rows too (admins)

    def match(self, event: dict[str, Any]) -> bool:
        if self.workflow_id is not None and event["workflow_id"] != self.workflow_id:
            return False
        if self.task_id is not None and event.get("task_id") != self.task_id:
            return False
        if self.types is not None and event["type"] not in self.types:
            return False
        return self.audit or event["entity"] not in AUDIT


def describe(
    rows: Sequence[dict[str, Any]],
    names: dict[int, str],
    instances: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Event rows as stream events: Celery's fields (`type`, `uuid`, `name`, `hostname`,
    `timestamp`, `retries`, `runtime`, `exception`, …) beside farmstead's own."""
    out = []
    for r in rows:
        entity, to, details = r["entity"], r["to_status"], r["details"] or {}
        name = status_name(entity, to)
        ti_id: int | None = None
        task_id: int | None = None
        if entity == "task_instance":
            ti_id = int(r["entity_id"])
        elif entity == "task":
            task_id = int(r["entity_id"])
            ti_id = details.get("task_instance_id")
        inst = instances.get(ti_id) if ti_id is not None else None
        if task_id is None and inst is not None:
            task_id = inst["task_id"]
        kind = event_type(entity, r["from_status"], to, details, name)
        when = r["time"]
        event: dict[str, Any] = {
            "id": r["id"],
            "type": kind,
            "timestamp": when.timestamp(),
            "utcoffset": 0,
            "clock": r["id"],
            "time": when.isoformat().replace("+00:00", "Z"),
            "workflow_id": r["workflow_id"],
            "entity": entity,
            "entity_id": r["entity_id"],
            "from_status": r["from_status"],
            "to_status": to,
            "status_name": name,
            "details": r["details"],
            "task_id": task_id,
            "task_instance_id": ti_id,
        }
        if entity in ("task", "task_instance"):
            event["active"] = active(entity, to)
        if task_id is not None:
            event["uuid"] = task_uuid(task_id)
            event["name"] = names.get(task_id)
        if inst is not None:
            event["hostname"] = inst["hostname"]
            event["pid"] = inst["pid"]
            event["retries"] = inst["retries"]
        elif entity == "agent":
            event["hostname"] = details.get("hostname")
            event["pid"] = details.get("pid")
        if kind == "task-succeeded":
            event["runtime"] = inst["wallclock"] if inst is not None else None
            event["result"] = None
        elif kind in ("task-failed", "task-retried"):
            event["exception"] = details.get("error")
            event["traceback"] = None
        elif kind == "task-revoked":
            terminated = details.get("via") in _STOPPED_FROM
            event |= {"terminated": terminated, "signum": 15 if terminated else None}
            event["expired"] = False
        out.append(event)
    return out


async def read_described(
    conn: Conn, after: int, limit: int, workflow_id: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """A page of history, described; and the last id read (to continue after)."""
    rows = await store.page(conn, after, limit, workflow_id)
    return await described(conn, rows), (rows[-1]["id"] if rows else after)


async def described(conn: Conn, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    task_ids = [int(r["entity_id"]) for r in rows if r["entity"] == "task"]
    ti_ids = [int(r["entity_id"]) for r in rows if r["entity"] == "task_instance"]
    ti_ids += [
        int(r["details"]["task_instance_id"])
        for r in rows
        if r["entity"] == "task" and r["details"] and r["details"].get("task_instance_id")
    ]
    names, instances = await store.context(conn, task_ids, ti_ids)
    return describe(rows, names, instances)


class EventFeed:
    """This process's one reader of the event table (see the module's docstring)."""

    def __init__(self, db: Database, poll_interval: float) -> None:
        self.db = db
        self.poll_interval = poll_interval
        #: every event with an id up to here is settled: served, or known never to exist
        self.cursor = 0
        #: the newest settled events (ids above `floor`), oldest first
        self.events: list[dict[str, Any]] = []
        self.ids: list[int] = []
        #: the kept events by workflow (oldest first), for subscribers that follow one
        self._by_workflow: dict[int | None, list[dict[str, Any]]] = {}
        #: the kept events as SSE frames, made once for every subscriber (by id)
        self._frames: dict[int, bytes] = {}
        self.floor = 0
        self.listeners = 0
        self._last_use = time.monotonic()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._gap: tuple[int, int] | None = None  # (first missing id, xmax when seen)

    async def start(self) -> None:
        """Run the poller if it is not running (from a safe place: the newest event now)."""
        self._last_use = time.monotonic()
        if self._task is not None and not self._task.done():
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._task is not None and not self._task.done():
                return
            newest = await in_transaction(self.db, store.newest_id)
            self.cursor = self.floor = newest
            self.events, self.ids, self._gap = [], [], None
            self._by_workflow, self._frames = {}, {}
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            read = 0
            try:
                read = await self.poll()
            except Exception:  # the database away for a moment: try again next round
                log.warning("event feed: reading new events failed", exc_info=True)
            if self.listeners == 0 and time.monotonic() - self._last_use > IDLE_STOP:
                return
            # a full page: more is waiting, read on at once (but let others run meanwhile)
            await asyncio.sleep(0 if read >= PAGE else self.poll_interval)

    async def poll(self) -> int:
        """Take in what is new and settled; how many events."""

        async def work(conn: Conn) -> list[dict[str, Any]]:
            before = await store.snapshot(conn)
            rows = await store.page(conn, self.cursor, PAGE)
            settled: list[dict[str, Any]] = []
            expect = self.cursor + 1
            for row in rows:
                if row["id"] != expect and not await self._gap_settled(conn, expect, before):
                    break
                settled.append(row)
                expect = row["id"] + 1
            return await described(conn, settled) if settled else []

        new = await in_transaction(self.db, work, write=False)
        if new:
            self._gap = None
            self.events += new
            self.ids += [e["id"] for e in new]
            for event in new:
                self._by_workflow.setdefault(event["workflow_id"], []).append(event)
            if len(self.events) > KEEP:
                self._forget(len(self.events) - KEEP // 2)
            self.cursor = new[-1]["id"]
            async with self._changed:
                self._changed.notify_all()
        return len(new)

    def _forget(self, cut: int) -> None:
        """Drop the oldest `cut` kept events (a subscriber behind them reads the table)."""
        self.floor = self.ids[cut - 1]
        for gone in self.ids[:cut]:
            self._frames.pop(gone, None)
        del self.events[:cut], self.ids[:cut]
        for workflow_id, kept in list(self._by_workflow.items()):
            del kept[: bisect.bisect_right(kept, self.floor, key=_ID)]
            if not kept:
                del self._by_workflow[workflow_id]

    async def _gap_settled(self, conn: Conn, missing: int, before: tuple[int, int] | None) -> bool:
        """Whether ids from `missing` up to the next row can be passed over for good."""
        if before is None:  # SQLite: no gaps wait on other writers
            return True
        if self._gap is not None and self._gap[0] == missing:
            return before[0] >= self._gap[1]  # all that ran when it was seen have ended
        after = await store.snapshot(conn)
        assert after is not None
        self._gap = (missing, after[1])
        return False

    def frame(self, event: dict[str, Any]) -> bytes:
        """`event` as a Server-Sent Events frame (id, type, JSON data); made once for a kept
        event, whoever it is sent to."""
        found = self._frames.get(event["id"])
        if found is None:
            data = orjson.dumps(event).decode()
            found = ServerSentEvent(data, event=event["type"], id=str(event["id"])).encode()
            if event["id"] > self.floor and event["id"] <= self.cursor:
                self._frames[event["id"]] = found
        return found

    def _since(self, after: int, workflow_id: int | None) -> list[dict[str, Any]] | None:
        """The kept events after id `after` (of one workflow, or all); None if memory does not
        reach back that far."""
        if after < self.floor:
            return None
        if workflow_id is None:
            return self.events[bisect.bisect_right(self.ids, after) :]
        kept = self._by_workflow.get(workflow_id, [])
        return kept[bisect.bisect_right(kept, after, key=_ID) :]

    async def follow(
        self, after: int | None, filters: Filters, keepalive: float = 15.0
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Events after id `after` (None: from now on), forever, in batches of what is new; an
        empty batch now and then while nothing comes (for a keep-alive)."""
        await self.start()
        self.listeners += 1
        SUBSCRIBERS.inc()
        try:
            at = self.cursor if after is None else after
            while True:
                self._last_use = time.monotonic()
                if at >= self.cursor:
                    async with self._changed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), keepalive)
                    if at >= self.cursor:
                        await self.start()  # (a poller that stopped on an error restarts)
                        yield []
                    continue
                horizon = self.cursor
                batch = self._since(at, filters.workflow_id)
                if batch is None:  # far behind: from the table, up to what is settled

                    async def history(
                        conn: Conn, start: int = at, upto: int = horizon
                    ) -> list[dict[str, Any]]:
                        described, _ = await read_described(conn, start, PAGE, filters.workflow_id)
                        return [e for e in described if e["id"] <= upto]

                    batch = await in_transaction(self.db, history, write=False)
                    # (nothing of this workflow up to the horizon: all of it is passed)
                    at = batch[-1]["id"] if batch else horizon
                else:
                    at = horizon  # memory holds everything up to the horizon
                matched = [e for e in batch if filters.match(e)]
                if matched:
                    yield matched
        finally:
            self.listeners -= 1
            SUBSCRIBERS.dec()

    async def page(
        self, after: int, limit: int, filters: Filters
    ) -> tuple[list[dict[str, Any]], int]:
        """Up to `limit` matching events after id `after`, up to what is settled; and the id
        to ask after next (past what was read, also when nothing in it matched)."""
        await self.start()
        horizon = self.cursor
        found: list[dict[str, Any]] = []
        at = after
        for _ in range(10):  # read at most ten pages for one answer
            if at >= horizon or len(found) >= limit:
                break

            async def work(conn: Conn, start: int = at) -> tuple[list[dict[str, Any]], int]:
                return await read_described(conn, start, PAGE, filters.workflow_id)

            events, last = await in_transaction(self.db, work, write=False)
            for event in events:
                if event["id"] > horizon or len(found) >= limit:
                    break
                at = event["id"]
                if filters.match(event):
                    found.append(event)
            else:
                at = min(max(last, at), horizon) if events else horizon
        return found, at


async def check_not_pruned(db: Database, after: int) -> None:
    """Refuse a resume from before what retention has kept: the client would miss events."""
    if after <= 0:
        return
    through = await in_transaction(db, store.pruned_through, write=False)
    if after < through:
        raise Gone(
            f"events after {after} up to {through} were removed by retention "
            f"(FARMSTEAD_EVENT_RETENTION); ask again after {through} to go on with a gap",
            after=after,
            pruned_through=through,
        )


async def prune(db: Database, older_than: float, chunk: int) -> int:
    """Remove events older than `older_than` seconds in chunks; how many in all."""
    total = 0
    while True:
        removed = await in_transaction(db, lambda c: store.prune(c, older_than, chunk))
        total += removed
        if removed < chunk:
            return total
