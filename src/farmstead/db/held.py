"""PostgreSQL connections held between transactions, ready for the next one.

Taking a connection from SQLAlchemy's pool and giving it back costs a check-out, a reset and a
check-in each time, several times what a heartbeat's one statement costs. These connections
are taken from the pool once and kept: the most recently used first (warm), at most `size` of
them, each waiter served in turn. A lost connection is closed and its place freed.
"""

import asyncio
import contextlib
from typing import Any

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

#: a held connection and its driver-level adapter
Held = tuple[AsyncConnection, Any]


class HeldConnections:
    """At most `size` connections; `acquire` waits up to `timeout` seconds for one."""

    def __init__(self, engine: AsyncEngine, size: int, timeout: float) -> None:
        self._engine = engine
        self._timeout = timeout
        # idle connections on top of `None` tokens, each a place for a connection not open yet
        self._free: asyncio.LifoQueue[Held | None] = asyncio.LifoQueue()
        for _ in range(size):
            self._free.put_nowait(None)

    async def acquire(self) -> Held:
        """An idle connection, or a new one while there is room, else the next one freed."""
        try:
            item = self._free.get_nowait()
        except asyncio.QueueEmpty:
            try:
                item = await asyncio.wait_for(self._free.get(), self._timeout)
            except TimeoutError:
                raise PoolTimeout(
                    f"no database connection free within {self._timeout:g} s"
                ) from None
        if item is not None:
            return item
        try:
            conn = await self._engine.connect()
            raw = await conn.get_raw_connection()
        except BaseException:
            self._free.put_nowait(None)
            raise
        return conn, raw.dbapi_connection

    async def release(self, held: Held, healthy: bool) -> None:
        """Give a connection back (`healthy`: ready for the next transaction)."""
        if healthy and not held[0].invalidated:
            self._free.put_nowait(held)
            return
        self._free.put_nowait(None)
        with contextlib.suppress(Exception):  # a lost connection may fail to close
            await held[0].close()

    async def close(self) -> None:
        """Close every idle connection."""
        while not self._free.empty():
            held = self._free.get_nowait()
            if held is not None:
                with contextlib.suppress(Exception):
                    await held[0].close()
