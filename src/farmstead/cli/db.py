"""`farmstead db`: migrate and inspect the database."""

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from farmstead.cli.common import err, fail, load_settings

if TYPE_CHECKING:
    from farmstead.services.check import Finding

# SQLAlchemy and alembic are imported inside the commands (see serve.py for why).

app = typer.Typer(help="Migrate and inspect the database.", no_args_is_help=True)
UrlOpt = Annotated[
    str | None, typer.Option("--database-url", help="default: FARMSTEAD_DATABASE_URL")
]


@app.command("upgrade")
def upgrade_cmd(database_url: UrlOpt = None, revision: str = "head") -> None:
    """Migrate the database to the newest schema (or to REVISION)."""
    from farmstead.db.migrate import head_revision, upgrade

    settings = load_settings(database_url=database_url)
    try:
        upgrade(settings.database_url, revision)
    except Exception as exc:
        fail(f"migration failed: {exc}")
    err.print(f"database at revision {head_revision() if revision == 'head' else revision}")


@app.command("current")
def current_cmd(database_url: UrlOpt = None) -> None:
    """Print the database's schema revision and this farmstead's head revision."""
    from farmstead.db.engine import make_database
    from farmstead.db.migrate import current_revision, head_revision

    settings = load_settings(database_url=database_url)

    async def run() -> str | None:
        db = make_database(settings.database_url)
        try:
            return await current_revision(db)
        finally:
            await db.dispose()

    try:
        current = asyncio.run(run())
    except Exception as exc:
        fail(f"cannot read the database: {exc}")
    head = head_revision()
    typer.echo(f"current: {current or 'none (not migrated)'}")
    typer.echo(f"head:    {head}")
    if current != head:
        raise typer.Exit(1)


@app.command("check")
def check_cmd(database_url: UrlOpt = None) -> None:
    """Check every invariant (task/instance pairs, attempts, events); exit 1 if any breaks."""
    from farmstead.db.engine import make_database
    from farmstead.services.check import check

    settings = load_settings(database_url=database_url)

    async def run() -> list["Finding"]:
        db = make_database(settings.database_url)
        try:
            return await check(db)
        finally:
            await db.dispose()

    try:
        findings = asyncio.run(run())
    except Exception as exc:
        fail(f"cannot read the database: {exc}")
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
