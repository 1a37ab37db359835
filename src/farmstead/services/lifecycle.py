"""Start-up checks and the background loops the app runs in its lifespan."""

import asyncio
import logging
from typing import Any

from farmstead.db.engine import Database
from farmstead.db.migrate import current_revision, head_revision
from farmstead.settings import Settings

log = logging.getLogger("farmstead")


class SchemaNotReady(RuntimeError):
    """The database has not been migrated to this farmstead's schema."""


async def check_schema(db: Database) -> None:
    """Refuse to serve a database whose schema is not at head; say which command fixes it."""
    head = head_revision()
    current = await current_revision(db)
    if current != head:
        state = "has never been migrated" if current is None else f"is at revision {current}"
        raise SchemaNotReady(
            f"the database {db.write_engine.url.render_as_string(hide_password=True)} {state}; "
            f"this farmstead needs revision {head}. Run: farmstead db upgrade"
        )


async def readiness(db: Database) -> tuple[bool, dict[str, Any]]:
    """Whether the database answers and is at head."""
    try:
        current = await asyncio.wait_for(current_revision(db), timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return False, {"database": "unreachable", "error": type(exc).__name__}
    head = head_revision()
    return current == head, {"database": "reachable", "revision": current, "head": head}


class Background:
    """The loops a server process runs beside its routes (reconciler, local executor)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start every enabled loop."""

    async def stop(self) -> None:
        """Stop every loop at once and wait for it."""
        self.stop_event.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
