"""The unit of work: one transaction, database trouble turned into domain errors.

Database errors are classified by type and code (PostgreSQL's SQLSTATE, SQLite's result code),
never by the words of their message:

- deterministic failures (a value the column cannot hold, text the database cannot store, a
  statement too large, a constraint) are the request's fault: 422 or 409, never worth a retry;
- transient failures (connection lost, lock timeout, deadlock, serialization failure, too many
  connections, shutdown, pool timeout, SQLite's busy database) are 503: retry later;
- anything else is a bug and propagates (500, logged).
"""

from collections.abc import Iterator
from typing import TypeVar

from asyncpg.exceptions import InterfaceError as PgClientError  # type: ignore[import-untyped]
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from farmstead.db.engine import Database, Work
from farmstead.services.errors import BadRequest, Conflict, FarmsteadError, Unavailable

T = TypeVar("T")


async def in_transaction(
    db: Database, work: Work[T], *, write: bool = True, single: bool = False
) -> T:
    """Run `work(conn)` in one transaction (committed on success, rolled back on any error);
    database failures come out as domain errors. `single`: `work` runs one prepared statement,
    atomic on its own, with no transaction around it."""
    try:
        return await db.run(work, write=write, single=single)
    except FarmsteadError:
        raise
    except Exception as exc:
        error = classify(exc)
        if error is None:
            raise
        raise error from exc


#: PostgreSQL SQLSTATEs (and classes, by their first two characters) worth a retry
_TRANSIENT_STATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "55006",  # object_in_use
        "57014",  # query_canceled (statement_timeout)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "25P03",  # idle_in_transaction_session_timeout
    }
)
_TRANSIENT_CLASSES = frozenset({"08", "53", "58"})  # connection, resources, system (I/O)

#: SQLite primary result codes (extended codes carry them in their low byte)
#: BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL
_SQLITE_TRANSIENT = frozenset({5, 6, 7, 8, 9, 10, 13, 14, 15})
_SQLITE_CONSTRAINT = 19
_SQLITE_TOO_BIG = frozenset({18, 20, 25})  # TOOBIG MISMATCH RANGE

_TOO_LONG = "a text value is longer than its database column allows"
_OUT_OF_RANGE = "a number is outside the range the database can store"
_BAD_TEXT = (
    "a text value has characters the database cannot store (such as NUL or a lone surrogate)"
)
_NOT_FIT = "a value does not fit the database"
_TOO_LARGE = "the request is too large for one database statement"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the driver's error it wraps (`orig`), and their causes, in order."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def _detail(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc)


def _bad_value(chain: list[BaseException]) -> str:
    """Which deterministic data failure this is, for the client's message."""
    for err in chain:
        if isinstance(err, OverflowError):
            return _OUT_OF_RANGE
        if isinstance(err, UnicodeError):
            return _BAD_TEXT
        state = _sqlstate(err)
        if state == "22001":
            return _TOO_LONG
        if state == "22003":
            return _OUT_OF_RANGE
        if state in ("22021", "22P05"):
            return _BAD_TEXT
    return _NOT_FIT


def _sqlstate(err: BaseException) -> str | None:
    state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _by_sqlstate(state: str, chain: list[BaseException], detail: str) -> FarmsteadError | None:
    if state in _TRANSIENT_STATES or state[:2] in _TRANSIENT_CLASSES:
        return Unavailable("database unavailable or busy", error_detail=detail)
    if state.startswith("22"):
        return BadRequest(_bad_value(chain), error_detail=detail)
    if state.startswith("23"):
        return Conflict("the change conflicts with stored state", error_detail=detail)
    if state.startswith("54"):  # program_limit_exceeded: statement too complex, too many args
        return BadRequest(_TOO_LARGE, error_detail=detail)
    return None


def _by_sqlite_code(code: int, chain: list[BaseException], detail: str) -> FarmsteadError | None:
    primary = code & 0xFF
    if primary in _SQLITE_TRANSIENT:
        return Unavailable("database unavailable or busy", error_detail=detail)
    if primary == _SQLITE_CONSTRAINT:
        return Conflict("the change conflicts with stored state", error_detail=detail)
    if primary in _SQLITE_TOO_BIG:
        return BadRequest(_bad_value(chain), error_detail=detail)
    return None


def classify(exc: BaseException) -> FarmsteadError | None:
    """The domain error a database failure means; None when it is a bug (let it propagate)."""
    detail = _detail(exc)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return Unavailable("database connection lost", error_detail=detail)
    if isinstance(exc, PoolTimeout):
        return Unavailable("database busy: no connection free in time", error_detail=detail)
    chain = list(_chain(exc))
    for err in chain:
        state = _sqlstate(err)
        if state is not None:
            return _by_sqlstate(state, chain, detail)
        code = getattr(err, "sqlite_errorcode", None)
        if isinstance(code, int):
            return _by_sqlite_code(code, chain, detail)
        if isinstance(err, OverflowError | UnicodeError):  # raised while binding a value
            return BadRequest(_bad_value(chain), error_detail=detail)
        if isinstance(err, OSError | TimeoutError):
            return Unavailable("database unreachable", error_detail=detail)
        if type(err) is PgClientError:  # asyncpg's own check, e.g. more than 32767 arguments
            return BadRequest(_TOO_LARGE, error_detail=detail)
    if isinstance(exc, IntegrityError):
        return Conflict("the change conflicts with stored state", error_detail=detail)
    if isinstance(exc, DataError):
        return BadRequest(_NOT_FIT, error_detail=detail)
    if isinstance(exc, OperationalError):
        return Unavailable("database unavailable or busy", error_detail=detail)
    return None
