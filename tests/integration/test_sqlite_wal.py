"""SQLite only (PostgreSQL has no such thing): WAL checkpoints run off the write path.

The writer connection never checkpoints inside its own COMMIT (`wal_autocheckpoint=0`); the
checkpointer thread copies the log back into the database file a moment later.
"""

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from farmstead.db.engine import Conn, make_database
from helpers import wait_for


async def test_the_checkpointer_not_the_writer_copies_the_log_back(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    db = make_database(f"sqlite+aiosqlite:///{path}")
    assert db.checkpointer is not None
    try:

        async def create(conn: Conn) -> None:
            await conn.execute(text("CREATE TABLE blob (data BLOB)"))

        async def fill(conn: Conn) -> None:  # about 1 MB: far under the 1,000-page default
            for _ in range(250):
                await conn.execute(text("INSERT INTO blob VALUES (randomblob(4000))"))

        async def autocheckpoint(conn: Conn) -> int:
            return int((await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one())

        await db.run(create)
        before = path.stat().st_size
        await db.run(fill)
        assert await db.run(autocheckpoint) == 0
        assert os.path.getsize(f"{path}-wal") > 1_000_000  # it is all in the log so far

        grown = await asyncio.to_thread(
            wait_for, lambda: path.stat().st_size > before + 1_000_000, 10, "a checkpoint"
        )
        assert grown
        assert db.checkpointer.runs >= 1
    finally:
        await db.dispose()


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///:memory:"])
def test_no_checkpointer_without_a_file(url: str) -> None:
    assert make_database(url).checkpointer is None
