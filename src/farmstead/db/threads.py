"""Database threads: each owns one SQLite connection and runs whole transactions on it.

A transaction's work is a coroutine function; it runs on the thread's own event loop, where
`execute` calls the driver directly (it never waits on anything but SQLite). The caller's
event loop hands the work over and gets the result back: two thread hops per transaction.
"""

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Dialect, Engine, Result
from sqlalchemy.sql.base import Executable

from farmstead.db.prepared import ParamSets, Prepared, Rows

T = TypeVar("T")
#: a buffered result of any columns
AnyResult = Result[*tuple[Any, ...]]


class ThreadConn:
    """A connection as a transaction's work sees it, on its database thread."""

    __slots__ = ("_conn", "_driver", "dialect")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._driver: Any = conn.connection.dbapi_connection
        self.dialect: Dialect = conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> AnyResult:
        """Run one statement now, on this thread."""
        return self._conn.execute(statement, parameters)

    async def run(self, prepared: Prepared, params: ParamSets = None) -> Rows:
        """Run a prepared statement on the driver's cursor (db/prepared.py)."""
        compiled = prepared.compiled(self.dialect)
        cursor = self._driver.cursor()
        try:
            if isinstance(params, list):
                cursor.executemany(compiled.sql, [compiled.values(p) for p in params])
                return Rows([], cursor.rowcount)
            cursor.execute(compiled.sql, compiled.values(params or {}))  # type: ignore[arg-type]
            rows = compiled.convert(cursor.fetchall()) if cursor.description else []
            return Rows(rows, cursor.rowcount)
        finally:
            cursor.close()


class DatabaseThread:
    """A thread with an event loop and one connection; transactions run on it one at a time."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._start_lock = threading.Lock()
        self.pending = 0  # transactions handed over and not answered yet

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name=self._name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def _serve(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        self._lock = asyncio.Lock()
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            loop.close()

    async def _transaction(self, work: Callable[[ThreadConn], Awaitable[T]], single: bool) -> T:
        assert self._lock is not None
        async with self._lock:  # work never awaits anything else; the lock makes sure of it
            if self._conn is None or self._conn.invalidated or self._conn.closed:
                if self._conn is not None:
                    self._conn.close()
                self._conn = self._engine.connect()
            conn = self._conn
            if single:  # one statement: SQLite applies it atomically on its own
                return await work(ThreadConn(conn))
            with conn.begin():
                return await work(ThreadConn(conn))

    async def run(self, work: Callable[[ThreadConn], Awaitable[T]], single: bool = False) -> T:
        """Run `work` in one transaction on this thread; its result or its exception.

        `single`: `work` runs one statement, which needs no transaction around it."""
        loop = self._ensure_started()
        self.pending += 1
        try:
            coro = self._transaction(work, single)
            future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
            return await asyncio.wrap_future(future)
        finally:
            self.pending -= 1

    def close(self) -> None:
        """Stop the thread once the transactions handed over are done; close the connection."""
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()


class ThreadPool:
    """Database threads of one kind (the writer, or the readers); work goes to the least busy."""

    def __init__(self, engine: Engine, size: int, name: str) -> None:
        self.threads = [DatabaseThread(engine, f"{name}-{i}") for i in range(max(1, size))]

    async def run(self, work: Callable[[ThreadConn], Awaitable[T]], single: bool = False) -> T:
        """Run `work` in one transaction on one of the threads."""
        thread = min(self.threads, key=lambda t: t.pending)
        return await thread.run(work, single)

    async def close(self) -> None:
        """Stop every thread."""
        for thread in self.threads:
            await asyncio.to_thread(thread.close)
