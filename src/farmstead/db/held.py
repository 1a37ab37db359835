"""PostgreSQL connections held between transactions, ready for the next one.

Taking a connection from SQLAlchemy's pool and giving it back costs a check-out, a reset and a
check-in each time, several times what a heartbeat's one statement costs. These connections
are taken from the pool once and kept: the most recently used first (warm), at most `size` of
them, each waiter served in turn. A lost connection is closed and its place freed.
"""

import asyncio
import collections
import contextlib
from typing import Any

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

#: a held connection and its driver-level adapter
Held = tuple[AsyncConnection, Any]


class HeldConnections:
    """At most `size` connections; `acquire` waits up to `timeout` seconds for one.

    Waiters are served strictly in turn: a connection given back goes straight to the oldest
    waiter, never to a request that arrives meanwhile. (An `asyncio.Queue` lets a newcomer take
    the connection before the woken waiter runs; that waiter then queues again at the back, and
    under load a few requests waited many turns: the long tail of p99.)
    """

    def __init__(self, engine: AsyncEngine, size: int, timeout: float) -> None:
        self._engine = engine
        self._timeout = timeout
        # idle connections on top of `None` tokens, each a place for a connection not open yet
        self._free: list[Held | None] = [None] * size
        self._waiters: collections.deque[asyncio.Future[Held | None]] = collections.deque()

    async def acquire(self) -> Held:
        """An idle connection, or a new one while there is room, else the next one freed."""
        if self._free and not self._waiters:
            item = self._free.pop()  # the most recently used (warm) first
        else:
            item = await self._wait()
        if item is not None:
            return item
        try:
            conn = await self._engine.connect()
            raw = await conn.get_raw_connection()
        except BaseException:
            self._give(None)
            raise
        return conn, raw.dbapi_connection

    async def _wait(self) -> Held | None:
        waiter: asyncio.Future[Held | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                if isinstance(exc, TimeoutError):
                    return waiter.result()  # handed over as the time ran out: take it
                self._give(waiter.result())  # cancelled after the hand-over: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"no database connection free within {self._timeout:g} s"
                ) from None
            raise

    def _give(self, item: Held | None) -> None:
        """A free place (a connection or a token) to the oldest waiter, else to the idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        self._free.append(item)

    async def release(self, held: Held, healthy: bool) -> None:
        """Give a connection back (`healthy`: ready for the next transaction)."""
        if healthy and not held[0].invalidated:
            self._give(held)
            return
        self._give(None)
        with contextlib.suppress(Exception):  # a lost connection may fail to close
            await held[0].close()

    async def close(self) -> None:
        """Close every idle connection."""
        while self._free:
            held = self._free.pop()
            if held is not None:
                with contextlib.suppress(Exception):
                    await held[0].close()
