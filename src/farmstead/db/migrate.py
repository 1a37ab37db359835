"""Alembic, driven from code: where the scripts are, the head revision, upgrade, check."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from farmstead.db.engine import Database


def script_location() -> Path:
    """The alembic/ folder: packaged inside the wheel, or at the top of a source checkout."""
    packaged = Path(__file__).resolve().parent.parent / "_alembic"
    if (packaged / "env.py").exists():
        return packaged
    return Path(__file__).resolve().parents[3] / "alembic"


def alembic_config(url: str) -> Config:
    """An alembic Config for `url`, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["farmstead_url"] = url
    return cfg


def head_revision() -> str | None:
    """The newest migration shipped with this farmstead."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` (synchronous: call outside a running event loop)."""
    command.upgrade(alembic_config(url), revision)


async def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None if it has never been migrated."""
    async with db.read_engine.connect() as conn:
        try:
            row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
        except DBAPIError as exc:
            if "alembic_version" in str(exc):
                return None
            raise
    return None if row is None else str(row[0])
