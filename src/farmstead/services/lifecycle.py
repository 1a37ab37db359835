"""Start-up checks and the background loops the app runs in its lifespan."""

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import Callable, Coroutine
from typing import IO, Any

from farmstead.db.engine import Database
from farmstead.db.migrate import current_revision, head_revision
from farmstead.services.reconciler import Reconciler
from farmstead.settings import Settings

log = logging.getLogger("farmstead")


class SchemaNotReady(RuntimeError):
    """The database has not been migrated to this farmstead's schema."""


async def check_schema(db: Database, upgrade_command: str | None = None) -> None:
    """Refuse to serve a database whose schema is not at head; say which command fixes it.

    `upgrade_command` is that command as the caller knows the user should type it; by default
    it names the database by its URL (password hidden), so it migrates this same database.
    """
    head = head_revision()
    current = await current_revision(db)
    if current != head:
        url = db.write_engine.url.render_as_string(hide_password=True)
        state = "has never been migrated" if current is None else f"is at revision {current}"
        command = upgrade_command or f"farmstead db upgrade --database-url '{url}'"
        raise SchemaNotReady(
            f"the database {url} {state}; this farmstead needs revision {head}. Run: {command}"
        )


async def readiness(db: Database) -> tuple[bool, dict[str, Any]]:
    """Whether the database answers and is at head."""
    try:
        current = await asyncio.wait_for(current_revision(db), timeout=5)
    except Exception as exc:
        return False, {"database": "unreachable", "error": type(exc).__name__}
    head = head_revision()
    return current == head, {"database": "reachable", "revision": current, "head": head}


def leader_lock(path: str) -> IO[bytes] | None:
    """An exclusive lock on `path` if no other process holds it (held until closed)."""
    handle = open(path, "ab")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


class Background:
    """The loops a server process runs beside its routes (reconciler, local executor)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self._locks: list[IO[bytes]] = []

    def start(self) -> None:
        """Start every enabled loop."""
        if self.settings.reconciler_enabled:
            database = self.db.write_engine.url.database
            lock = None
            if self.db.is_sqlite and database and database != ":memory:":
                # On SQLite one process reconciles: the one holding a lock on a side file.
                # (On PostgreSQL every process sweeps; SKIP LOCKED keeps them apart.)
                lock = f"{database}.reconciler.lock"
            self.add("reconciler", Reconciler(self.db, self.settings).run, lock)

    def add(
        self,
        name: str,
        loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
        lock_path: str | None = None,
    ) -> None:
        """Run another loop beside the others; with `lock_path`, only in the one process that
        holds that lock. The others keep trying, so one takes over if the holder dies."""
        coro = (
            loop(self.stop_event) if lock_path is None else self._as_leader(name, lock_path, loop)
        )
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._ended)
        self.tasks.append(task)

    def _ended(self, task: "asyncio.Task[None]") -> None:
        """A loop that ends before the server stops is a bug: say so at once, loudly."""
        if task.cancelled() or self.stop_event.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("the %s stopped on an error", task.get_name(), exc_info=exc)
        else:
            log.error("the %s stopped before the server did", task.get_name())

    async def _as_leader(
        self, name: str, path: str, loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    ) -> None:
        waited = False
        while not self.stop_event.is_set():
            handle = leader_lock(path)
            if handle is not None:
                self._locks.append(handle)
                if waited:
                    log.info("this server process now runs the %s", name)
                await loop(self.stop_event)
                return
            if not waited:
                log.info("another server process runs the %s", name)
                waited = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), self.settings.reconciler_interval)

    async def stop(self) -> None:
        """Stop every loop at once and wait for it."""
        self.stop_event.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for handle in self._locks:
            handle.close()
