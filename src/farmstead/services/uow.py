"""The unit of work: one session, one transaction, database trouble turned into domain errors."""

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from farmstead.db.engine import Database
from farmstead.services.errors import BadRequest, Conflict, Unavailable


@asynccontextmanager
async def unit_of_work(db: Database, *, write: bool = True) -> AsyncIterator[AsyncSession]:
    """A session in a transaction, committed on success, rolled back on any error."""
    factory = db.write if write else db.read
    lock = db.write_lock if write and db.write_lock is not None else contextlib.nullcontext()
    try:
        async with lock, factory() as session, session.begin():
            yield session
    except IntegrityError as exc:
        raise Conflict(
            "the change conflicts with stored state", error_detail=str(exc.orig)
        ) from exc
    except DataError as exc:
        raise BadRequest("a value does not fit the database", error_detail=str(exc.orig)) from exc
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable("database unavailable or busy", error_detail=str(exc.orig)) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated or _looks_transient(str(exc.orig)):
            raise Unavailable("database unavailable or busy", error_detail=str(exc.orig)) from exc
        raise
    except (OSError, TimeoutError, PoolTimeout) as exc:
        raise Unavailable("database unreachable", error_detail=str(exc)) from exc


_TRANSIENT = (
    "lock",
    "deadlock",
    "connection",
    "terminating",
    "shutting down",
    "starting up",
    "could not serialize",
    "timeout",
    "closed",
    "too many clients",
)


def _looks_transient(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _TRANSIENT)
