"""The consistency check: every invariant of the data, reported with offending ids."""

from dataclasses import dataclass

from farmstead.db.engine import Database
from farmstead.services.uow import unit_of_work
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
    findings = []
    async with unit_of_work(db, write=False) as session:
        for name, (meaning, _sql) in CHECKS.items():
            count, sample = await run_check(session, name)
            findings.append(Finding(name, meaning, count, sample))
    return findings
