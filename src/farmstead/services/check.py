"""The consistency check: every invariant of the data, reported with offending ids."""

from dataclasses import dataclass

from farmstead.db.engine import Conn, Database
from farmstead.services.uow import in_transaction
from farmstead.store.check import CHECKS, run_check


@dataclass(frozen=True)
class Finding:
    """One invariant and the rows that break it."""

    name: str
    meaning: str
    count: int
    sample: list[int]


async def check(db: Database) -> list[Finding]:
    """Run every invariant query in one read transaction."""

    async def work(conn: Conn) -> list[Finding]:
        findings = []
        for name, (meaning, _sql) in CHECKS.items():
            count, sample = await run_check(conn, name)
            findings.append(Finding(name, meaning, count, sample))
        return findings

    return await in_transaction(db, work, write=False)
