"""The models (db/models.py) and the migrations (alembic/) describe the same schema, on both
databases; migrations go down and up again and fill what they add."""

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from farmstead.db.migrate import alembic_config
from farmstead.db.models import Base


def _diff(url: str) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async def run() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def _sql(url: str, *statements: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            rows: list[Any] = []
            for sql in statements:
                result = await conn.execute(text(sql))
                if result.returns_rows:
                    rows = list(result.all())
            return rows
    finally:
        await engine.dispose()


def test_the_models_match_the_migrations(db_url: str) -> None:
    assert _diff(db_url) == []


def test_the_claim_order_migration_goes_down_and_up_and_copies_priorities(db_url: str) -> None:
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "0002")
    try:
        asyncio.run(
            _sql(
                db_url,
                "INSERT INTO workflow (id, name, created_date, retry_delay) "
                "VALUES (1, 'w', CURRENT_TIMESTAMP, 0)",
                'INSERT INTO "array" (id, workflow_id, name, max_concurrently_running, '
                "last_batch_num, created_date) VALUES (1, 1, 'a', 10, 1, CURRENT_TIMESTAMP)",
                "INSERT INTO task (id, workflow_id, array_id, name, command, status, "
                "status_date, num_attempts, max_attempts, priority) VALUES "
                "(1, 1, 1, 't1', 'true', 'Q', CURRENT_TIMESTAMP, 1, 3, 7), "
                "(2, 1, 1, 't2', 'true', 'Q', CURRENT_TIMESTAMP, 1, 3, 0)",
                "INSERT INTO task_instance (id, task_id, workflow_id, array_id, "
                "array_batch_num, array_step_id, status, status_date) VALUES "
                "(1, 1, 1, 1, 1, 0, 'Q', CURRENT_TIMESTAMP), "
                "(2, 2, 1, 1, 1, 1, 'Q', CURRENT_TIMESTAMP)",
            )
        )
    finally:
        command.upgrade(cfg, "head")
    rows = asyncio.run(_sql(db_url, "SELECT id, priority FROM task_instance ORDER BY id"))
    assert [tuple(r) for r in rows] == [(1, 7), (2, 0)]
    assert _diff(db_url) == []


_ROWS = (
    "INSERT INTO workflow (id, name, created_date, retry_delay) "
    "VALUES (1, 'w', CURRENT_TIMESTAMP, 0)",
    'INSERT INTO "array" (id, workflow_id, name, max_concurrently_running, '
    "last_batch_num, created_date) VALUES (1, 1, 'a', 10, 1, CURRENT_TIMESTAMP)",
    "INSERT INTO task (id, workflow_id, array_id, name, command, status, "
    "status_date, num_attempts, max_attempts) VALUES "
    "(1, 1, 1, 't1', 'true', 'R', CURRENT_TIMESTAMP, 1, 3), "
    "(2, 1, 1, 't2', 'true', 'O', CURRENT_TIMESTAMP, 1, 3), "
    "(3, 1, 1, 't3', 'true', 'D', CURRENT_TIMESTAMP, 1, 3)",
    "INSERT INTO task_instance (id, task_id, workflow_id, array_id, array_batch_num, "
    "array_step_id, status, status_date, report_by_date, last_report_date) VALUES "
    "(1, 1, 1, 1, 1, 0, 'R', CURRENT_TIMESTAMP, '2030-01-01 00:00:01', '2029-12-31 00:00:00'), "
    "(2, 2, 1, 1, 1, 1, 'O', CURRENT_TIMESTAMP, '2030-01-01 00:00:02', NULL), "
    "(3, 3, 1, 1, 1, 2, 'D', CURRENT_TIMESTAMP, '2030-01-01 00:00:03', NULL)",
)


def test_the_deadline_migration_moves_live_deadlines_out_and_back(db_url: str) -> None:
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "0003")
    try:
        asyncio.run(_sql(db_url, *_ROWS))
    finally:
        command.upgrade(cfg, "head")
    live = asyncio.run(
        _sql(
            db_url,
            "SELECT task_instance_id, report_by_date IS NOT NULL, last_report_date IS NOT NULL "
            "FROM task_instance_deadline ORDER BY task_instance_id",
        )
    )
    # the LAUNCHED and RUNNING instances have a deadline row, with what they held; none else
    assert [tuple(r) for r in live] == [(1, True, True), (2, True, False)]
    asyncio.run(
        _sql(
            db_url,
            "UPDATE task_instance_deadline SET report_by_date = '2031-01-01 00:00:00' "
            "WHERE task_instance_id = 1",
        )
    )
    command.downgrade(cfg, "0003")
    try:
        back = asyncio.run(
            _sql(db_url, "SELECT id, report_by_date FROM task_instance ORDER BY id")
        )
    finally:
        command.upgrade(cfg, "head")
    # a live deadline goes back to its instance (a heartbeat had moved it on)
    assert [str(r[1])[:4] for r in back] == ["2031", "2030", "2030"]
    assert _diff(db_url) == []


_COUNTED_ROWS = (
    "INSERT INTO workflow (id, name, created_date, retry_delay) "
    "VALUES (1, 'w', CURRENT_TIMESTAMP, 0), (2, 'v', CURRENT_TIMESTAMP, 0)",
    'INSERT INTO "array" (id, workflow_id, name, max_concurrently_running, '
    "last_batch_num, created_date) VALUES (1, 1, 'a', 10, 1, CURRENT_TIMESTAMP), "
    "(2, 1, 'b', 10, 1, CURRENT_TIMESTAMP), (3, 2, 'c', 10, 1, CURRENT_TIMESTAMP)",
    "INSERT INTO task (id, workflow_id, array_id, name, command, status, "
    "status_date, num_attempts, max_attempts) VALUES "
    "(1, 1, 1, 't1', 'true', 'Q', CURRENT_TIMESTAMP, 1, 3), "
    "(2, 1, 1, 't2', 'true', 'Q', CURRENT_TIMESTAMP, 1, 3), "
    "(3, 1, 1, 't3', 'true', 'D', CURRENT_TIMESTAMP, 1, 3), "
    "(4, 1, 2, 't4', 'true', 'R', CURRENT_TIMESTAMP, 1, 3), "
    "(5, 2, 3, 't5', 'true', 'H', CURRENT_TIMESTAMP, 0, 3)",
)
_COUNTS = "SELECT array_id, status, workflow_id, n FROM task_count WHERE n != 0 ORDER BY 1, 2"


def _has_task_count(url: str) -> bool:
    async def run() -> bool:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: inspect(c).has_table("task_count"))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_the_task_count_migration_goes_down_and_up_and_counts_the_tasks(db_url: str) -> None:
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "0010")
    try:
        assert not _has_task_count(db_url)
        asyncio.run(_sql(db_url, *_COUNTED_ROWS))
    finally:
        command.upgrade(cfg, "head")
    # the tasks there before are counted, per array and status
    counted = [tuple(r) for r in asyncio.run(_sql(db_url, _COUNTS))]
    assert counted == [(1, "D", 1, 1), (1, "Q", 1, 2), (2, "R", 1, 1), (3, "H", 2, 1)]
    if db_url.startswith("postgresql"):  # the array_count rows its triggers lock first
        arrays = asyncio.run(_sql(db_url, "SELECT array_id FROM array_count ORDER BY 1"))
        assert [r[0] for r in arrays] == [1, 2, 3]
    # and every move after, by the triggers it made
    asyncio.run(
        _sql(
            db_url,
            "UPDATE task SET status = 'D' WHERE id IN (1, 4)",
            "INSERT INTO task (id, workflow_id, array_id, name, command, status, status_date, "
            "num_attempts, max_attempts) VALUES (6, 2, 3, 't6', 'true', 'Q', CURRENT_TIMESTAMP, "
            "1, 3)",
        )
    )
    counted = [tuple(r) for r in asyncio.run(_sql(db_url, _COUNTS))]
    assert counted == [(1, "D", 1, 2), (1, "Q", 1, 1), (2, "D", 1, 1), (3, "H", 2, 1),
                       (3, "Q", 2, 1)]  # fmt: skip
    # down again: the table and its triggers are gone (a task still moves and is inserted)
    command.downgrade(cfg, "0010")
    try:
        assert not _has_task_count(db_url)
        asyncio.run(
            _sql(
                db_url,
                "UPDATE task SET status = 'F' WHERE id = 2",
                "INSERT INTO task (id, workflow_id, array_id, name, command, status, "
                "status_date, num_attempts, max_attempts) VALUES "
                "(7, 2, 3, 't7', 'true', 'Q', CURRENT_TIMESTAMP, 1, 3)",
                "DELETE FROM task WHERE id = 7",
            )
        )
    finally:
        command.upgrade(cfg, "head")
    counted = [tuple(r) for r in asyncio.run(_sql(db_url, _COUNTS))]
    assert counted == [(1, "D", 1, 2), (1, "F", 1, 1), (2, "D", 1, 1), (3, "H", 2, 1),
                       (3, "Q", 2, 1)]  # fmt: skip
    assert _diff(db_url) == []
