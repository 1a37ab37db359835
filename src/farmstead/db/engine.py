"""Engines and session factories for SQLite (WAL, BEGIN IMMEDIATE) and PostgreSQL (asyncpg)."""

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


@dataclass
class Database:
    """The engines of one database: `write` for transitions, `read` for queries."""

    url: str
    write_engine: AsyncEngine
    read_engine: AsyncEngine
    write: async_sessionmaker[AsyncSession]
    read: async_sessionmaker[AsyncSession]
    #: SQLite has one writer at a time: writers of this process queue here, in order, rather
    #: than sleep in SQLite's busy handler (which backs off and ruins tail latency).
    write_lock: asyncio.Lock | None = None

    @property
    def is_sqlite(self) -> bool:
        """True when the database is an SQLite file."""
        return self.write_engine.dialect.name == "sqlite"

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


def _sqlite_engine(url: str, lock_timeout: float, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": lock_timeout})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction that later upgrades
        # to a writer gets SQLITE_BUSY at once, without waiting on the busy timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_database(url: str, lock_timeout: float = 5.0, pool_size: int = 20) -> Database:
    """Create the engines for `url` (nothing connects until first use)."""
    if url.startswith("sqlite"):
        write = _sqlite_engine(url, lock_timeout, immediate=True)
        read = _sqlite_engine(url, lock_timeout, immediate=False)
    else:
        # No overflow: a burst waits for a pooled connection instead of opening (and closing
        # again) connections of its own, which costs PostgreSQL a process fork each.
        write = read = create_async_engine(
            url,
            pool_size=pool_size,
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
    return Database(
        url=url,
        write_engine=write,
        read_engine=read,
        write=async_sessionmaker(write, expire_on_commit=False, autoflush=False),
        read=async_sessionmaker(read, expire_on_commit=False, autoflush=False),
        write_lock=asyncio.Lock() if url.startswith("sqlite") else None,
    )
