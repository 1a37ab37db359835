"""`farmstead db`: migrate and inspect the database.

Each command first says which database it acts on (password hidden). Exit codes: 0 done;
1 the answer is "no" (not at head, invariants broken) or a migration failed; 2 the database
cannot be used (bad SQLite path, unreachable server, unknown database).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from farmstead.cli import preflight
from farmstead.cli.common import err, fail, load_settings

if TYPE_CHECKING:
    from farmstead.db.engine import Database
    from farmstead.services.check import Finding

# SQLAlchemy and alembic are imported inside the commands (see serve.py for why).

app = typer.Typer(help="Migrate and inspect the database.", no_args_is_help=True)
UrlOpt = Annotated[
    str | None, typer.Option("--database-url", help="default: FARMSTEAD_DATABASE_URL")
]
T = TypeVar("T")


def _database(flag: str | None, action: str, create: bool = False) -> str:
    """The URL in force; says `<action> <url>` on stderr; exit 2 if an SQLite path is unusable."""
    url = load_settings(database_url=flag).database_url
    err.print(f"{action} {preflight.shown(url)}", markup=False)
    hint = preflight.upgrade_command(url, preflight.url_from_environment(flag))
    preflight.check_sqlite(url, create=create, upgrade_hint=hint)
    return url


def _on(url: str, work: Callable[["Database"], Awaitable[T]]) -> T:
    """Run `work` on the database at `url`; exit 2 with one line if it cannot be reached."""
    from farmstead.db.engine import make_database

    async def run() -> T:
        db = make_database(url)
        try:
            return await work(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(run())
    except Exception as exc:
        fail(f"cannot use the database {preflight.shown(url)}: {preflight.reason(exc)}", code=2)


@app.command("upgrade")
def upgrade_cmd(database_url: UrlOpt = None, revision: str = "head") -> None:
    """Migrate the database to the newest schema (or to REVISION)."""
    from farmstead.db.migrate import current_revision, head_revision, upgrade

    url = _database(database_url, "migrating", create=True)
    path = preflight.sqlite_file(url)
    created = path is not None and not path.exists()
    _on(url, current_revision)  # reachable? (a connection problem is exit 2, not exit 1)
    try:
        upgrade(url, revision)
    except Exception as exc:
        if created and path is not None:
            preflight.discard_sqlite(path)
        fail(f"migration failed: {preflight.reason(exc)}")
    err.print(f"database at revision {head_revision() if revision == 'head' else revision}")


@app.command("current")
def current_cmd(database_url: UrlOpt = None) -> None:
    """Print the database's schema revision and this farmstead's head revision."""
    from farmstead.db.migrate import current_revision, head_revision

    url = _database(database_url, "reading")
    current = _on(url, current_revision)
    head = head_revision()
    typer.echo(f"current: {current or 'none (not migrated)'}")
    typer.echo(f"head:    {head}")
    if current != head:
        hint = preflight.upgrade_command(url, preflight.url_from_environment(database_url))
        err.print(f"not at head. Run: {hint}", markup=False)
        raise typer.Exit(1)


@app.command("check")
def check_cmd(database_url: UrlOpt = None) -> None:
    """Check every invariant (task/instance pairs, attempts, events); exit 1 if any breaks."""
    from farmstead.services.check import check

    url = _database(database_url, "checking")
    findings: list[Finding] = _on(url, check)
    table = Table("check", "rows", "meaning", "first ids")
    for f in findings:
        style = "red" if f.count else "green"
        table.add_row(f.name, f"[{style}]{f.count}[/]", f.meaning, ", ".join(map(str, f.sample)))
    Console().print(table)
    broken = sum(f.count for f in findings)
    if broken:
        err.print(f"[red]{broken} rows break the invariants[/]")
        raise typer.Exit(1)
    err.print("[green]consistent[/]")
