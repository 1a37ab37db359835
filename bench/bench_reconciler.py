"""Reconciler benchmark.

1. A sweep that expires 100,000 RUNNING instances among 1,000,000 healthy ones, and the same
   sweep among 0 healthy ones: the cost must follow the expired rows, not the table
   (target: under 10 s on PostgreSQL, and the two about equal).
2. The time from a worker's silence to its task's retry instance being QUEUED, over HTTP on a
   real server process with a short heartbeat deadline.

Usage: python bench/bench_reconciler.py [--db sqlite|postgresql|both] [--expired N] [--healthy N]
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from _harness import Server, fresh_database
from farmstead.db.engine import make_database
from farmstead.db.migrate import upgrade
from farmstead.schemas import WorkflowCreate
from farmstead.services.reconciler import Reconciler
from farmstead.services.workflows import submit
from farmstead.settings import Settings


async def seed(url: str, healthy: int, expired: int) -> None:
    """`healthy` RUNNING instances with a deadline a day away, `expired` with one passed."""
    db = make_database(url)
    settings = Settings(database_url=url)
    for n, name in ((healthy, "healthy"), (expired, "expired")):
        if n:
            req = WorkflowCreate(
                name=name, array={"command": "true {i}", "first": 0, "last": n - 1}
            )
            await submit(db, settings, req)
    future = (
        "now() + interval '1 day'"
        if url.startswith("postgresql")
        else ("strftime('%Y-%m-%d %H:%M:%f000', 'now', '+1 day')")
    )
    past = (
        "now() - interval '1 second'"
        if url.startswith("postgresql")
        else ("strftime('%Y-%m-%d %H:%M:%f000', 'now', '-1 second')")
    )
    async with db.write_engine.begin() as conn:
        await conn.execute(text("UPDATE task SET status = 'R'"))
        await conn.execute(
            text(
                f"UPDATE task_instance SET status = 'R', report_by_date = CASE WHEN workflow_id = "
                f"(SELECT id FROM workflow WHERE name = 'expired') THEN {past} ELSE {future} END"
            )
        )
        # a RUNNING instance's live deadline is its row in task_instance_deadline (0004)
        await conn.execute(
            text(
                "INSERT INTO task_instance_deadline (task_instance_id, report_by_date) "
                "SELECT id, report_by_date FROM task_instance WHERE status = 'R'"
            )
        )
        if url.startswith("postgresql"):
            await conn.execute(text("ANALYZE"))
    await db.dispose()


async def timed_sweep(url: str) -> tuple[float, dict[str, int]]:
    db = make_database(url)
    settings = Settings(database_url=url, triage_grace=3600)
    start = time.perf_counter()
    result = await Reconciler(db, settings).sweep()
    elapsed = time.perf_counter() - start
    await db.dispose()
    return elapsed, result.moved


def sweep_case(backend: str, healthy: int, expired: int) -> dict[str, Any]:
    with fresh_database(backend, keep=False) as url:
        upgrade(url)  # SQLite: the harness leaves creating it to the server; no server here
        t0 = time.perf_counter()
        asyncio.run(seed(url, healthy, expired))
        seeded = time.perf_counter() - t0
        elapsed, moved = asyncio.run(timed_sweep(url))
    return {"healthy": healthy, "expired": expired, "sweep_s": elapsed, "moved": moved,
            "seed_s": seeded}


def silence_to_retry(backend: str, work: Path) -> float:
    """Seconds from a worker's last report to its task's retry instance being QUEUED."""
    settings = {"reconciler_interval": 0.5, "triage_grace": 1}
    with fresh_database(backend, keep=False) as url:
        server = Server(url, workers=1, log_path=work / "server.log", env=settings).start()
        try:
            return _silence(server.url)
        finally:
            server.stop()


def _silence(base: str) -> float:
    wf = httpx.post(f"{base}/v3/workflows", json={
        "name": "silence", "tasks": [{"name": "t", "command": "sleep 1000"}]}).json()
    ti = httpx.post(f"{base}/v3/claims", json={"limit": 1}).json()["data"][0]
    ti_id, task_id = ti["task_instance_id"], ti["task_id"]
    httpx.post(f"{base}/v3/fsm/task_instance/{ti_id}/log_running",
               json={"next_report_increment": 2.0}).raise_for_status()
    silent_from = time.perf_counter()  # the worker dies right after this report
    while time.perf_counter() - silent_from < 60:
        task = httpx.get(f"{base}/v3/tasks/{task_id}").json()
        if any(i["status"] == "Q" and i["id"] != ti_id for i in task["instances"]):
            return time.perf_counter() - silent_from
        time.sleep(0.05)
    raise RuntimeError(f"no retry within 60 s for workflow {wf['id']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--healthy", type=int, default=1_000_000)
    ap.add_argument("--expired", type=int, default=100_000)
    args = ap.parse_args()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            print(
                f"[{kind}] sweep: {args.expired:,} expired among {args.healthy:,} healthy ...",
                flush=True,
            )
            big = sweep_case(kind, args.healthy, args.expired)
            print(
                f"[{kind}]   {big['sweep_s']:.2f} s, moved {big['moved']} "
                f"(seeding took {big['seed_s']:.0f} s)",
                flush=True,
            )
            print(f"[{kind}] sweep: {args.expired:,} expired among 0 healthy ...", flush=True)
            small = sweep_case(kind, 0, args.expired)
            print(f"[{kind}]   {small['sweep_s']:.2f} s, moved {small['moved']}", flush=True)
            latency = silence_to_retry(kind, Path(tmp))
            print(f"[{kind}] silence to retry QUEUED: {latency:.2f} s", flush=True)
            rows.append((kind, big["sweep_s"], small["sweep_s"], latency))
    print(
        "\n| backend | sweep of 100k expired among 1M healthy | among 0 healthy | ratio "
        "| target | silence → retry QUEUED (deadline 2 s, grace 1 s, interval 0.5 s) |"
    )
    print("|---|---|---|---|---|---|")
    for kind, big_s, small_s, lat in rows:
        print(
            f"| {kind} | {big_s:.2f} s | {small_s:.2f} s | {big_s / small_s:.2f}x "
            f"| < 10 s ({big_s / 10:.2f} of it) | {lat:.2f} s |"
        )


if __name__ == "__main__":
    main()
