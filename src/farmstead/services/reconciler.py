"""The reconciler: expires instances whose deadline passed, so work moves with no client alive.

Each rule is one set-based sweep: lock a chunk of expired candidates (SKIP LOCKED on
PostgreSQL, so several server processes can sweep side by side), move them with the one
decision function, write their events, commit, repeat. The cost follows the expired rows.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from farmstead.db.engine import Conn, Database
from farmstead.fsm import TIStatus
from farmstead.metrics import SWEEPS
from farmstead.services import events, queues
from farmstead.services.bulk import BulkResult, apply_bulk
from farmstead.services.uow import in_transaction
from farmstead.settings import Settings
from farmstead.store import bulk as store
from farmstead.store import dashboard
from farmstead.store.bulk import Candidate

log = logging.getLogger("farmstead.reconciler")
SQLITE_CHUNK_GAP = 0.02  # seconds
TI = TIStatus


@dataclass(frozen=True)
class Rule:
    """One sweep: instances matching `where` go to `to` (then `then`, if given)."""

    name: str
    where: Callable[[Settings], Any]
    to: TIStatus
    error: Callable[[Candidate, Settings], str] | None = None
    then: TIStatus | None = None


def _since(c: Candidate) -> str:
    return c.report_by_date.isoformat() if c.report_by_date else "its launch"


def _silent(c: Candidate) -> str:
    """Why a running instance expired: when it last reported, and the deadline it missed."""
    deadline = c.report_by_date.isoformat() if c.report_by_date else "none"
    if c.last_report_date is None:  # e.g. a row written before last_report_date existed
        return f"no heartbeat by its deadline {deadline}"
    return f"no heartbeat since {c.last_report_date.isoformat()} (deadline {deadline} passed)"


RULES: tuple[Rule, ...] = (
    Rule("running past deadline", lambda s: store.deadline_passed("R"), TI.TRIAGING),
    Rule(
        "triage grace over",
        lambda s: store.in_status_for("T", s.triage_grace),
        TI.UNKNOWN_ERROR,
        lambda c, s: _silent(c),
    ),
    Rule(
        "launched, never reported",
        lambda s: store.launched_silent(s.no_heartbeat_min_age),
        TI.NO_HEARTBEAT,
        lambda c, s: f"no report since launch; deadline {_since(c)} passed",
        then=TI.ERROR,
    ),
    Rule(
        "instantiated, never launched",
        lambda s: store.in_status_for("I", s.launch_timeout),
        TI.NO_DISTRIBUTOR_ID,
        lambda c, s: f"not launched within {s.launch_timeout:g} s of instantiation",
    ),
    Rule(
        "kill_self unanswered",
        lambda s: store.in_status_for("K", s.kill_self_timeout),
        TI.ERROR_FATAL,
        lambda c, s: f"did not stop within {s.kill_self_timeout:g} s",
    ),
)


class Reconciler:
    """The background loop; `sweep()` is one pass of every rule."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every interval until `stop` is set; a crash is logged and the loop goes on."""
        while not stop.is_set():
            try:
                with SWEEPS.time():
                    result = await self.sweep()
                if result.total:
                    log.info("reconciler moved %s", result.moved)
                await self.housekeeping()
                await in_transaction(
                    self.db, lambda c: dashboard.record_sweep(c, datetime.now(UTC))
                )
            except Exception:
                log.exception("reconciler sweep failed; retrying next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.reconciler_interval)

    async def sweep(self) -> BulkResult:
        """Apply every rule until nothing it matches is left."""
        total = BulkResult()
        for rule in RULES:
            while True:
                moved = await self._chunk(rule)
                total.add(moved)
                if moved.total < self.settings.reconciler_chunk:
                    break
                if self.db.is_sqlite:
                    # SQLite has one writer: leave a gap between chunks, or writers in other
                    # processes (polling in SQLite's busy handler) starve for the whole sweep.
                    await asyncio.sleep(SQLITE_CHUNK_GAP)
        return total

    async def housekeeping(self) -> tuple[int, int]:
        """Agents silent too long declared offline; events past their retention removed (in
        chunks). (agents, events)."""
        settings = self.settings
        chunk = settings.reconciler_chunk
        offline = await queues.mark_agents_offline(self.db, settings.agent_offline_after, chunk)
        pruned = 0
        if settings.event_retention > 0:
            pruned = await events.prune(self.db, settings.event_retention, chunk)
        if offline or pruned:
            log.info("reconciler: %s agent(s) offline, %s old event(s) removed", offline, pruned)
        return offline, pruned

    async def _chunk(self, rule: Rule) -> BulkResult:
        settings = self.settings

        async def work(conn: Conn) -> BulkResult:
            cands = await store.lock_candidates(
                conn, rule.where(settings), limit=settings.reconciler_chunk
            )
            if not cands:
                return BulkResult()
            errors = (
                None if rule.error is None else {c.ti_id: rule.error(c, settings) for c in cands}
            )
            result = await apply_bulk(
                conn,
                cands,
                rule.to,
                errors=errors,
                details={"by": "reconciler", "rule": rule.name},
            )
            if rule.then is not None and result.ids:
                moved = set(result.ids)
                nxt = [replace(c, ti_status=rule.to.value) for c in cands if c.ti_id in moved]
                result.add(
                    await apply_bulk(
                        conn,
                        nxt,
                        rule.then,
                        errors=errors,
                        details={"by": "reconciler", "rule": rule.name},
                    )
                )
            return result

        return await in_transaction(self.db, work)
