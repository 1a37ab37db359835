"""Column types and database-clock expressions that work the same on SQLite and PostgreSQL."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement, literal
from sqlalchemy.types import TypeDecorator

#: 64-bit ids on PostgreSQL; SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime everywhere; SQLite stores and returns naive UTC text."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # a raw value from a SQLite expression
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


# SQLite's text format matches the one SQLAlchemy writes (microseconds: %f gives SS.SSS).
_SQLITE_FMT = "'%Y-%m-%d %H:%M:%f000'"


class db_now(FunctionElement[datetime]):
    """The database's clock at this statement: every server replica agrees on it."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"


class db_after(FunctionElement[datetime]):
    """The database's clock plus a number of seconds (negative for the past)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_after"


@compiles(db_now, "postgresql")
def _now_pg(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "statement_timestamp()"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime({_SQLITE_FMT}, 'now')"


@compiles(db_after, "postgresql")
def _after_pg(element: db_after, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"(statement_timestamp() + make_interval(secs => CAST({arg} AS DOUBLE PRECISION)))"


@compiles(db_after, "sqlite")
def _after_sqlite(element: db_after, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"strftime({_SQLITE_FMT}, 'now', printf('%+.6f seconds', {arg}))"


def seconds_from_now(seconds: float | ColumnElement[Any]) -> db_after:
    """The database's clock `seconds` from now."""
    arg = seconds if isinstance(seconds, ColumnElement) else literal(float(seconds))
    return db_after(arg)


def after_seconds(expr: db_after) -> float | None:
    """The seconds of a `seconds_from_now(float)`; None when they are an SQL expression."""
    clauses = list(expr.clauses)
    value = getattr(clauses[0], "value", None) if len(clauses) == 1 else None
    return float(value) if isinstance(value, int | float) else None
