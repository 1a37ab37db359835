"""`farmstead serve`: run the HTTP server (and its reconciler and local executor)."""

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from farmstead.cli.common import err, fail, load_settings
from farmstead.settings import DEFAULT_DATABASE_URL, Settings

# The server stack (uvicorn, SQLAlchemy, alembic) is imported inside the commands that need it,
# so `farmstead worker run` on a compute node starts fast.


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix) or ":memory:" in url:
        return None
    return Path(url[len(prefix) :].split("?")[0])


def _prepare_database(settings: Settings) -> None:
    """A new SQLite file is created and migrated; anything else must already be at head."""
    from farmstead.db.engine import make_database
    from farmstead.db.migrate import upgrade
    from farmstead.services.lifecycle import SchemaNotReady, check_schema

    path = _sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        err.print(f"creating {path} and migrating it")
        upgrade(settings.database_url)

    async def check() -> None:
        db = make_database(settings.database_url)
        try:
            await check_schema(db)
        finally:
            await db.dispose()

    try:
        asyncio.run(check())
    except SchemaNotReady as exc:
        fail(str(exc), code=2)
    except Exception as exc:
        fail(f"cannot reach the database: {exc}", code=2)


def serve(
    host: Annotated[str | None, typer.Option(help="default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default 8000")] = None,
    database_url: Annotated[
        str | None, typer.Option(help=f"default {DEFAULT_DATABASE_URL}")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="server processes (default 1)")] = None,
    local_workers: Annotated[
        int | None, typer.Option(help="run up to N tasks on this machine (default 0: none)")
    ] = None,
) -> None:
    """Run the server. A new SQLite file is migrated on first start."""
    import uvicorn

    settings = load_settings(
        host=host,
        port=port,
        database_url=database_url,
        workers=workers,
        local_workers=local_workers,
    )
    _prepare_database(settings)
    # Worker processes build their own app from the environment: pass the settings along.
    for key, value in settings.model_dump().items():
        os.environ[f"FARMSTEAD_{key.upper()}"] = str(value)
    uvicorn.run(
        "farmstead.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
    )
