"""`farmstead serve`: run the HTTP server (and its reconciler and local executor)."""

import asyncio
import json
import os
import shutil
import tempfile
from typing import Annotated

import typer

from farmstead import credentials
from farmstead.cli import preflight
from farmstead.cli.common import err, fail, load_settings
from farmstead.settings import DEFAULT_DATABASE_URL, Settings

#: prometheus_client's multiprocess directory (farmstead.metrics; not imported here: the CLI
#: starts fast)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The server stack (uvicorn, SQLAlchemy, alembic) is imported inside the commands that need it,
# so `farmstead worker run` on a compute node starts fast.


def _prepare_database(settings: Settings, upgrade_command: str) -> None:
    """A new SQLite file is created and migrated; anything else must already be at head.
    Every problem is one line and exit 2."""
    from farmstead.db.engine import make_database
    from farmstead.db.migrate import upgrade
    from farmstead.services.auth import bootstrap_admin
    from farmstead.services.lifecycle import SchemaNotReady, check_schema

    url = settings.database_url
    preflight.check_sqlite(url, create=True)
    path = preflight.sqlite_file(url)
    if path is not None and not path.exists():
        err.print(f"creating {path} and migrating it", markup=False)
        try:
            upgrade(url)
        except Exception as exc:
            preflight.discard_sqlite(path)  # no half-made file to trip the next start
            fail(f"cannot create the database {path}: {preflight.reason(exc)}", code=2)

    async def check() -> tuple[str | None, bool]:
        db = make_database(url)
        try:
            await check_schema(db, upgrade_command)
            if not settings.auth:
                return None, False
            held = sorted(set(credentials.read(settings.credentials_file).values()))
            return await bootstrap_admin(db, held)
        finally:
            await db.dispose()

    try:
        token, new = asyncio.run(check())
    except SchemaNotReady as exc:
        fail(str(exc), code=2)
    except Exception as exc:
        fail(f"cannot reach the database {preflight.shown(url)}: {preflight.reason(exc)}", code=2)
    if settings.auth:
        _announce(settings, token, new)


def _announce(settings: Settings, token: str | None, new: bool) -> None:
    """Where the admin token is (written for this server's local URLs), or how to get one."""
    if token is None:
        err.print(
            "auth is on; this database has admins already and this machine holds none of their "
            "tokens: set FARMSTEAD_TOKEN (an admin makes one: farmstead tokens create)",
            markup=False,
        )
        return
    urls = credentials.local_urls(settings.host, settings.port)
    path = credentials.store(urls, token, settings.credentials_file)
    what = "a new admin token" if new else "the admin token"
    err.print(
        f"auth is on: {what} is in {path} (readable by you only); the farmstead CLI on this "
        f"machine uses it for {urls[0]}; other clients send it as Authorization: Bearer <token>",
        markup=False,
    )


def _environment(settings: Settings) -> dict[str, str]:
    """The settings as FARMSTEAD_* variables, for the server processes uvicorn starts."""
    out = {}
    for key, value in settings.model_dump(mode="json").items():
        if value is not None:
            out[f"FARMSTEAD_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return out


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
    drain: Annotated[
        bool | None,
        typer.Option(
            "--drain/--no-drain",
            help="on Ctrl-C/SIGTERM, let running local tasks finish (a second Ctrl-C stops them) "
            "instead of stopping them for a retry (default: stop)",
        ),
    ] = None,
    shutdown_grace: Annotated[
        float | None,
        typer.Option(help="seconds a stopped local task has after SIGTERM before SIGKILL"),
    ] = None,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="require tokens (default); --no-auth only on a loopback address",
        ),
    ] = None,
) -> None:
    """Run the server. A new SQLite file is migrated on first start."""
    settings = load_settings(
        host=host,
        port=port,
        database_url=database_url,
        workers=workers,
        local_workers=local_workers,
        drain=drain,
        shutdown_grace=shutdown_grace,
        auth=auth,
    )
    # the port first: a server that cannot listen must not create or migrate a database
    preflight.check_port(settings.host, settings.port)
    hint = preflight.upgrade_command(
        settings.database_url, preflight.url_from_environment(database_url)
    )
    _prepare_database(settings, hint)
    # Worker processes build their own app from the environment: pass the settings along.
    os.environ.update(_environment(settings))
    metrics_dir = _metrics_dir(settings.workers)
    try:
        _run(settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_dir(workers: int) -> str | None:
    """Several server processes: a fresh directory where each writes its metrics, so a scrape
    of any of them adds up all (prometheus_client's multiprocess mode; set before they start).
    An operator's own PROMETHEUS_MULTIPROC_DIR is used as it is."""
    if workers <= 1 or os.environ.get(MULTIPROC_ENV):
        return None
    path = tempfile.mkdtemp(prefix="farmstead-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def _run(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        "farmstead.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
    )
