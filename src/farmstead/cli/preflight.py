"""Checks `serve` and `db` make before they touch a database or open a port.

Each problem becomes one line on stderr and exit code 2 ("cannot start"), never a traceback.
"""

import errno
import os
import socket
from pathlib import Path

from farmstead.cli.common import fail

#: exit code when the command cannot start: bad database path, unreachable database, port in use
CANNOT_START = 2
_SQLITE_PREFIX = "sqlite+aiosqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None for PostgreSQL and for an in-memory database)."""
    if not url.startswith(_SQLITE_PREFIX):
        return None
    path = url[len(_SQLITE_PREFIX) :].split("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def shown(url: str) -> str:
    """`url` as it may be printed: the password (if any) replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse has no password we could find
        return url


def upgrade_command(url: str, from_environment: bool) -> str:
    """The command that migrates the database at `url`, as the user should type it.

    Without --database-url only when the URL came from FARMSTEAD_DATABASE_URL (then the same
    environment gives the same database); a relative SQLite path is made absolute.
    """
    if from_environment:
        return "farmstead db upgrade"
    path = sqlite_file(url)
    if path is not None and not path.is_absolute():
        url = f"{_SQLITE_PREFIX}{path.resolve()}"
    command = f"farmstead db upgrade --database-url '{shown(url)}'"
    if "***" in command:
        command += " (with the password in place of ***)"
    return command


def url_from_environment(flag: str | None) -> bool:
    """Whether the database URL in force came from FARMSTEAD_DATABASE_URL (no flag given)."""
    return flag is None and "FARMSTEAD_DATABASE_URL" in os.environ


def sqlite_problem(path: Path, create: bool) -> str | None:
    """Why SQLite cannot use the file at `path` (None if it can); `create`: may it be made."""
    parent = path.absolute().parent
    if path.is_dir():
        return f"the database path {path} is a directory, not a file"
    if not parent.exists():
        return f"cannot use the database {path}: the directory {parent} does not exist"
    if not parent.is_dir():
        return f"cannot use the database {path}: {parent} is not a directory"
    writable_dir = os.access(parent, os.W_OK | os.X_OK)
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return f"cannot use the database {path}: permission denied (it must be writable)"
        if not writable_dir:
            return (
                f"cannot use the database {path}: the directory {parent} is not writable "
                "(SQLite writes its journal files beside the database)"
            )
        return None
    if not create:
        return f"the database {path} does not exist"
    if not writable_dir:
        return f"cannot create the database {path}: the directory {parent} is not writable"
    return None


def discard_sqlite(path: Path) -> None:
    """Remove an SQLite file and its journal files (one this command made and failed to fill)."""
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        path.with_name(name).unlink(missing_ok=True)


def check_sqlite(url: str, create: bool, upgrade_hint: str | None = None) -> None:
    """Exit 2 with one line if `url` is an SQLite file that cannot be used; a missing file
    that may not be created is told with `upgrade_hint` (the command that creates it)."""
    path = sqlite_file(url)
    problem = None if path is None else sqlite_problem(path, create)
    if problem and upgrade_hint and path is not None and not path.exists():
        problem += f"; create it with: {upgrade_hint}"
    if problem:
        fail(problem, code=CANNOT_START)


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (None if it can), found by binding it."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # as uvicorn binds: a port left in TIME_WAIT by an earlier server is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: unknown host ({exc.strerror})"
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"port {port} on {host} is in use by another program: choose another --port"
        if exc.errno == errno.EACCES:
            return f"cannot listen on {host}:{port}: permission denied"
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def check_port(host: str, port: int) -> None:
    """Exit 2 with one line if the server could not listen on host:port."""
    problem = port_problem(host, port)
    if problem:
        fail(problem, code=CANNOT_START)


def reason(exc: BaseException) -> str:
    """One line saying why a database call failed (the driver's words, without SQLAlchemy's
    SQL echo and background link)."""
    from sqlalchemy.exc import DBAPIError

    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    text = str(cause).strip() or type(cause).__name__
    return " ".join(text.splitlines()[0].split())
