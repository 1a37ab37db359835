"""Statements built once and compiled once: what the per-request hot path runs.

On every `execute` of a Core statement SQLAlchemy builds it, derives its cache key, finds its
compiled form and sets up an execution context: on the hot path that costs several times what
the database itself does. A `Prepared` statement is built once, with named placeholders
(`bindparam`), and run with `conn.run(prepared, params)`:

- on SQLite, on the database thread, straight on the driver's cursor: compiled once to the
  driver's SQL, values converted by the same bind and result processors SQLAlchemy would use;
- on PostgreSQL, straight on asyncpg (which prepares each statement once per connection), in
  the transaction SQLAlchemy began, with SQLAlchemy's bind and result processors.

A prepared statement belongs to one dialect (`prepare` keys its cache by dialect name).
"""

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.sql.base import Executable

Params = Mapping[str, Any]
#: one parameter set, or a list of them (an executemany)
ParamSets = Params | Sequence[Params] | None


@dataclass(frozen=True)
class Rows:
    """A statement's answer: its rows (as tuples) and how many rows it changed."""

    rows: Sequence[Any]
    rowcount: int

    def first(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        """The first column of the first row, or None."""
        return self.rows[0][0] if self.rows else None


@dataclass(frozen=True)
class Compiled:
    """A prepared statement as one dialect's driver takes it (positional parameters)."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    binders: tuple[Callable[[Any], Any] | None, ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    returns_rows: bool

    def values(self, params: Params) -> list[Any]:
        """The driver's parameter list for `params` (bound defaults fill the rest)."""
        out = []
        for name, bind in zip(self.names, self.binders, strict=True):
            value = params[name] if name in params else self.defaults[name]
            out.append(value if bind is None else bind(value))
        return out

    def convert(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Rows as SQLAlchemy would give them (JSON decoded, times made aware, …)."""
        if not any(self.results):
            return rows
        procs = self.results
        return [
            tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=True)) for row in rows
        ]


class Prepared:
    """A Core statement built once; compiled once for its dialect."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: Compiled | None = None

    def compiled(self, dialect: Dialect) -> Compiled:
        """The statement as `dialect`'s driver takes it (computed on first use)."""
        if self._compiled is None:
            self._compiled = _compile(self.statement, dialect)
        return self._compiled


def _compile(statement: Executable, dialect: Dialect) -> Compiled:
    compiled: Any = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup or ())
    binds = compiled.binds
    binders = tuple(binds[n].type._cached_bind_processor(dialect) for n in names)
    columns = getattr(statement, "exported_columns", None) or []
    results = tuple(_result_processor(c.type, dialect) for c in columns)
    returns_rows = bool(columns)
    return Compiled(compiled.string, names, dict(compiled.params), binders, results, returns_rows)


def _result_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    try:
        return type_._cached_result_processor(dialect, None)  # type: ignore[no-any-return]
    except TypeError:  # asyncpg's numbers need the column's type id: asyncpg converts them
        return None


_CACHE: dict[Hashable, Prepared] = {}


def prepare(dialect: str, key: Hashable, build: Callable[[], Executable]) -> Prepared:
    """The prepared statement `key` of `dialect`, built by `build` the first time."""
    found = _CACHE.get((dialect, key))
    if found is None:
        found = _CACHE[(dialect, key)] = Prepared(build())
    return found
