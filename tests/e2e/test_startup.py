"""Start-up errors of `farmstead serve` and `farmstead db …`, as real subprocesses: one line
naming the problem, exit 2, no traceback, nothing created; the hint for an un-migrated database
names that same database, and doing as told migrates it."""

import asyncio
import ctypes
import os
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import PG_ADMIN_URL, free_port
from farmstead.db.migrate import head_revision
from helpers import pg_admin

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "farmstead.cli.main"]
DB_COMMANDS = [["db", "upgrade"], ["db", "current"], ["db", "check"]]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, capability.h


def farmstead(*args: str, cwd: Path, env: dict[str, str] | None = None,
              obey_file_modes: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real CLI with no FARMSTEAD_* variable but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FARMSTEAD_")}
    return subprocess.run([*CLI, *args], cwd=cwd, env=clean | (env or {}),
                          preexec_fn=_obey_file_modes if obey_file_modes else None,
                          capture_output=True, text=True, timeout=120, check=False)


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *wanted: str) -> str:
    """Exit 2, no traceback, exactly one error line, which contains every `wanted`."""
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode == 2, out
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for word in wanted:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def sqlite(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def serve_args(url: str) -> list[str]:
    return ["serve", "--port", str(free_port()), "--database-url", url]


# ---- bad SQLite paths -----------------------------------------------------------------------


@pytest.mark.parametrize("command", [["serve"], *DB_COMMANDS], ids=" ".join)
@pytest.mark.parametrize("case", ["missing directory", "path is a directory"])
def test_a_bad_sqlite_path_is_one_line_and_exit_2(
    command: list[str], case: str, tmp_path: Path
) -> None:
    if case == "missing directory":
        path, named = tmp_path / "no" / "such" / "farmstead.db", "does not exist"
    else:
        path, named = tmp_path / "adir", "is a directory"
        path.mkdir()
    args = serve_args(sqlite(path)) if command == ["serve"] else [
        *command, "--database-url", sqlite(path)]
    assert_one_line_exit_2(farmstead(*args, cwd=tmp_path), str(path), named)
    assert not (tmp_path / "no").exists()


def test_db_commands_that_only_read_do_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    env = {"FARMSTEAD_DATABASE_URL": "sqlite+aiosqlite:///x.db"}
    for command in (["db", "current"], ["db", "check"]):
        line = assert_one_line_exit_2(farmstead(*command, cwd=tmp_path, env=env),
                                      "x.db", "does not exist", "farmstead db upgrade")
        assert "--database-url" not in line  # the URL came from the environment: same there
    assert list(tmp_path.iterdir()) == []


def _obey_file_modes() -> None:
    """In the child, before exec: drop root's power to ignore file modes (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH) from the capability bounding set, so root meets a read-only directory
    as any user does. A no-op for other users, who have no such power."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize(("command", "exists"), [
    *[(command, True) for command in [["serve"], *DB_COMMANDS]],
    (["serve"], False), (["db", "upgrade"], False),  # the commands that create a new file
], ids=lambda v: " ".join(v) if isinstance(v, list) else ("existing file" if v else "new file"))
def test_a_read_only_directory_is_one_line_and_exit_2(
    command: list[str], exists: bool, tmp_path: Path
) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir()
    path = directory / "farmstead.db"
    if exists:
        path.touch()
    directory.chmod(0o555)
    args = serve_args(sqlite(path)) if command == ["serve"] else [
        *command, "--database-url", sqlite(path)]
    try:
        result = farmstead(*args, cwd=directory, obey_file_modes=True)
    finally:
        directory.chmod(0o755)
    assert_one_line_exit_2(result, str(directory), "not writable")
    assert [p.name for p in directory.iterdir()] == (["farmstead.db"] if exists else [])


# ---- the port is checked before the database ------------------------------------------------


def test_a_port_in_use_is_exit_2_before_any_database_file_is_created(
    backend: str, db_url: str, tmp_path: Path
) -> None:
    url = sqlite(tmp_path / "new.db") if backend == "sqlite" else db_url
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = farmstead("serve", "--port", str(port), "--database-url", url, cwd=tmp_path)
    assert_one_line_exit_2(result, f"port {port}", "in use")
    assert list(tmp_path.iterdir()) == []  # no database file, nothing else either


# ---- which database: said by every db command, hinted with the same URL ---------------------


@pytest.fixture
def fresh_pg_url(postgresql_url: str) -> Iterator[str]:
    """A new, empty (un-migrated) PostgreSQL database; dropped afterwards."""
    name = f"farmstead_fresh_{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(pg_admin(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _revision(url: str) -> str | None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            exists = (await conn.execute(text("SELECT to_regclass('alembic_version')"))).scalar()
            if exists is None:
                return None
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    finally:
        await engine.dispose()


def test_unmigrated_postgresql_hint_names_that_database_and_doing_as_told_migrates_it(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    # from the environment: the same environment finds the same database, no URL needed
    env = {"FARMSTEAD_DATABASE_URL": fresh_pg_url, "FARMSTEAD_PORT": str(free_port())}
    line = assert_one_line_exit_2(farmstead("serve", cwd=tmp_path, env=env))
    assert line.endswith("Run: farmstead db upgrade"), line

    # from the flag: the hint must carry it
    line = assert_one_line_exit_2(farmstead(*serve_args(fresh_pg_url), cwd=tmp_path),
                                  "never been migrated")
    hint = line.split("Run: ", 1)[1]
    assert hint == f"farmstead db upgrade --database-url '{fresh_pg_url}'", line

    # as a user would: paste the command, in the same shell (no FARMSTEAD_DATABASE_URL)
    result = farmstead(*shlex.split(hint)[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"migrating {fresh_pg_url}" in result.stderr
    assert asyncio.run(_revision(fresh_pg_url)) == head_revision()
    assert not (tmp_path / "farmstead.db").exists()  # not the default SQLite file


def test_unmigrated_default_sqlite_is_hinted_with_its_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "farmstead.db").touch()  # an empty file: never migrated
    line = assert_one_line_exit_2(farmstead("serve", "--port", str(free_port()), cwd=tmp_path))
    hint = line.split("Run: ", 1)[1]
    assert hint == f"farmstead db upgrade --database-url '{sqlite(tmp_path / 'farmstead.db')}'"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert farmstead(*shlex.split(hint)[1:], cwd=elsewhere).returncode == 0
    assert list(elsewhere.iterdir()) == []
    assert farmstead("db", "current", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("command", DB_COMMANDS, ids=" ".join)
def test_db_commands_say_which_database_they_act_on(
    command: list[str], db_url: str, tmp_path: Path
) -> None:
    result = farmstead(*command, "--database-url", db_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert db_url in result.stderr.splitlines()[0]


def test_no_command_prints_the_password(fresh_pg_url: str, tmp_path: Path) -> None:
    secret = "s3cret-pw"  # the test server trusts every local login: any password will do
    url = fresh_pg_url.replace("postgres@", f"postgres:{secret}@")
    assert url != fresh_pg_url
    results = [farmstead(*serve_args(url), cwd=tmp_path)] + [
        farmstead(*command, "--database-url", url, cwd=tmp_path) for command in DB_COMMANDS]
    for result in results:
        out = result.stdout + result.stderr
        assert secret not in out and "postgres:***@" in out, out
