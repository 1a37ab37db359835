"""The Celery relay: every event with a Celery type, published to a Celery broker in Celery's
event message format, for Celery's own consumers (Flower, HySDS's monitors, `EventReceiver`).

It reads the outbox (the event table) after commit, through this process's event feed (so it
never passes an event whose transaction is still open), in id order, and publishes to the
topic exchange Celery's consumers bind to (`celeryev`; routing key `task.succeeded` for
`task-succeeded`). Its position is kept in the database and moved on only once the broker
confirmed the batch: at least once, in order per task. One relay runs at a time: on PostgreSQL
the process holding its position's row lock, on SQLite the process holding a lock file. A broker
that is down or restarting is retried with backoff; transitions never wait for it (the events
wait in the table and go out when it is back).
"""

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm.celery import TASK_EVENTS, WORKER_EVENTS
from farmstead.services.events import EventFeed, read_described
from farmstead.services.uow import in_transaction
from farmstead.settings import Settings
from farmstead.store import events as store

log = logging.getLogger("farmstead.celery")
CELERY_TYPES = frozenset(TASK_EVENTS + WORKER_EVENTS)
#: events read (and published) per round
BATCH = 500
#: the fields Celery's consumers expect on task events it sends itself
_TASK_DEFAULTS = {"args": "()", "kwargs": "{}", "eta": None, "expires": None}


#: the fields of Celery's own event messages; farmstead's others go under "farmstead" (Celery's
#: State sets every top-level field on its Task and Worker objects: `id` would clash)
CELERY_FIELDS = frozenset(
    {
        "type", "uuid", "name", "hostname", "timestamp", "utcoffset", "pid", "clock",
        "retries", "runtime", "result", "exception", "traceback", "terminated", "signum",
        "expired", "args", "kwargs", "eta", "expires",
    }
)  # fmt: skip


def message(event: dict[str, Any]) -> dict[str, Any]:
    """A stream event as Celery's event message body (farmstead's fields under `farmstead`)."""
    body = {k: v for k, v in event.items() if k in CELERY_FIELDS and v is not None}
    body["farmstead"] = {k: v for k, v in event.items() if k not in CELERY_FIELDS}
    body["type"] = event["type"]
    body["hostname"] = event.get("hostname") or "farmstead"
    body["utcoffset"] = 0
    pid = str(event.get("pid") or "")
    body["pid"] = int(pid) if pid.isdigit() else 0
    if event["type"] in ("task-sent", "task-received"):
        body = {**_TASK_DEFAULTS, **body}
        body.setdefault("retries", 0)
    if event["type"] == "task-succeeded":
        body.setdefault("result", None)
    if event["type"].startswith("worker-"):
        details = event.get("details") or {}
        for key in ("freq", "sw_ident", "sw_ver"):
            if key in details:
                body[key] = details[key]
        body.setdefault("sw_sys", "Linux")
        body.setdefault("active", 0)
        body.setdefault("processed", 0)
    return body


class Publisher:
    """A connection to the broker and a producer on Celery's event exchange (kombu; blocking:
    called in a thread)."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange_name = exchange
        self._conn: Any = None
        self._producer: Any = None

    def publish(self, messages: list[dict[str, Any]]) -> None:
        """Publish `messages` in order; returns once the broker has them (confirms on AMQP)."""
        kombu: Any = importlib.import_module("kombu")  # (imported when a broker is set)
        if self._conn is None:
            conn = kombu.Connection(
                self.url, connect_timeout=5, transport_options={"confirm_publish": True}
            )
            conn.ensure_connection(max_retries=1)
            exchange = kombu.Exchange(self.exchange_name, type="topic", durable=True)
            channel = conn.default_channel
            exchange(channel).declare()
            self._conn = conn
            self._producer = kombu.Producer(channel, exchange=exchange, serializer="json")
        for body in messages:
            self._producer.publish(
                body,
                routing_key=body["type"].replace("-", "."),
                headers={"hostname": body["hostname"]},
                delivery_mode=2,
                retry=False,
            )

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.release()
        self._conn = self._producer = None


class CeleryRelay:
    """The loop (see the module's docstring)."""

    def __init__(self, db: Database, feed: EventFeed, settings: Settings) -> None:
        assert settings.celery_broker_url
        self.db = db
        self.feed = feed
        self.publisher = Publisher(settings.celery_broker_url, settings.celery_event_exchange)
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.feed.listeners += 1  # keeps the feed reading while the relay runs
        backoff, failing = 0.5, False
        try:
            while not stop.is_set():
                try:
                    sent = await self.relay_once()
                    if failing:
                        log.warning("the Celery broker is reachable again: publishing")
                    backoff, failing = 0.5, False
                    if sent:
                        continue
                    delay = self.feed.poll_interval
                except Exception as exc:  # the broker (or the database) away: try again later
                    if not failing:
                        log.warning("cannot publish to the Celery broker (%s); retrying", exc)
                    failing = True
                    await asyncio.to_thread(self.publisher.close)
                    delay, backoff = backoff, min(backoff * 2, 30.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            self.feed.listeners -= 1
            await asyncio.to_thread(self.publisher.close)

    async def relay_once(self) -> int:
        """Publish the next batch; how many events it held (0: nothing new, or another process
        relays). On PostgreSQL in one transaction holding the position's row lock; on SQLite a
        read, the publication, then a write of its own (a write held open while the broker
        answers would stop every other writer; the lock file keeps other relays away)."""
        await self.feed.start()
        horizon = self.feed.cursor
        if self.db.is_sqlite:
            at = await in_transaction(self.db, lambda c: store.relay_cursor(c, False), write=False)
            assert at is not None

            async def read(start: int) -> tuple[list[dict[str, Any]], int]:
                return await in_transaction(
                    self.db, lambda c: read_described(c, start, BATCH), write=False
                )

            async def move(upto: int) -> None:
                await in_transaction(self.db, lambda c: store.set_relay_cursor(c, upto))

            return await self._advance(at, horizon, read, move)

        async def work(conn: Conn) -> int:
            at = await store.relay_cursor(conn, lock=True)
            if at is None:
                return 0  # another process relays
            return await self._advance(
                at,
                horizon,
                lambda start: read_described(conn, start, BATCH),
                lambda upto: store.set_relay_cursor(conn, upto),
            )

        return await in_transaction(self.db, work)

    async def _advance(
        self,
        at: int,
        horizon: int,
        read: Callable[[int], Awaitable[tuple[list[dict[str, Any]], int]]],
        move: Callable[[int], Awaitable[None]],
    ) -> int:
        """From position `at` up to `horizon`: read a batch, publish its Celery events, move
        the position past it. How many events it held."""
        if at < 0:  # the first start: from now on (not the whole history)
            await move(horizon)
            return 0
        if at >= horizon:
            return 0
        events, last = await read(at)
        events = [e for e in events if e["id"] <= horizon]
        batch = [message(e) for e in events if e["type"] in CELERY_TYPES]
        if batch:
            await asyncio.to_thread(self.publisher.publish, batch)
        await move(events[-1]["id"] if events else min(last, horizon))
        self.published += len(batch)
        return len(events)
