"""farmstead event-stream benchmark (issue 13): 100 subscribers while transitions flow at full rate.

One `farmstead serve` process on a fresh database per run. The load: 100 workflows of
`--tasks` tasks each, and `--workers` simulated workers (keep-alive clients in one process)
each looping claim -> log_running -> log_done as fast as the server answers. The measure: tasks
finished a second over `--seconds` (each is six moves: its instance Q->I->R->D and its task's).

Runs alternate (A B A B ...): A with no subscriber, B with `--subscribers` SSE subscribers
(another process), each following one of the 100 workflows (`GET /v3/events?workflow=W`, what
`farmstead status --watch` does), or with `--firehose`, every event. For every event a
subscriber receives, its delivery latency is the receive time minus the event's own
`timestamp` (the database's clock at the move, before its commit). Targets: delivery p99 under
1 s; the rate with subscribers within 10 % of the rate without.

    .venv/bin/python bench/bench_events.py                 # both databases, 2 rounds (~4 min)
    .venv/bin/python bench/bench_events.py --db sqlite --rounds 1 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _harness import Server, fresh_database, pct

TIMESTAMP = re.compile(rb'"timestamp":([0-9]+\.[0-9]+)')
WORKFLOWS = 100


# ---- subscribers (their own process) ------------------------------------------------------------


async def _subscribe(
    host: str, port: int, query: str, until: float, latencies: list[float], ready: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v3/events{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    rest = b""
    opened = False
    try:
        while time.time() < until:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), max(0.1, until - time.time()))
            except TimeoutError:
                break
            if not chunk:
                break
            now = time.time()
            if not opened:
                opened = True
                ready.append(1)
            data = rest + chunk
            end = 0
            for m in TIMESTAMP.finditer(data):
                latencies.append(now - float(m[1]))
                end = m.end()
            rest = data[end:][-200:]
    finally:
        writer.close()


def subscribers_main(
    host: str, port: int, queries: list[str], until: float, out: Any, started: Any
) -> None:
    """A process of SSE subscribers; sends back every delivery latency."""

    async def main() -> list[float]:
        latencies: list[float] = []
        ready: list[int] = []
        tasks = [
            asyncio.create_task(_subscribe(host, port, q, until, latencies, ready))
            for q in queries
        ]
        while len(ready) < len(queries) and time.time() < until:
            await asyncio.sleep(0.05)
        started.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return latencies

    out.put(asyncio.run(main()))


# ---- the load ------------------------------------------------------------------------------------


async def _worker(client: httpx.AsyncClient, until: float, done: list[int]) -> None:
    while time.time() < until:
        r = await client.post("/v3/claims", json={"limit": 1})
        got = r.json().get("data") if r.status_code == 200 else None
        if not got:
            await asyncio.sleep(0.05)
            continue
        ti = got[0]["task_instance_id"]
        await client.post(f"/v3/fsm/task_instance/{ti}/log_running",
                          json={"nodename": "bench", "next_report_increment": 600})  # fmt: skip
        r = await client.post(f"/v3/fsm/task_instance/{ti}/log_done", json={"wallclock": 0.0})
        if r.status_code == 200:
            done.append(1)


async def _load(url: str, workers: int, warmup: float, seconds: float) -> float:
    limits = httpx.Limits(max_connections=workers + 4, max_keepalive_connections=workers + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        done: list[int] = []
        start = time.time()
        until = start + warmup + seconds
        tasks = [asyncio.create_task(_worker(client, until, done)) for _ in range(workers)]
        await asyncio.sleep(warmup)
        before = len(done)
        await asyncio.gather(*tasks)
        return (len(done) - before) / seconds


def measured_run(
    backend: str, args: argparse.Namespace, subscribers: int, work: Path
) -> dict[str, Any]:
    """A run whose subscribers report their latencies (they stop on their own)."""
    with fresh_database(backend, keep=False) as url:
        env = {"event_poll_interval": 0.25, "reconciler_enabled": "false"}
        server = Server(url, workers=1, log_path=work / f"events-{backend}.log", env=env).start()
        try:
            ids = []
            with httpx.Client(base_url=server.url, timeout=120) as c:
                for w in range(WORKFLOWS):
                    r = c.post("/v3/workflows", json={"name": f"e{w}", "array": {
                        "command": "true", "first": 0, "last": args.tasks - 1}})  # fmt: skip
                    r.raise_for_status()
                    ids.append(r.json()["id"])
            total = args.warmup + args.seconds
            proc = out = None
            if subscribers:
                queries = (
                    [""] * subscribers
                    if args.firehose
                    else [f"?workflow={ids[i % WORKFLOWS]}" for i in range(subscribers)]
                )
                ctx = mp.get_context("spawn")
                out, started = ctx.Queue(), ctx.Event()
                until = time.time() + 30 + total + 2.0  # (connect time counted generously)
                where = (server.host, server.port)
                proc = ctx.Process(
                    target=subscribers_main, args=(*where, queries, until, out, started)
                )
                proc.start()
                if not started.wait(60):
                    raise RuntimeError("the subscribers did not connect")
                # they stop 2 s after the load: give the load the rest of their time
                remaining = until - time.time() - 2.0
                warmup = max(args.warmup, remaining - args.seconds)
            else:
                warmup = args.warmup
            rate = asyncio.run(_load(server.url, args.workers, warmup, args.seconds))
            latencies: list[float] = []
            if proc is not None and out is not None:
                latencies = out.get(timeout=120)
                proc.join(30)
            return {"rate": rate, "latencies": latencies, "subscribers": subscribers}
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=300, help="tasks per workflow (100 workflows)")
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--firehose", action="store_true", help="subscribers take every event")
    args = ap.parse_args()
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            plain: list[float] = []
            watched: list[float] = []
            latencies: list[float] = []
            for r in range(args.rounds):
                order = [0, args.subscribers] if r % 2 == 0 else [args.subscribers, 0]
                for subs in order:
                    res = measured_run(backend, args, subs, Path(tmp))
                    (watched if subs else plain).append(res["rate"])
                    latencies += res["latencies"]
                    lat = res["latencies"]
                    seen = f", {len(lat)} deliveries, p99 {pct(lat, 99) * 1000:.0f} ms"
                    print(f"[{backend}] round {r + 1}, {subs} subscribers: "
                          f"{res['rate']:.0f} tasks/s" + (seen if subs else ""))  # fmt: skip
            rows.append((backend, statistics.median(plain), statistics.median(watched), latencies))
    kind = "every event" if args.firehose else "one workflow each"
    print()
    print(f"| figure ({args.subscribers} subscribers, {kind}) | target | "
          + " | ".join(b for b, *_ in rows) + " |")  # fmt: skip
    print("|---|---|" + "---|" * len(rows))
    print("| tasks/s, no subscriber (median) | - | "
          + " | ".join(f"{p:.0f}" for _, p, _, _ in rows) + " |")  # fmt: skip
    cells = [f"{w:.0f} ({(w / p - 1) * 100:+.1f} %)" for _, p, w, _ in rows]
    print("| tasks/s, with subscribers | within 10 % | " + " | ".join(cells) + " |")
    print("| delivery p50 / p99 | p99 < 1 s | " + " | ".join(
        f"{pct(lat, 50) * 1000:.0f} / {pct(lat, 99) * 1000:.0f} ms ({len(lat):,})"
        for *_, lat in rows) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
