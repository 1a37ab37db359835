"""Shared fixtures: a real SQLite file and a real PostgreSQL database, migrated by alembic.

Every integration test runs on both (`backend` is parametrized). Without PostgreSQL the
postgresql cases are skipped locally and fail in CI (CI=true).
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from farmstead.api.app import create_app
from farmstead.db.engine import Database, make_database
from farmstead.db.migrate import upgrade
from farmstead.settings import Settings
from helpers import pg_admin

PG_ADMIN_URL = os.environ.get(
    "FARMSTEAD_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"
TABLES = [
    "agent",
    "taskfarm_worker",
    "api_token",
    "app_user",
    "event",
    "farm_state",
    "task_instance_error_log",
    "task_instance_deadline",
    "task_instance",
    "task_edge",
    "workflow_edge",
    "task",
    "array",
    "workflow",
    "queue",
    "array_count",  # after task_instance: deleting instances counts them down (SQLite)
    "task_count",  # after task, likewise
]


def _pg_reachable() -> bool:
    async def probe() -> None:
        engine = create_async_engine(PG_ADMIN_URL)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every server and CLI the tests start keep their tokens here, never in the user's own
    ~/.config/farmstead."""
    path = tmp_path_factory.mktemp("credentials") / "credentials.json"
    # Auth is off unless a test turns it on (tests/e2e/test_auth.py and others that do).
    given = {"FARMSTEAD_CREDENTIALS_FILE": str(path), "FARMSTEAD_AUTH": "false"}
    old = {k: os.environ.get(k) for k in given}
    os.environ.update(given)
    yield path
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "farmstead.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    if not _pg_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL not reachable")
    name = f"farmstead_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    asyncio.run(pg_admin(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on."""
    return str(request.param)


async def _truncate(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            if url.startswith("postgresql"):
                quoted = ", ".join(f'"{t}"' for t in TABLES)
                await conn.execute(text(f"TRUNCATE {quoted} RESTART IDENTITY"))
            else:
                for table in TABLES:
                    await conn.execute(text(f'DELETE FROM "{table}"'))
    finally:
        await engine.dispose()


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A migrated, empty database of the test's backend."""
    url = str(request.getfixturevalue(f"{backend}_url"))
    asyncio.run(_truncate(url))
    return url


@pytest.fixture
def settings(db_url: str) -> Settings:
    """Settings for an in-process app: the reconciler off unless a test turns it on."""
    return Settings(database_url=db_url, reconciler_enabled=False)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """Engines on the test database, for tests that call services directly."""
    database = make_database(db_url)
    yield database
    await database.dispose()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process (lifespan included)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A real `farmstead serve` process on a free port."""

    def __init__(self, db_url: str, log_path: Path, **env: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.log_path = log_path
        self.env = {f"FARMSTEAD_{k.upper()}": str(v) for k, v in env.items()}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> "ServerProcess":
        """Start it and wait until it answers; a server that does not is stopped, not left
        running (a loaded machine can take long to start two processes)."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop(kill=True)
            raise

    def _start(self, timeout: float) -> "ServerProcess":
        env = {**os.environ, **self.env, "FARMSTEAD_DATABASE_URL": self.db_url}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "farmstead.cli.main", "serve", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server_factory(db_url: str, tmp_path: Path) -> Iterator[Any]:
    """Start real server processes on the test database: `server_factory(**settings)`."""
    started: list[ServerProcess] = []

    def start(**env: Any) -> ServerProcess:
        env.setdefault("reconciler_enabled", "false")
        server = ServerProcess(db_url, tmp_path / f"server{len(started)}.log", **env).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: Any) -> ServerProcess:
    """One real server process on the test database."""
    return server_factory()  # type: ignore[no-any-return]
