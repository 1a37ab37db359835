"""The database: whole transactions run by `Database.run`, on PostgreSQL or an SQLite file.

A transaction is a coroutine function `work(conn)` run once, inside BEGIN … COMMIT (rolled back
if it raises). `conn` offers `execute` (SQLAlchemy Core statements) and `dialect`.

- PostgreSQL (asyncpg): `work` runs on the event loop with a pooled `AsyncConnection`.
- SQLite: `work` runs whole on a database thread (`db/threads.py`) that owns one connection:
  one hop from the event loop and back per transaction, however many statements it has, and
  no row lock held while the event loop is busy with other requests. Writes go to one writer
  thread, in order (SQLite has one writer at a time; `BEGIN IMMEDIATE` takes its lock up front);
  reads to reader threads beside it (WAL mode lets them run while the writer writes).
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable

from farmstead.db.checkpointer import Checkpointer
from farmstead.db.held import HeldConnections
from farmstead.db.prepared import ParamSets, Prepared, Rows
from farmstead.db.threads import AnyResult, ThreadPool

T = TypeVar("T")


class Conn(Protocol):
    """What a transaction's work sees: Core statements in, buffered results out."""

    @property
    def dialect(self) -> Dialect:
        """The database dialect."""

    async def execute(self, statement: Executable, parameters: Any = None) -> AnyResult:
        """Run one statement (a list of parameter dicts: executemany)."""

    async def run(self, prepared: Prepared, params: ParamSets = None) -> Rows:
        """Run a prepared statement (db/prepared.py): the hot path."""


class PgConn:
    """A PostgreSQL connection as a transaction's work sees it.

    Core statements go through SQLAlchemy. Prepared statements go straight to asyncpg (its
    own prepared-statement cache, no execution context per call), inside the transaction
    SQLAlchemy began: SQLAlchemy's asyncpg adapter starts it lazily, on the first statement,
    so a prepared statement that comes first starts it the same way.
    """

    __slots__ = ("_adapter", "_begin", "_conn", "dialect")

    def __init__(self, conn: AsyncConnection, adapter: Any, begin: bool = True) -> None:
        self._conn = conn
        self._adapter = adapter
        self._begin = begin  # False: one statement, run on its own (autocommit)
        self.dialect: Dialect = conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> AnyResult:
        """Run one statement."""
        return await self._conn.execute(statement, parameters)

    async def run(self, prepared: Prepared, params: ParamSets = None) -> Rows:
        """Run a prepared statement on asyncpg, in this transaction."""
        adapter = self._adapter
        driver = adapter._connection
        compiled = prepared.compiled(self.dialect)
        try:
            if self._begin and adapter._transaction is None:
                await adapter._start_transaction()
            if isinstance(params, list):
                await driver.executemany(compiled.sql, [compiled.values(p) for p in params])
                return Rows([], len(params))
            values = compiled.values(params or {})  # type: ignore[arg-type]
            if compiled.returns_rows:
                rows = await driver.fetch(compiled.sql, *values)
                return Rows(compiled.convert(rows), len(rows))
            status = await driver.execute(compiled.sql, *values)
        except Exception as exc:
            if driver.is_closed():  # lost: never hand this connection out again
                with contextlib.suppress(Exception):
                    await self._conn.invalidate(exc)
                raise ConnectionError("the database connection was lost") from exc
            adapter._handle_exception(exc)  # as SQLAlchemy's own: wrapped as a DBAPI error
            raise
        return Rows([], int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0)


Work = Callable[[Conn], Awaitable[T]]


@dataclass
class Database:
    """One database: `run` for transactions; the async engine for tools and tests."""

    url: str
    engine: AsyncEngine
    writer: ThreadPool | None = None  # SQLite: the writer thread
    readers: ThreadPool | None = None  # SQLite: the reader threads
    extra: list[Engine] = field(default_factory=list)
    held: HeldConnections | None = None  # PostgreSQL: connections kept ready (db/held.py)
    checkpointer: Checkpointer | None = None  # SQLite: WAL checkpoints off the write path
    #: small per-database caches of the services (e.g. what a claim knows of its agent)
    memo: dict[Any, Any] = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        """True when the database is an SQLite file."""
        return self.engine.dialect.name == "sqlite"

    @property
    def write_engine(self) -> AsyncEngine:
        """The async engine (kept under its old name for tools and tests)."""
        return self.engine

    read_engine = write_engine

    async def run(self, work: "Work[T]", *, write: bool = True, single: bool = False) -> T:
        """Run `work(conn)` in one transaction: committed if it returns, rolled back if not.

        `single`: `work` runs prepared statements (`conn.run`) that each stand alone (one
        write, or reads that need not share a snapshot): no BEGIN and COMMIT around them (two
        round trips fewer on PostgreSQL); each is applied atomically on its own."""
        if self.writer is not None and self.readers is not None:
            if write and self.checkpointer is not None:
                self.checkpointer.ensure_started()
            return await (self.writer if write else self.readers).run(work, single)
        assert self.held is not None
        conn, adapter = held = await self.held.acquire()
        healthy = False
        try:
            if single:
                result = await work(PgConn(conn, adapter, begin=False))
            else:
                async with conn.begin():
                    result = await work(PgConn(conn, adapter))
            healthy = True
            return result
        finally:
            await self.held.release(held, healthy)

    async def dispose(self) -> None:
        """Stop the database threads and close every pooled connection."""
        if self.held is not None:
            await self.held.close()
        for pool in (self.writer, self.readers):
            if pool is not None:
                await pool.close()
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.close)
        for sync_engine in self.extra:
            sync_engine.dispose()
        await self.engine.dispose()


def _sqlite_setup(
    sync_engine: Engine, lock_timeout: float, immediate: bool, autocheckpoint: bool = True
) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        if not autocheckpoint:  # db/checkpointer.py checkpoints for this connection
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction that later upgrades
        # to a writer gets SQLITE_BUSY at once, without waiting on the busy timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_thread_engine(
    url: str, lock_timeout: float, immediate: bool, autocheckpoint: bool = True
) -> Engine:
    sync_url = make_url(url).set(drivername="sqlite+pysqlite")
    engine = create_engine(
        sync_url, connect_args={"timeout": lock_timeout, "check_same_thread": False}
    )
    _sqlite_setup(engine, lock_timeout, immediate, autocheckpoint)
    return engine


def make_database(
    url: str, lock_timeout: float = 5.0, pool_size: int = 20, sqlite_readers: int = 2
) -> Database:
    """Create the engines for `url` (nothing connects until first use)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": lock_timeout})
        _sqlite_setup(engine.sync_engine, lock_timeout, immediate=False)
        path = make_url(url).database
        checkpointer = None
        if path and path != ":memory:" and not path.startswith("file:"):
            checkpointer = Checkpointer(path, lock_timeout=lock_timeout)
        write = _sqlite_thread_engine(
            url, lock_timeout, immediate=True, autocheckpoint=checkpointer is None
        )
        read = _sqlite_thread_engine(url, lock_timeout, immediate=False)
        return Database(
            url=url,
            engine=engine,
            writer=ThreadPool(write, 1, "farmstead-db-writer"),
            readers=ThreadPool(read, sqlite_readers, "farmstead-db-reader"),
            extra=[write, read],
            checkpointer=checkpointer,
        )
    # No overflow: a burst waits for a pooled connection instead of opening (and closing
    # again) connections of its own, which costs PostgreSQL a process fork each.
    engine = create_async_engine(
        url,
        pool_size=pool_size + 2,
        max_overflow=0,
        pool_timeout=lock_timeout * 2,
        pool_pre_ping=False,
        connect_args={
            "timeout": 10,
            "server_settings": {
                "lock_timeout": str(int(lock_timeout * 1000)),
                "application_name": "farmstead",
            },
        },
    )
    # the requests' connections are held ready; the pool keeps two more for everything else
    held = HeldConnections(engine, pool_size, lock_timeout * 2)
    return Database(url=url, engine=engine, held=held)
